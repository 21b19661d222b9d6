//! The report: an engine and its quantised version on the same draws of an eval folder (Dice
//! with 1, 2 and 3 shots, the largest logit difference), their sizes, and CPU frame latency.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use segicl::format::Tag;
use segicl::metrics::mean_std;
use segicl::{BackendChoice, Engine, EngineMetadata, EngineOptions, MaskMut, OwnedImage, PixelFormat};
use segicl_eval::evaluation::{score, set_shots, Labelled};

/// Accuracy of both engines at one shot count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShotRow {
    /// Shots in the context.
    pub shots: usize,
    /// Queries scored (per engine).
    pub queries: usize,
    /// Mean Dice of the reference engine.
    pub reference_dice: f64,
    /// Mean Dice of the quantised engine.
    pub quantised_dice: f64,
    /// Largest |logit difference| over every pixel of every query.
    pub max_logit_diff: f32,
}

/// Size of an engine file and of its parts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Size {
    /// Whole file.
    pub file: u64,
    /// ENCODER + DECODER sections.
    pub graphs: u64,
    /// SHOTS section.
    pub shots: u64,
}

/// Frame latency (p50, 3 cached shots) on the tract backend, the one that runs every precision.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// Threads.
    pub threads: usize,
    /// Reference engine, ms.
    pub reference_ms: f64,
    /// Quantised engine, ms.
    pub quantised_ms: f64,
}

/// Everything the report says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    /// Accuracy per shot count.
    pub accuracy: Vec<ShotRow>,
    /// Reference engine size.
    pub reference_size: Size,
    /// Quantised engine size.
    pub quantised_size: Size,
    /// Latency per thread count.
    pub latency: Vec<Latency>,
}

fn size(path: &Path) -> Result<Size> {
    let meta = EngineMetadata::open(path)?;
    let len = |tag| meta.file.layout().find(tag).map_or(0, |s| s.length);
    Ok(Size { file: meta.file.len() as u64, graphs: len(Tag::ENCODER) + len(Tag::DECODER), shots: len(Tag::SHOTS) })
}

fn open(path: &Path, threads: usize) -> Result<Engine> {
    Engine::open(path, &EngineOptions { backend: BackendChoice::Tract, threads })
        .with_context(|| format!("opening {}", path.display()))
}

/// Compares `reference` and `quantised` on `data` (`draws` draws of shots per shot count, every
/// other pair a query, the same draws for both), and times `frames` frames per thread count.
pub fn compare(
    reference: &Path,
    quantised: &Path,
    data: &[Labelled],
    draws: usize,
    seed: u64,
    threads: &[usize],
    frames: usize,
) -> Result<Comparison> {
    let (a, b) = (open(reference, 1)?, open(quantised, 1)?);
    let (mut sa, mut sb) = (a.session()?, b.session()?);
    let counts: Vec<usize> = (1..=3).filter(|&k| k < data.len()).collect();
    let total: usize = counts.iter().map(|k| draws * (data.len() - k)).sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("report: {msg} [{bar:30}] {pos}/{len} frames, {eta} left")?.progress_chars("=> "),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut accuracy = Vec::new();
    for &k in &counts {
        bar.set_message(format!("{k} shot(s)"));
        let (mut da, mut db, mut diff) = (Vec::new(), Vec::new(), 0f32);
        for _ in 0..draws {
            let chosen = sample(&mut rng, data.len(), k).into_vec();
            set_shots(&mut sa, data, &chosen)?;
            set_shots(&mut sb, data, &chosen)?;
            for query in data.iter().enumerate().filter(|(i, _)| !chosen.contains(i)).map(|(_, q)| q) {
                da.push(score(&mut sa, query)?.0.dice);
                db.push(score(&mut sb, query)?.0.dice);
                let d = sa.logits().iter().zip(sb.logits()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                diff = diff.max(d);
                bar.inc(1);
            }
        }
        accuracy.push(ShotRow {
            shots: k,
            queries: da.len(),
            reference_dice: mean_std(&da).0,
            quantised_dice: mean_std(&db).0,
            max_logit_diff: diff,
        });
    }
    bar.finish_and_clear();
    let mut latency = Vec::new();
    for &t in threads {
        latency.push(Latency {
            threads: t,
            reference_ms: frame_p50(&open(reference, t)?, data, frames)?,
            quantised_ms: frame_p50(&open(quantised, t)?, data, frames)?,
        });
    }
    Ok(Comparison { accuracy, reference_size: size(reference)?, quantised_size: size(quantised)?, latency })
}

/// Median time of one frame with up to 3 cached shots (the first pairs), after a warm-up.
fn frame_p50(engine: &Engine, data: &[Labelled], frames: usize) -> Result<f64> {
    let mut session = engine.session()?;
    let shots: Vec<usize> = (0..data.len().saturating_sub(1).min(3)).collect();
    set_shots(&mut session, data, &shots)?;
    let query = &data[shots.len()].image;
    let mut out = OwnedImage::zeros(query.width, query.height, PixelFormat::Gray8);
    let mut times: Vec<Duration> = Vec::with_capacity(frames);
    for i in 0..frames + 3 {
        let mut mask = MaskMut::packed(&mut out.data, query.width, query.height)?;
        let start = Instant::now();
        session.segment(&query.view(), &mut mask)?;
        if i >= 3 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}

impl Comparison {
    /// The report as Markdown; `title` names the engines and `notes` are listed under it.
    pub fn markdown(&self, title: &str, notes: &[String], label: &str) -> String {
        let mut s = format!("# {title}\n\n");
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
        let accuracy = self.accuracy.iter().map(|r| {
            let delta = r.quantised_dice - r.reference_dice;
            vec![
                r.shots.to_string(),
                r.queries.to_string(),
                format!("{:.4}", r.reference_dice),
                format!("{:.4}", r.quantised_dice),
                format!("{delta:+.4}"),
                format!("{:.4}", r.max_logit_diff),
            ]
        });
        let head = ["shots", "queries", "fp32 Dice", &format!("{label} Dice"), "Δ Dice", "max abs logit diff"];
        table(&mut s, "Accuracy (same draws for both)", &head, accuracy);
        let (a, b) = (&self.reference_size, &self.quantised_size);
        let share = |x: u64, y: u64| format!("{x} ({:.1} %)", 100.0 * x as f64 / y.max(1) as f64);
        let sizes = [
            vec!["fp32".into(), a.file.to_string(), a.graphs.to_string(), a.shots.to_string()],
            vec![label.into(), share(b.file, a.file), share(b.graphs, a.graphs), share(b.shots, a.shots)],
        ];
        table(&mut s, "Size (bytes)", &["engine", "file", "graphs", "default shots"], sizes.into_iter());
        let latency = self.latency.iter().map(|l| {
            let ratio = l.quantised_ms / l.reference_ms;
            vec![
                l.threads.to_string(),
                format!("{:.2}", l.reference_ms),
                format!("{:.2}", l.quantised_ms),
                format!("{ratio:.2}×"),
            ]
        });
        let head = ["threads", "fp32 ms", &format!("{label} ms"), &format!("{label} / fp32")];
        table(&mut s, "CPU frame latency (p50, 3 cached shots, tract)", &head, latency);
        s
    }
}

/// Appends a Markdown section `heading` with a table.
fn table(s: &mut String, heading: &str, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    s.push_str(&format!("\n## {heading}\n\n| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len())));
    for row in rows {
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
}
