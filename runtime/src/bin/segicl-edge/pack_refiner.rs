//! `pack-refiner`: a refiner's manifest + image encoder + decoder (+ card) → refiner file, then a
//! check that the graphs load and match the manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use segicl::pack::RefinerParts;
use segicl::refine::RefinerManifest;
use segicl::{BackendChoice, EngineOptions, Refiner};

/// Arguments of `pack-refiner`.
#[derive(clap::Args)]
pub struct Args {
    /// Refiner manifest JSON (see docs/engine-format.md, "Refiner files").
    #[arg(long)]
    manifest: PathBuf,
    /// Image encoder ONNX graph (`image` → `embedding`).
    #[arg(long)]
    encoder: PathBuf,
    /// Prompt and mask decoder ONNX graph (`embedding`, `box` → `logits`, optionally `iou`).
    #[arg(long)]
    decoder: PathBuf,
    /// Model card (Markdown).
    #[arg(long)]
    card: Option<PathBuf>,
    /// Refiner file to write.
    #[arg(short, long)]
    out: PathBuf,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest =
        RefinerManifest::from_json(&read(&args.manifest)?).with_context(|| args.manifest.display().to_string())?;
    let card = args.card.as_ref().map(read).transpose()?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let parts = RefinerParts { manifest, encoder: read(&args.encoder)?, decoder: read(&args.decoder)?, card };
    segicl::format::write_atomically(&args.out, &parts.to_bytes()?)?;
    if let Err(e) = Refiner::open(&args.out, &EngineOptions { backend: BackendChoice::Cpu, threads: 1 }) {
        let _ = std::fs::remove_file(&args.out);
        bail!("the graphs do not fit the manifest, nothing written: {e}");
    }
    println!("wrote {} ({} bytes)", args.out.display(), std::fs::metadata(&args.out)?.len());
    Ok(ExitCode::SUCCESS)
}
