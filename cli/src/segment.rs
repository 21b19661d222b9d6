//! `segment`: shots from files (or an engine's default shots) → one mask PNG per query.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use segicl::{MaskMut, OwnedImage, PixelFormat};
use segicl_eval::dataset::{load_image, load_mask, save_png};

use crate::{draw, Global, RefineArgs, RoiArgs};

/// Arguments of `segment`.
#[derive(clap::Args)]
pub struct Args {
    /// A shot as IMAGE=MASK (1 to 3 times; the mask is ≥128 foreground, same size as the image).
    #[arg(long = "shot", value_name = "IMAGE=MASK")]
    shots: Vec<String>,
    /// Use the engine's default shots for this task instead of --shot.
    #[arg(long, conflicts_with = "shots")]
    task: Option<String>,
    /// Images to segment.
    #[arg(long = "query", required = true, num_args = 1..)]
    queries: Vec<PathBuf>,
    /// Folder for the masks (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Also write each query with the mask contour drawn on it.
    #[arg(long)]
    overlay: bool,
    /// Probability threshold (default: the engine's).
    #[arg(long)]
    threshold: Option<f32>,
    #[command(flatten)]
    roi: RoiArgs,
    #[command(flatten)]
    refine: RefineArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_shot(spec: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    match spec.split_once('=') {
        Some((image, mask)) if !image.is_empty() && !mask.is_empty() => Ok((image.into(), mask.into())),
        _ => bail!("--shot `{spec}`: expected IMAGE=MASK"),
    }
}

/// One line saying what the refinement gate decided for the shots.
pub fn gate_summary(report: &segicl::refine::GateReport) -> String {
    let chosen = match report.chosen {
        Some(c) => format!("refining with the {} box, margin {}", c.rule.name(), c.margin),
        None => "refinement off for these shots".to_string(),
    };
    if report.shots == 0 {
        return format!("refine: {chosen} (not tuned: one shot, or --no-gate)");
    }
    let best = report.candidates.iter().map(|(_, d)| *d).fold(f64::NEG_INFINITY, f64::max);
    format!(
        "refine: {chosen} (on the {} shots, each from the others: pass 1 Dice {:.3}, best refined {best:.3})",
        report.shots, report.pass1
    )
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "query".into())
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    if args.shots.is_empty() && args.task.is_none() {
        bail!("give 1 to 3 shots with --shot IMAGE=MASK, or --task NAME for the engine's default shots");
    }
    if args.shots.len() > segicl::manifest::MAX_SHOTS {
        bail!(
            "{} shots given: a context holds at most {} (--shot at most 3 times)",
            args.shots.len(),
            segicl::manifest::MAX_SHOTS
        );
    }
    let engine = global.open()?;
    let mut session = engine.session()?;
    if let Some(t) = args.threshold {
        session.set_threshold(t)?;
    }
    session.set_roi(args.roi.options())?;
    let refiner = args.refine.open(global, 4)?;
    session.set_refiner(refiner.as_ref().map(|(r, o)| (r, *o)))?;
    if let Some(task) = &args.task {
        session.use_default_shots(task)?;
    }
    for (slot, spec) in args.shots.iter().enumerate() {
        let (image_path, mask_path) = parse_shot(spec)?;
        let image = load_image(&image_path)?;
        let mask = load_mask(&mask_path)?;
        session.set_shot(slot, &image.view(), &mask.view()).with_context(|| format!("shot {} ({spec})", slot + 1))?;
    }
    if let Some(report) = session.tune_refiner()? {
        if !args.json {
            println!("{}", gate_summary(report));
        }
    }
    let names = mask_names(&args.queries)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut results = Vec::new();
    let mut failed = 0;
    for (query, name) in args.queries.iter().zip(&names) {
        match segment_one(&mut session, query, name, &args) {
            Ok(result) => results.push(result),
            Err(e) => {
                // A bad query does not stop the others; it is reported here and in the exit code.
                failed += 1;
                eprintln!("error: {}: {e:#}", query.display());
                results.push(serde_json::json!({ "query": query, "error": format!("{e:#}") }));
            }
        }
    }
    if args.json {
        let out = serde_json::json!({
            "engine": engine.path(), "backend": engine.backend_name(),
            "shots": session.shot_count(), "roi": session.roi(),
            "refiner": session.refiner().map(|(r, o)| serde_json::json!({"path": r.path(), "options": o})),
            "refine_gate": session.tune_refiner()?, "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if failed > 0 {
        eprintln!(
            "error: {failed} of {} queries failed (their masks were not written; the other masks were)",
            args.queries.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The file stem each query's mask is named after, refusing two queries with the same stem
/// (`a/x.png` and `b/x.png` would both write `x.mask.png`).
fn mask_names(queries: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut seen: std::collections::HashMap<String, &Path> = std::collections::HashMap::new();
    let mut names = Vec::with_capacity(queries.len());
    for query in queries {
        let name = stem(query);
        if let Some(other) = seen.insert(name.clone(), query) {
            bail!(
                "queries {} and {} would both write {name}.mask.png; give each query its own file name",
                other.display(),
                query.display()
            );
        }
        names.push(name);
    }
    Ok(names)
}

/// Segments one query, writes its mask (and overlay) named `name`, prints its line unless
/// --json, and returns its JSON row.
fn segment_one(
    session: &mut segicl::Session,
    query: &Path,
    name: &str,
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
    let frame = load_image(query)?;
    let mut mask = OwnedImage::zeros(frame.width, frame.height, PixelFormat::Gray8);
    let started = Instant::now();
    session.segment(&frame.view(), &mut MaskMut::packed(&mut mask.data, frame.width, frame.height)?)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let mask_path = args.out.join(format!("{name}.mask.png"));
    save_png(&mask_path, &mask)?;
    let overlay_path = if args.overlay {
        let path = args.out.join(format!("{name}.overlay.png"));
        save_png(&path, &draw::overlay(&frame, &mask.data, None))?;
        Some(path)
    } else {
        None
    };
    let fraction = mask.data.iter().filter(|&&v| v != 0).count() as f64 / mask.data.len() as f64;
    let crop = session.last_crop();
    let refine_box = session.last_refine_box();
    if !args.json {
        let crop_note = match crop {
            Some(c) => format!(", ROI crop {}×{} at ({}, {})", c.width, c.height, c.x, c.y),
            None if session.roi().is_some() => ", ROI: nothing found in pass 1".to_string(),
            None => String::new(),
        };
        let refine_note = match refine_box {
            Some(b) => format!(", refined in box ({:.0}, {:.0})–({:.0}, {:.0})", b.x0, b.y0, b.x1, b.y1),
            None => String::new(),
        };
        println!(
            "{} → {} ({}×{}, foreground {:.1}%{crop_note}{refine_note}, {ms:.1} ms)",
            query.display(),
            mask_path.display(),
            frame.width,
            frame.height,
            fraction * 100.0
        );
    }
    Ok(serde_json::json!({
        "query": query, "mask": mask_path, "overlay": overlay_path,
        "width": frame.width, "height": frame.height,
        "foreground_fraction": fraction, "ms": ms, "roi_crop": crop,
        "refine_box": refine_box.map(|b| [b.x0, b.y0, b.x1, b.y1]),
    }))
}
