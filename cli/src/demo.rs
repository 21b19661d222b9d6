//! `demo`: the bundled engine on bundled samples — the real default shots stored in the engine
//! (each one segmented from the other two) and synthetic frames: overlays and a Dice table; and
//! one stored task refined by the bundled refiner (the refinement pass), against pass 1 alone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use segicl::metrics::mean_std;
use segicl_eval::dataset::save_png;
use segicl_eval::synthetic::{self, SceneKind, Task};

use crate::{bundled, draw, Global, BUNDLED_REFINER};
use segicl_eval::evaluation::{score, set_shots, synthetic_samples, Labelled};

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder for the overlays (created if missing).
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Skip the refined task (its refiner costs about a second a frame on one CPU core).
    #[arg(long)]
    no_refine: bool,
}

/// Seeds of the demo's shots and queries (none is a default-shot seed of the engine).
const SHOT_SEED: u64 = 1;
const QUERY_SEED: u64 = 100;
const QUERIES: usize = 4;

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let engine = global.open()?;
    let mut session = engine.session()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    println!(
        "{} on the {} backend; overlays in {}/ (green: predicted, magenta: reference)",
        engine.manifest().name,
        engine.backend_name(),
        args.out.display()
    );
    println!("{:<12} {:>5} {:>7} {:>9} {:>9}", "task", "shots", "queries", "dice mean", "dice min");
    for task in Task::ALL {
        for (slot, shot) in synthetic_samples(task, SHOT_SEED, 3).iter().enumerate() {
            session.set_shot(slot, &shot.image.view(), &shot.mask.view())?;
        }
        let mut dice = Vec::new();
        for (i, query) in synthetic_samples(task, QUERY_SEED, QUERIES).iter().enumerate() {
            let (o, pred) = score(&mut session, query)?;
            dice.push(o.dice);
            let path = args.out.join(format!("{}-{i}.png", task.name()));
            save_png(&path, &draw::overlay(&query.image, &pred.data, Some(&query.mask.data)))?;
        }
        let (mean, _) = mean_std(&dice);
        let min = dice.iter().copied().fold(f64::INFINITY, f64::min);
        println!("{:<12} {:>5} {:>7} {mean:>9.3} {min:>9.3}", task.name(), 3, QUERIES);
    }
    task_switch(&mut session, &args)?;
    default_shots(&mut session, &args)?;
    if !args.no_refine {
        refined(global, &engine, &args)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The stored task the demo refines, each of its default shots segmented from the others.
const REFINED_TASK: &str = "optic-disc";

/// The engine's default shots of [`REFINED_TASK`] (or, for an engine without them, synthetic
/// fundus discs), each segmented from the others, by pass 1 alone and refined by the bundled
/// refiner; the gate decides on the other shots each time.
fn refined(global: &Global, engine: &segicl::Engine, args: &Args) -> anyhow::Result<()> {
    let refiner = segicl::Refiner::open(bundled(BUNDLED_REFINER), &global.options)?;
    let stored: Vec<Labelled> = match engine.default_shots().get(REFINED_TASK) {
        Some(shots) => shots.iter().map(|s| Labelled { image: s.image.clone(), mask: s.mask.clone() }).collect(),
        None => synthetic_samples(Task::FundusDisc, SHOT_SEED, 3),
    };
    let name = if engine.default_shots().get(REFINED_TASK).is_some() { REFINED_TASK } else { "fundus-disc" };
    let (mut session, mut plain) = (engine.session()?, engine.session()?);
    session.set_refiner(Some((&refiner, segicl::RefineOptions::default())))?;
    println!(
        "refinement pass ({}, on the {} backend) on {name}, each shot segmented from the others:",
        refiner.manifest().name,
        refiner.backend_name()
    );
    let (mut first, mut refined) = (Vec::new(), Vec::new());
    for (held, query) in stored.iter().enumerate() {
        let others: Vec<usize> = (0..stored.len()).filter(|&i| i != held).collect();
        set_shots(&mut session, &stored, &others)?;
        set_shots(&mut plain, &stored, &others)?;
        let report = session.tune_refiner()?.expect("a refiner is set").clone();
        println!("  shot {held}: {}", crate::segment::gate_summary(&report));
        first.push(score(&mut plain, query)?.0.dice);
        let (o, pred) = score(&mut session, query)?;
        refined.push(o.dice);
        let path = args.out.join(format!("refined-{name}-{held}.png"));
        save_png(&path, &draw::overlay(&query.image, &pred.data, Some(&query.mask.data)))?;
    }
    println!("  {} queries: Dice pass 1 {:.3}, refined {:.3}", stored.len(), mean_std(&first).0, mean_std(&refined).0);
    Ok(())
}

/// Each default shot of each named task segmented with the task's other shots as context.
fn default_shots(session: &mut segicl::Session, args: &Args) -> anyhow::Result<()> {
    let engine = session.engine().clone();
    let tasks = engine.default_shots();
    if tasks.tasks.is_empty() {
        return Ok(());
    }
    println!("default shots stored in the engine, each segmented from the task's other shots:");
    println!("{:<16} {:>5} {:>7} {:>9} {:>9}", "task", "shots", "queries", "dice mean", "dice min");
    for (task, shots) in &tasks.tasks {
        let mut dice = Vec::new();
        for (held, query) in shots.iter().enumerate() {
            for slot in 0..segicl::manifest::MAX_SHOTS {
                session.clear_shot(slot)?;
            }
            for (slot, shot) in shots.iter().enumerate().filter(|&(i, _)| i != held).map(|(_, s)| s).enumerate() {
                session.set_shot(slot, &shot.image.view(), &shot.mask.view())?;
            }
            let query = Labelled { image: query.image.clone(), mask: query.mask.clone() };
            let (o, pred) = score(session, &query)?;
            dice.push(o.dice);
            let path = args.out.join(format!("{task}-{held}.png"));
            save_png(&path, &draw::overlay(&query.image, &pred.data, Some(&query.mask.data)))?;
        }
        let (mean, _) = mean_std(&dice);
        let min = dice.iter().copied().fold(f64::INFINITY, f64::min);
        println!("{task:<16} {:>5} {:>7} {mean:>9.3} {min:>9.3}", shots.len() - 1, shots.len());
    }
    Ok(())
}

/// One ultrasound frame segmented twice: with lesion shots, then with bright-structure shots.
fn task_switch(session: &mut segicl::Session, args: &Args) -> anyhow::Result<()> {
    let scene = synthetic::scene(SceneKind::Ultrasound, QUERY_SEED + 50);
    println!("task switch on one ultrasound frame (same frame, different shots):");
    for task in [Task::UsLesion, Task::UsBright] {
        for (slot, shot) in synthetic_samples(task, SHOT_SEED, 3).iter().enumerate() {
            session.set_shot(slot, &shot.image.view(), &shot.mask.view())?;
        }
        let query = Labelled {
            image: scene.image.clone(),
            mask: segicl::OwnedImage {
                width: scene.image.width,
                height: scene.image.height,
                format: segicl::PixelFormat::Gray8,
                data: scene.mask(task).to_vec(),
            },
        };
        let (o, pred) = score(session, &query)?;
        save_png(
            &args.out.join(format!("switch-{}.png", task.name())),
            &draw::overlay(&query.image, &pred.data, Some(&query.mask.data)),
        )?;
        println!("  shots of {:<10} → Dice {:.3} against {}", task.name(), o.dice, task.name());
    }
    Ok(())
}
