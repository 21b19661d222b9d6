//! `verify`: every checksum, the manifest, the default shots and both graphs; exit 1 on failure.

use std::process::ExitCode;

use segicl::EngineMetadata;

use crate::Global;

pub fn run(global: &Global) -> anyhow::Result<ExitCode> {
    let path = &global.engine;
    let meta = match EngineMetadata::open(path) {
        Ok(meta) => meta,
        Err(e) => {
            println!("FAIL {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for s in &meta.file.layout().sections {
        println!("ok   section {:<9} {:>9} bytes  crc32 {:08x}", s.tag.name(), s.length, s.crc32);
    }
    println!("ok   manifest {} {}", meta.manifest.name, meta.manifest.version);
    if let Err(e) = global.open() {
        println!("FAIL {e:#}");
        return Ok(ExitCode::FAILURE);
    }
    println!("ok   graphs match the manifest and load on the {:?} backend", global.options.backend);
    println!("{}: verified", path.display());
    Ok(ExitCode::SUCCESS)
}
