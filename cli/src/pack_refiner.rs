//! `pack-refiner`: a refiner's manifest + image encoder + decoder (+ card) → refiner file, then a
//! check that the graphs load and match the manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use segicl::pack::RefinerParts;
use segicl::refine::RefinerManifest;
use segicl::{BackendChoice, EngineOptions, Refiner};

use crate::pack::{Contents, Sources};

/// Arguments of `pack-refiner`: the refiner's manifest, its image encoder (`image` →
/// `embedding`), its prompt and mask decoder (`embedding`, `box` → `logits`, optionally `iou`).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    sources: Sources,
    /// Refiner file to write.
    #[arg(short, long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Contents { manifest, encoder, decoder, card } = args.sources.read()?;
    let manifest =
        RefinerManifest::from_json(&manifest).with_context(|| args.sources.manifest.display().to_string())?;
    let parts = RefinerParts { manifest, encoder, decoder, card };
    segicl::format::write_atomically(&args.out, &parts.to_bytes()?)?;
    if let Err(e) = Refiner::open(&args.out, &EngineOptions { backend: BackendChoice::Tract, threads: 1 }) {
        let _ = std::fs::remove_file(&args.out);
        bail!("the graphs do not fit the manifest, nothing written: {e}");
    }
    println!("wrote {} ({} bytes)", args.out.display(), std::fs::metadata(&args.out)?.len());
    Ok(ExitCode::SUCCESS)
}
