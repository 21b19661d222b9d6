//! `pack`: manifest + encoder + decoder (+ card, default shots) → engine file, then a check that
//! the graphs load and match the manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use segicl::manifest::{Manifest, MAX_SHOTS};
use segicl::pack::{stored_shot, EngineParts};
use segicl::shots::{DefaultShots, StoredShot};
use segicl::{BackendChoice, Engine, EngineOptions};
use segicl_eval::dataset;

/// The manifest, graphs and card that `pack` and `pack-refiner` read.
#[derive(clap::Args)]
pub struct Sources {
    /// Manifest JSON (docs/engine-format.md: §4 for an engine, §12.2 for a refiner).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Encoder ONNX graph.
    #[arg(long)]
    pub encoder: PathBuf,
    /// Decoder ONNX graph.
    #[arg(long)]
    pub decoder: PathBuf,
    /// Model card (Markdown).
    #[arg(long)]
    pub card: Option<PathBuf>,
}

/// What [`Sources::read`] read.
pub struct Contents {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// The encoder's ONNX bytes.
    pub encoder: Vec<u8>,
    /// The decoder's ONNX bytes.
    pub decoder: Vec<u8>,
    /// The card.
    pub card: Option<String>,
}

impl Sources {
    /// Reads every file named.
    pub fn read(&self) -> anyhow::Result<Contents> {
        let card = self.card.as_ref().map(read).transpose()?.map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(Contents {
            manifest: read(&self.manifest)?,
            encoder: read(&self.encoder)?,
            decoder: read(&self.decoder)?,
            card,
        })
    }
}

/// Arguments of `pack`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    sources: Sources,
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
    let Contents { manifest, encoder, decoder, card } = args.sources.read()?;
    let manifest = Manifest::from_json(&manifest).with_context(|| args.sources.manifest.display().to_string())?;
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
    let parts = EngineParts { manifest, encoder, decoder, card, shots, calib: None };
    parts.write(&args.out)?;
    if let Err(e) = Engine::open(&args.out, &EngineOptions { backend: BackendChoice::Tract, threads: 1 }) {
        let _ = std::fs::remove_file(&args.out);
        bail!("the graphs do not fit the manifest, nothing written: {e}");
    }
    println!("wrote {} ({} bytes)", args.out.display(), std::fs::metadata(&args.out)?.len());
    Ok(ExitCode::SUCCESS)
}

/// The first three image/mask pairs of `dir` (in stem order) as stored shots at `side`×`side`.
fn shots_from_dir(dir: &Path, side: usize) -> anyhow::Result<Vec<StoredShot>> {
    let mut shots = Vec::new();
    for pair in dataset::pairs(dir)?.iter().take(MAX_SHOTS) {
        let image = dataset::load_image(&pair.image)?;
        let mask = dataset::load_mask(&pair.mask)?;
        let shot = stored_shot(&image.view(), &mask.view(), side);
        shots.push(shot.with_context(|| pair.image.display().to_string())?);
    }
    Ok(shots)
}
