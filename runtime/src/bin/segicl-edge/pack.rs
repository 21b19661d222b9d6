//! `pack`: manifest + encoder + decoder (+ card, default shots) → engine file, then a check that
//! the graphs load and match the manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use segicl::manifest::Manifest;
use segicl::pack::{shots_from_dir, EngineParts};
use segicl::shots::DefaultShots;
use segicl::{BackendChoice, Engine, EngineOptions};

/// Arguments of `pack`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest JSON (see docs/engine-format.md).
    #[arg(long)]
    manifest: PathBuf,
    /// Encoder ONNX graph.
    #[arg(long)]
    encoder: PathBuf,
    /// Decoder ONNX graph.
    #[arg(long)]
    decoder: PathBuf,
    /// Model card (Markdown).
    #[arg(long)]
    card: Option<PathBuf>,
    /// Default shots as TASK=DIR (DIR holds images/ and masks/; the first 3 pairs are taken).
    #[arg(long = "shots", value_name = "TASK=DIR")]
    shots: Vec<String>,
    /// Side of the stored default shots in pixels (default 2R: the ROI pass crops them, so they
    /// keep more detail than the encoder's R×R).
    #[arg(long)]
    shot_side: Option<usize>,
    /// Engine file to write.
    #[arg(short, long)]
    out: PathBuf,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::from_json(&read(&args.manifest)?).with_context(|| args.manifest.display().to_string())?;
    let side = args.shot_side.unwrap_or(2 * manifest.resolution);
    if !(16..=segicl::manifest::MAX_RESOLUTION).contains(&side) {
        bail!("--shot-side {side} is outside 16..={}", segicl::manifest::MAX_RESOLUTION);
    }
    let mut shots = DefaultShots::default();
    for spec in &args.shots {
        let Some((task, dir)) = spec.split_once('=') else { bail!("--shots `{spec}`: expected TASK=DIR") };
        if shots.get(task).is_some() {
            bail!("--shots names task `{task}` twice");
        }
        shots.tasks.push((task.to_string(), shots_from_dir(dir.as_ref(), side)?));
    }
    let card = args.card.as_ref().map(read).transpose()?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let parts = EngineParts {
        manifest,
        encoder: read(&args.encoder)?,
        decoder: read(&args.decoder)?,
        card,
        shots,
        calib: None,
    };
    parts.write(&args.out)?;
    if let Err(e) = Engine::open(&args.out, &EngineOptions { backend: BackendChoice::Cpu, threads: 1 }) {
        let _ = std::fs::remove_file(&args.out);
        bail!("the graphs do not fit the manifest, nothing written: {e}");
    }
    println!("wrote {} ({} bytes)", args.out.display(), std::fs::metadata(&args.out)?.len());
    Ok(ExitCode::SUCCESS)
}
