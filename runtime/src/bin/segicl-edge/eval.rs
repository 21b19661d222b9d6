//! `eval`: mean and spread of Dice and IoU over a folder of image/mask pairs (or synthetic
//! samples), for each shot count, over random draws of shots; every other pair is a query.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use segicl::dataset::{load_image, load_mask, pairs};
use segicl::metrics::{mean_std, overlap, Overlap};
use segicl::synthetic::{self, Task};
use segicl::{MaskMut, OwnedImage, PixelFormat, Session};

use crate::Global;

/// Arguments of `eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder with images/ and masks/ paired by file stem (mask ≥128 is foreground).
    #[arg(long, required_unless_present = "synthetic")]
    data: Option<PathBuf>,
    /// Evaluate on generated samples of this synthetic task instead (us-lesion, us-bright,
    /// fundus-disc, fundus-cup).
    #[arg(long, conflicts_with = "data")]
    synthetic: Option<String>,
    /// Synthetic samples to generate.
    #[arg(long, default_value_t = 24)]
    samples: usize,
    /// Use at most this many pairs of the folder (a seeded random subset).
    #[arg(long)]
    limit: Option<usize>,
    /// Shot counts to evaluate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    shots: Vec<usize>,
    /// Random draws of shots per shot count.
    #[arg(long, default_value_t = 5)]
    draws: usize,
    /// Seed of the draws (and of synthetic samples).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// An image with its reference mask (gray8, same size).
pub struct Labelled {
    /// The image.
    pub image: OwnedImage,
    /// Its mask.
    pub mask: OwnedImage,
}

/// Synthetic samples of `task`, seeds `first..first + n`.
pub fn synthetic_samples(task: Task, first: u64, n: usize) -> Vec<Labelled> {
    (first..first + n as u64)
        .map(|seed| {
            let (image, mask) = synthetic::sample(task, seed);
            let mask = OwnedImage { width: image.width, height: image.height, format: PixelFormat::Gray8, data: mask };
            Labelled { image, mask }
        })
        .collect()
}

/// Segments `query` with the session's context and scores it against its mask; returns the
/// predicted mask too.
pub fn score(session: &mut Session, query: &Labelled) -> anyhow::Result<(Overlap, OwnedImage)> {
    let (w, h) = (query.image.width, query.image.height);
    let mut pred = OwnedImage::zeros(w, h, PixelFormat::Gray8);
    session.segment(&query.image.view(), &mut MaskMut::packed(&mut pred.data, w, h)?)?;
    Ok((overlap(&pred.data, &query.mask.data), pred))
}

/// Scores of one shot count.
struct Row {
    shots: usize,
    dice: Vec<f64>,
    iou: Vec<f64>,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let (source, data) = match (&args.data, &args.synthetic) {
        (Some(dir), _) => (dir.display().to_string(), load_folder(dir, args.limit, args.seed)?),
        (None, Some(name)) => {
            let Some(task) = Task::from_name(name) else {
                bail!("unknown synthetic task `{name}` (us-lesion, us-bright, fundus-disc, fundus-cup)")
            };
            (format!("synthetic {name}"), synthetic_samples(task, args.seed * 1000 + 1, args.samples))
        }
        (None, None) => bail!("give --data DIR or --synthetic TASK"),
    };
    for &k in &args.shots {
        if !(1..=segicl::manifest::MAX_SHOTS).contains(&k) || k >= data.len() {
            bail!("shot count {k} needs 1 ≤ k ≤ 3 and fewer than the {} pairs available", data.len());
        }
    }
    let engine = global.open()?;
    let mut session = engine.session()?;
    let total: usize = args.shots.iter().map(|k| args.draws * (data.len() - k)).sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} frames, {eta} left")?.progress_chars("=> "),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut rows = Vec::new();
    for &k in &args.shots {
        bar.set_message(format!("{k} shot(s)"));
        let mut row = Row { shots: k, dice: Vec::new(), iou: Vec::new() };
        for _ in 0..args.draws {
            let chosen = sample(&mut rng, data.len(), k).into_vec();
            for slot in 0..segicl::manifest::MAX_SHOTS {
                session.clear_shot(slot)?;
            }
            for (slot, &i) in chosen.iter().enumerate() {
                session.set_shot(slot, &data[i].image.view(), &data[i].mask.view())?;
            }
            for (i, query) in data.iter().enumerate().filter(|(i, _)| !chosen.contains(i)) {
                let (o, _) = score(&mut session, query).map_err(|e| anyhow::anyhow!("query {i}: {e}"))?;
                row.dice.push(o.dice);
                row.iou.push(o.iou);
                bar.inc(1);
            }
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    if args.json {
        let results: Vec<_> = rows
            .iter()
            .map(|r| {
                let (dm, ds) = mean_std(&r.dice);
                let (im, _) = mean_std(&r.iou);
                serde_json::json!({"shots": r.shots, "dice_mean": dm, "dice_std": ds, "iou_mean": im, "queries": r.dice.len()})
            })
            .collect();
        let out = serde_json::json!({"engine": engine.path(), "data": source, "draws": args.draws, "seed": args.seed, "results": results});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} on {source} ({} pairs, {} draws, seed {})",
            engine.manifest().name,
            data.len(),
            args.draws,
            args.seed
        );
        println!("shots  queries  dice mean  dice std  iou mean");
        for r in &rows {
            let (dm, ds) = mean_std(&r.dice);
            let (im, _) = mean_std(&r.iou);
            println!("{:>5}  {:>7}  {dm:>9.3}  {ds:>8.3}  {im:>8.3}", r.shots, r.dice.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_folder(dir: &std::path::Path, limit: Option<usize>, seed: u64) -> anyhow::Result<Vec<Labelled>> {
    let mut all = pairs(dir)?;
    if let Some(n) = limit.filter(|&n| n < all.len()) {
        let keep = sample(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed), all.len(), n).into_vec();
        all = keep.into_iter().map(|i| all[i].clone()).collect();
    }
    all.iter()
        .map(|p| {
            let image = load_image(&p.image)?;
            let mask = load_mask(&p.mask)?;
            if (image.width, image.height) != (mask.width, mask.height) {
                bail!(
                    "{}: mask is {}×{} but the image is {}×{}",
                    p.mask.display(),
                    mask.width,
                    mask.height,
                    image.width,
                    image.height
                );
            }
            Ok(Labelled { image, mask })
        })
        .collect()
}
