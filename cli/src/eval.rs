//! `eval`: mean and spread of Dice and IoU over a folder of image/mask pairs (or synthetic
//! samples), for each shot count, over random draws of shots; every other pair is a query. On
//! the same draws: the model in ROI mode (--roi), the model refined (--refine: its masks redrawn
//! by the refiner where the gate keeps it on) and two baselines, copy-shots (the mean of the
//! shots' masks) and the prototype engine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use segicl::metrics::{mean_std, overlap, Overlap};
use segicl::{Engine, ImageView, MaskMut, Session};
use segicl_eval::baseline::copy_shots;
use segicl_eval::evaluation::{load_labelled, score, set_shots, synthetic_samples, Labelled};
use segicl_eval::synthetic::Task;

use crate::{bundled, Global, RefineArgs, RoiArgs, PROTOTYPE_ENGINE};

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
    /// With --roi, the model is scored both without and with ROI mode, on the same draws.
    #[command(flatten)]
    roi: RoiArgs,
    /// With --refine, the model is scored both without and with refinement, on the same draws
    /// (in ROI mode too with --roi).
    #[command(flatten)]
    refine: RefineArgs,
    /// Engine of the prototype baseline (default: the bundled models/prototype.plan).
    #[arg(long, value_name = "PATH")]
    baseline_engine: Option<PathBuf>,
    /// Skip the baselines (copy-shots and prototype).
    #[arg(long, conflicts_with = "baseline_engine")]
    no_baselines: bool,
    /// Probability threshold of the model's masks, with --roi too (default: the engine's).
    #[arg(long)]
    threshold: Option<f32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Scores the copy-shots baseline of the shots' `masks` on `query`.
fn score_copy_shots(masks: &[ImageView], query: &Labelled) -> anyhow::Result<Overlap> {
    let (w, h) = (query.image.width, query.image.height);
    let mut pred = vec![0u8; w * h];
    copy_shots(masks, &mut MaskMut::packed(&mut pred, w, h)?)?;
    Ok(overlap(&pred, &query.mask.data))
}

/// Dice and IoU of one method over the queries of one shot count.
#[derive(Default)]
struct Scores {
    dice: Vec<f64>,
    iou: Vec<f64>,
}

impl Scores {
    fn push(&mut self, o: Overlap) {
        self.dice.push(o.dice);
        self.iou.push(o.iou);
    }

    /// Mean and spread of Dice, mean IoU.
    fn summary(&self) -> (f64, f64, f64) {
        let (dice_mean, dice_std) = mean_std(&self.dice);
        (dice_mean, dice_std, mean_std(&self.iou).0)
    }

    fn json(&self) -> serde_json::Value {
        let (dm, ds, im) = self.summary();
        serde_json::json!({"dice_mean": dm, "dice_std": ds, "iou_mean": im})
    }
}

/// Scores of one shot count, per method.
struct Row {
    shots: usize,
    model: Scores,
    /// The model in ROI mode (with --roi).
    roi: Option<Scores>,
    /// The model refined (with --refine), and on how many draws the gate kept refinement on.
    refine: Option<(Scores, usize)>,
    /// copy-shots and prototype (unless --no-baselines).
    baselines: Option<[Scores; 2]>,
}

/// Names of the baselines, in the order of [`Row::baselines`].
const BASELINES: [&str; 2] = ["copy-shots", "prototype"];

/// The prototype baseline: its engine's path, and a session of it unless the model is that
/// engine (then the model's scores are the baseline's).
struct Prototype {
    path: PathBuf,
    session: Option<Session>,
}

impl Prototype {
    fn open(global: &Global, path: Option<&PathBuf>, model: &Engine) -> anyhow::Result<Prototype> {
        let path = path.cloned().unwrap_or_else(|| bundled(PROTOTYPE_ENGINE));
        let same = |a: &std::path::Path, b: &std::path::Path| matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b);
        let session = if same(&path, model.path()) {
            None
        } else {
            let engine = Engine::open(&path, &global.options).context("the prototype baseline's engine")?;
            Some(engine.session()?)
        };
        Ok(Prototype { path, session })
    }
}

/// Every method scored on a draw: the model, in ROI mode too, and the baselines.
struct Methods {
    model: Session,
    roi: Option<Session>,
    refine: Option<Session>,
    prototype: Option<Prototype>,
}

impl Methods {
    /// A row of empty scores for `shots` shots, with a column per method.
    fn row(&self, shots: usize) -> Row {
        Row {
            shots,
            model: Scores::default(),
            roi: self.roi.as_ref().map(|_| Scores::default()),
            refine: self.refine.as_ref().map(|_| (Scores::default(), 0)),
            baselines: self.prototype.as_ref().map(|_| Default::default()),
        }
    }

    /// Replaces the context of every session with the shots `chosen` of `data`; counts in `row`
    /// whether the refinement gate keeps refinement on for them.
    fn set_shots(&mut self, data: &[Labelled], chosen: &[usize], row: &mut Row) -> anyhow::Result<()> {
        let others =
            [self.roi.as_mut(), self.refine.as_mut(), self.prototype.as_mut().and_then(|p| p.session.as_mut())];
        for session in std::iter::once(&mut self.model).chain(others.into_iter().flatten()) {
            set_shots(session, data, chosen).with_context(|| format!("shots {chosen:?}"))?;
        }
        if let (Some(s), Some((_, on))) = (self.refine.as_mut(), row.refine.as_mut()) {
            *on += s.tune_refiner()?.is_some_and(|r| r.chosen.is_some()) as usize;
        }
        Ok(())
    }

