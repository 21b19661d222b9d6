//! Writes the prototype engine (and, with --onnx-dir, its two ONNX graphs), and the tests'
//! stand-in refiner.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Build the training-free prototype engine and the tests' stand-in refiner.
#[derive(Parser)]
struct Args {
    /// Engine file to write.
    #[arg(short, long, default_value = "models/prototype.plan")]
    out: PathBuf,
    /// Also write encoder.onnx, decoder.onnx and manifest.json into this folder.
    #[arg(long)]
    onnx_dir: Option<PathBuf>,
    /// The tests' stand-in refiner file to write (its mask is the box).
    #[arg(long, default_value = "tests/golden/box-fill.refiner")]
    stand_in_refiner: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let parts = segicl_models::prototype::engine_parts()?;
    if let Some(dir) = &args.onnx_dir {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        std::fs::write(dir.join("encoder.onnx"), &parts.encoder)?;
        std::fs::write(dir.join("decoder.onnx"), &parts.decoder)?;
        std::fs::write(dir.join("manifest.json"), parts.manifest.to_json())?;
    }
    parts.write(&args.out)?;
    println!("wrote {} ({} bytes)", args.out.display(), std::fs::metadata(&args.out)?.len());
    segicl::format::write_atomically(&args.stand_in_refiner, &segicl_models::box_refiner::file()?)?;
    println!("wrote {}", args.stand_in_refiner.display());
    Ok(())
}
