//! `segicl-fuzz`: damages valid engine files (container, manifest, SHOTS, ONNX graphs), with every
//! checksum recomputed so the damage reaches the deeper checks and the graph loader, and opens
//! and runs each one in a child process of its own with memory and time limits. Prints how the
//! cases ended, per class, and keeps every defect (panic, signal, hang, a mask from non-finite
//! logits) under `--out` for `segicl-fuzz replay`, with the counts so far in `--out/report.json`
//! every minute. Exits 1 when there was a defect.
//!
//!     segicl-fuzz --seconds 600 --jobs 2 --out target/fuzz
//!     segicl-fuzz --cases 2000 --seed 7
//!     segicl-fuzz replay target/fuzz/defects/onnx-3.plan

mod isolate;
mod mutate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use isolate::{Child, Inputs, Limits, Outcome};
use mutate::{Base, Class};

#[derive(Parser)]
#[command(about = "Engine fuzzer of segicl-edge: damaged engines opened and run in isolated child processes")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Engines to damage (default: the bundled prototype and reference engines).
    #[arg(long = "engine")]
    engines: Vec<PathBuf>,
    /// Stop after this many cases.
    #[arg(long)]
    cases: Option<u64>,
    /// Stop after this many seconds (default 60 when --cases is not given).
    #[arg(long)]
    seconds: Option<f64>,
    /// Seed of the mutations (a run is reproducible from it and the engines).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Children at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// CPU seconds after which a child is stopped and its case counted as a hang (a child that
    /// waits is killed after six times as long on the clock).
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    /// Address-space limit of each child, MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mib: u64,
    /// Folder for the case files and kept defects (default: a temporary folder, removed).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the counts as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Runs one engine file as a case (isolated, with the same limits) and prints its outcome.
    Replay {
        /// The engine file.
        file: PathBuf,
    },
}

/// The bundled engines the fuzzer damages by default: the prototype (fast to open: most cases)
/// and the learned reference engine in fp32, fp16 and int8.
fn bundled() -> Vec<PathBuf> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    [
        "prototype.plan",
        "prototype.plan",
        "prototype.plan",
        "segicl-ref.plan",
        "segicl-ref-fp16.plan",
        "segicl-ref-int8.plan",
    ]
    .iter()
    .map(|n| models.join(n))
    .collect()
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let limits = Limits { timeout: Duration::from_secs_f64(cli.timeout_s), memory: cli.memory_mib << 20 };
    let inputs = Inputs::new();
    if let Some(Command::Replay { file }) = &cli.command {
        let outcome = wait(&isolate::spawn(file, &inputs, limits)?, limits.timeout);
        println!("{}: {}", file.display(), outcome.name());
        return Ok(if outcome.is_defect() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    if cli.jobs == 0 || cli.jobs > 64 {
        bail!("--jobs {} is outside 1..=64", cli.jobs);
    }
    let paths = if cli.engines.is_empty() { bundled() } else { cli.engines.clone() };
    let bases: Vec<Base> = paths
        .iter()
        .map(|p| Base::open(p).with_context(|| format!("{} is not a valid engine to start from", p.display())))
        .collect::<anyhow::Result<_>>()?;
    let temp = tempdir()?;
    let out = cli.out.clone().unwrap_or_else(|| temp.clone());
    std::fs::create_dir_all(out.join("defects")).with_context(|| format!("creating {}", out.display()))?;
    let deadline = cli.seconds.or(if cli.cases.is_none() { Some(60.0) } else { None }).map(Duration::from_secs_f64);
    let budget = cli.cases.unwrap_or(u64::MAX);

    let mut rng = ChaCha8Rng::seed_from_u64(cli.seed);
    let mut counts: BTreeMap<(Class, Outcome), u64> = BTreeMap::new();
    let mut running: Vec<Option<(Child, Class, PathBuf)>> = (0..cli.jobs).map(|_| None).collect();
    let (started, mut made, mut defects) = (Instant::now(), 0u64, 0u64);
    let mut saved = Instant::now();
    loop {
        if saved.elapsed() >= Duration::from_secs(60) {
            // The counts so far, so that a long run stopped early still says what it did.
            let json = summary(&counts, made, started.elapsed().as_secs_f64(), cli.seed);
            std::fs::write(out.join("report.json"), json.to_string()).context("writing report.json")?;
            saved = Instant::now();
        }
        let stop = made >= budget || deadline.is_some_and(|d| started.elapsed() >= d);
        for (slot, entry) in running.iter_mut().enumerate() {
            if let Some((child, class, file)) = entry {
                let Some(outcome) = child.poll(limits.timeout) else { continue };
                *counts.entry((*class, outcome)).or_default() += 1;
                if outcome.is_defect() {
                    defects += 1;
                    let kept = out.join("defects").join(format!("{}-{defects}.plan", class.name()));
                    std::fs::rename(&*file, &kept).with_context(|| format!("keeping {}", kept.display()))?;
                    eprintln!("defect: {} ({}) kept as {}", outcome.name(), class.name(), kept.display());
                }
                *entry = None;
            }
            if entry.is_none() && !stop {
                let class = Class::ALL[(made % Class::ALL.len() as u64) as usize];
                let base = &bases[((made / Class::ALL.len() as u64) % bases.len() as u64) as usize];
                let bytes = base.mutate(class, &mut rng);
                let file = out.join(format!("case-{slot}.plan"));
                std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
                *entry = Some((isolate::spawn(&file, &inputs, limits)?, class, file));
                made += 1;
            }
        }
        if stop && running.iter().all(Option::is_none) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let seconds = started.elapsed().as_secs_f64();
    if cli.out.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    report(&counts, made, seconds, &cli, &bases);
    Ok(if defects > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Waits for `child` to end (or kills it at `timeout`).
fn wait(child: &Child, timeout: Duration) -> Outcome {
    loop {
        if let Some(outcome) = child.poll(timeout) {
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fresh folder under the system's temporary directory.
fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("segicl-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The counts as JSON: cases, seconds, seed, defects and one row per class and outcome.
fn summary(counts: &BTreeMap<(Class, Outcome), u64>, cases: u64, seconds: f64, seed: u64) -> serde_json::Value {
    let defects: u64 = counts.iter().filter(|((_, o), _)| o.is_defect()).map(|(_, n)| n).sum();
    let rows: Vec<_> = counts
        .iter()
        .map(|((c, o), n)| serde_json::json!({"class": c.name(), "outcome": o.name(), "cases": n, "defect": o.is_defect()}))
        .collect();
    serde_json::json!({"cases": cases, "seconds": seconds, "seed": seed, "defects": defects, "rows": rows})
}

fn report(counts: &BTreeMap<(Class, Outcome), u64>, cases: u64, seconds: f64, cli: &Cli, bases: &[Base]) {
    let json = summary(counts, cases, seconds, cli.seed);
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&json).expect("JSON serialises"));
        return;
    }
    let mut engines: Vec<&str> = bases.iter().map(|b| b.name.as_str()).collect();
    engines.dedup();
    println!(
        "{cases} cases in {seconds:.0} s ({:.0}/s, {} jobs, seed {}), engines: {}",
        cases as f64 / seconds,
        cli.jobs,
        cli.seed,
        engines.join(", ")
    );
    println!("| class | outcome | cases |\n|---|---|---:|");
    for ((class, outcome), n) in counts {
        println!("| {} | {} | {n} |", class.name(), outcome.name());
    }
    println!("defects (panic, signal, hang, mask from non-finite logits): {}", json["defects"]);
}