    /// Scores every method on `query` into `row`; `shot_masks` are the masks of the shots set.
    fn score(&mut self, query: &Labelled, shot_masks: &[ImageView], row: &mut Row) -> anyhow::Result<()> {
        let (o, _) = score(&mut self.model, query)?;
        row.model.push(o);
        if let (Some(s), Some(scores)) = (self.roi.as_mut(), row.roi.as_mut()) {
            scores.push(score(s, query)?.0);
        }
        if let (Some(s), Some((scores, _))) = (self.refine.as_mut(), row.refine.as_mut()) {
            scores.push(score(s, query)?.0);
        }
        if let (Some(p), Some([copy, proto])) = (self.prototype.as_mut(), row.baselines.as_mut()) {
            copy.push(score_copy_shots(shot_masks, query)?);
            proto.push(match p.session.as_mut() {
                Some(s) => score(s, query)?.0,
                None => o,
            });
        }
        Ok(())
    }
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    if args.draws == 0 {
        bail!("--draws must be at least 1");
    }
    let (source, data) = match (&args.data, &args.synthetic) {
        (Some(dir), _) => (dir.display().to_string(), load_labelled(dir, args.limit, args.seed)?),
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
    let roi = match args.roi.options() {
        Some(options) => {
            let mut s = engine.session()?;
            s.set_roi(Some(options))?;
            Some(s)
        }
        None => None,
    };
    // Every image is a query or a shot in some draw: keep all their refiner embeddings.
    let refine = match args.refine.open(global, data.len().min(256))? {
        Some((refiner, options)) => {
            let mut s = engine.session()?;
            s.set_roi(args.roi.options())?;
            s.set_refiner(Some((&refiner, options)))?;
            Some(s)
        }
        None => None,
    };
    let prototype = match args.no_baselines {
        true => None,
        false => Some(Prototype::open(global, args.baseline_engine.as_ref(), &engine)?),
    };
    let mut methods = Methods { model: engine.session()?, roi, refine, prototype };
    if let Some(t) = args.threshold {
        methods.model.set_threshold(t)?;
        for s in [methods.roi.as_mut(), methods.refine.as_mut()].into_iter().flatten() {
            s.set_threshold(t)?;
        }
    }
    let total: usize = args.shots.iter().map(|k| args.draws * (data.len() - k)).sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} frames, {eta} left")?.progress_chars("=> "),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut rows = Vec::new();
    for &k in &args.shots {
        bar.set_message(format!("{k} shot(s)"));
        let mut row = methods.row(k);
        for _ in 0..args.draws {
            let chosen = sample(&mut rng, data.len(), k).into_vec();
            methods.set_shots(&data, &chosen, &mut row)?;
            let shot_masks: Vec<ImageView> = chosen.iter().map(|&i| data[i].mask.view()).collect();
            for (i, query) in data.iter().enumerate().filter(|(i, _)| !chosen.contains(i)) {
                methods.score(query, &shot_masks, &mut row).with_context(|| format!("query {i}"))?;
                bar.inc(1);
            }
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    let baseline_engine = methods.prototype.as_ref().map(|p| &p.path);
    if args.json {
        let results: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut row = r.model.json();
                row["shots"] = r.shots.into();
                row["queries"] = r.model.dice.len().into();
                if let Some(roi) = &r.roi {
                    row["roi"] = roi.json();
                }
                if let Some((refine, on)) = &r.refine {
                    row["refine"] = refine.json();
                    row["refine"]["gate_on"] = (*on as f64 / args.draws as f64).into();
                }
                if let Some(baselines) = &r.baselines {
                    row["baselines"] =
                        BASELINES.iter().zip(baselines).map(|(n, s)| (n.to_string(), s.json())).collect();
                }
                row
            })
            .collect();
        let out = serde_json::json!({
            "engine": engine.path(), "data": source, "draws": args.draws, "seed": args.seed,
            "threshold": args.threshold.unwrap_or(engine.manifest().threshold),
            "roi": methods.roi.as_ref().and_then(Session::roi), "baseline_engine": baseline_engine,
            "refiner": methods.refine.as_ref().and_then(Session::refiner)
                .map(|(r, o)| serde_json::json!({"path": r.path(), "options": o})),
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} on {source} ({} pairs, {} draws, seed {})", engine.manifest().name, data.len(), args.draws, args.seed);
    if let Some(path) = baseline_engine {
        let same =
            if methods.prototype.as_ref().is_some_and(|p| p.session.is_none()) { ", the model itself" } else { "" };
        println!(
            "baselines on the same draws (dice mean): copy-shots (mean of the shots' masks), prototype ({}{same})",
            path.display()
        );
    }
    let mut header = String::from("shots  queries  dice mean  dice std  iou mean");
    if methods.roi.is_some() {
        header.push_str("  roi dice   roi std");
    }
    if methods.refine.is_some() {
        header.push_str("  refined  refined std  gate on");
    }
    if methods.prototype.is_some() {
        header.push_str("  copy-shots  prototype");
    }
    println!("{header}");
    for r in &rows {
        let (dm, ds, im) = r.model.summary();
        let mut line = format!("{:>5}  {:>7}  {dm:>9.3}  {ds:>8.3}  {im:>8.3}", r.shots, r.model.dice.len());
        if let Some(roi) = &r.roi {
            let (dm, ds, _) = roi.summary();
            line.push_str(&format!("  {dm:>8.3}  {ds:>8.3}"));
        }
        if let Some((refine, on)) = &r.refine {
            let (dm, ds, _) = refine.summary();
            line.push_str(&format!("  {dm:>7.3}  {ds:>11.3}  {:>4}/{}", on, args.draws));
        }
        if let Some([copy, proto]) = &r.baselines {
            line.push_str(&format!("  {:>10.3}  {:>9.3}", copy.summary().0, proto.summary().0));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
