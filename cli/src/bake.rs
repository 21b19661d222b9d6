//! `bake`: a copy of an engine with this device's TensorRT plans in its `TRT_*` sections, for a
//! fleet of identical devices (same GPU, driver and TensorRT), which then skip the build at first
//! open. A device whose key differs ignores the baked plans and builds its own.

use std::path::PathBuf;
use std::process::ExitCode;

use segicl::backend::tensorrt::plans;
use segicl::format::{write_atomically, EngineWriter, Tag};
use segicl::EngineMetadata;

use crate::Global;

/// Arguments of `bake`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the engine with the plans baked in.
    #[arg(short, long)]
    output: PathBuf,
}

/// Both graphs' plans for this device, as `TRT_*` sections.
#[cfg(feature = "tensorrt")]
fn plan_sections(meta: &EngineMetadata) -> anyhow::Result<Vec<(Tag, Vec<u8>)>> {
    Ok(segicl::backend::tensorrt::bake(&meta.file, &meta.manifest)?)
}

#[cfg(not(feature = "tensorrt"))]
fn plan_sections(_: &EngineMetadata) -> anyhow::Result<Vec<(Tag, Vec<u8>)>> {
    anyhow::bail!(
        "this build has no TensorRT backend: build segicl-edge with --features tensorrt,cuda-12 (JetPack 6) \
         or tensorrt,cuda, on the device whose plans you bake"
    )
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let meta = EngineMetadata::open(&global.engine)?;
    let baked = plan_sections(&meta)?;
    let mut writer = EngineWriter::new();
    for section in &meta.file.layout().sections {
        if !baked.iter().any(|(tag, _)| *tag == section.tag) {
            let payload = meta.file.section(section.tag).expect("a listed section").to_vec();
            writer = writer.section_with_flags(section.tag, section.flags, payload);
        }
    }
    for (tag, payload) in baked {
        let key = plans::record_key(&payload)?;
        println!("baked {} ({} KiB): {}", tag.name(), payload.len() >> 10, key.summary());
        writer = writer.section_with_flags(tag, 0, payload);
    }
    write_atomically(&args.output, &writer.to_bytes())?;
    println!("{}: written", args.output.display());
    Ok(ExitCode::SUCCESS)
}
