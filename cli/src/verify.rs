//! `verify`: every checksum, the manifest, the default shots and both graphs of an engine (or
//! of a refiner, with --refiner); exit 1 on failure.

use std::process::ExitCode;

use segicl::backend::tensorrt::plans;
use segicl::refine::RefinerMetadata;
use segicl::{EngineMetadata, Refiner};

use crate::{Global, RefinerArg};

/// Arguments of `verify`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    refiner: RefinerArg,
}

/// Prints one `ok` line per section of a verified file.
fn print_sections(file: &segicl::format::EngineFile) {
    for s in &file.layout().sections {
        println!("ok   section {:<9} {:>9} bytes  crc32 {:08x}", s.tag.name(), s.length, s.crc32);
    }
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(path) = args.refiner.path() {
        let meta = match RefinerMetadata::open(&path) {
            Ok(meta) => meta,
            Err(e) => {
                println!("FAIL {e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        print_sections(&meta.file);
        println!("ok   refiner manifest {} {}", meta.manifest.name, meta.manifest.version);
        if let Err(e) = Refiner::open(&path, &global.options) {
            println!("FAIL {e:#}");
            return Ok(ExitCode::FAILURE);
        }
        println!("ok   graphs match the manifest and load on the cpu");
        println!("{}: verified", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let path = &global.engine;
    let meta = match EngineMetadata::open(path) {
        Ok(meta) => meta,
        Err(e) => {
            println!("FAIL {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    print_sections(&meta.file);
    println!("ok   manifest {} {}", meta.manifest.name, meta.manifest.version);
    for baked in plans::baked(&meta.file) {
        let graph = plans::graph_name(baked.graph);
        match (baked.problem(), &baked.key) {
            (Some(problem), _) => {
                println!("FAIL baked {graph} plan: {problem}");
                return Ok(ExitCode::FAILURE);
            }
            (None, Ok(key)) => println!("ok   baked {graph} plan for {}", key.summary()),
            (None, Err(_)) => unreachable!("an unreadable key is a problem"),
        }
    }
    if let Err(e) = global.open() {
        println!("FAIL {e:#}");
        return Ok(ExitCode::FAILURE);
    }
    println!("ok   graphs match the manifest and load on the {:?} backend", global.options.backend);
    println!("{}: verified", path.display());
    Ok(ExitCode::SUCCESS)
}
