//! `segicl-quantize`: an fp32 engine → an int8 or fp16 engine, with an optional report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use segicl::manifest::CalibrationMethod;
use segicl_quantize::int8::KeepFloat;
use segicl_quantize::{calibrate, quantize, refiner, report, write, Options, Target};

/// Turn an fp32 segicl engine into an int8 (QDQ, calibrated) or fp16 engine, or an fp32 refiner
/// into an fp16 refiner.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The fp32 engine.
    #[arg(long, required_unless_present = "refiner")]
    engine: Option<PathBuf>,
    /// An fp32 refiner file to convert instead (fp16, or int8 weights with activations in float:
    /// no calibration); its report refines after the in-context pass of --pass1-engine.
    #[arg(long, conflicts_with_all = ["engine", "calib", "shot_side"])]
    refiner: Option<PathBuf>,
    /// The in-context engine whose masks the refiner report refines (with --refiner).
    #[arg(long, requires = "refiner", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/segicl-ref.plan"))]
    pass1_engine: PathBuf,
    /// Precision of the new engine.
    #[arg(long, value_enum)]
    precision: Target,
    /// Folder of images/ + masks/ pairs (the layout of `segicl-edge eval`) to calibrate on;
    /// required for int8.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// How each activation's int8 range is chosen.
    #[arg(long, value_enum, default_value = "minmax")]
    method: Method,
    /// Calibration pairs used at most (a seeded random subset of the folder).
    #[arg(long, default_value_t = 48)]
    calib_pairs: usize,
    /// Conv/MatMul/Gemm nodes left in float: `auto` (first conv, logits head, matmuls reading a
    /// softmax), `none`, or node names separated by commas.
    #[arg(long, default_value = "auto")]
    keep_float: KeepFloat,
    /// Side of the stored default shots (default: the engine's resolution R).
    #[arg(long)]
    shot_side: Option<usize>,
    /// The new engine.
    #[arg(short, long)]
    output: PathBuf,
    /// Write a Markdown report comparing the new engine with the fp32 one.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Folder the report evaluates on (default: the calibration folder).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Pairs of the eval folder used at most (a seeded random subset).
    #[arg(long, default_value_t = 40)]
    eval_pairs: usize,
    /// Draws of shots per shot count in the report.
    #[arg(long, default_value_t = 3)]
    draws: usize,
    /// Seed of the calibration subset and of the report's draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Method {
    Minmax,
    Percentile,
    Entropy,
}

impl From<Method> for CalibrationMethod {
    fn from(m: Method) -> Self {
        match m {
            Method::Minmax => CalibrationMethod::Minmax,
            Method::Percentile => CalibrationMethod::Percentile,
            Method::Entropy => CalibrationMethod::Entropy,
        }
    }
}

/// `--refiner`: the fp16 refiner and, with --report, its report.
fn run_refiner(args: &Args, fp32: &std::path::Path) -> anyhow::Result<()> {
    let label = match args.precision {
        Target::Int8 => "int8",
        Target::Fp16 => "fp16",
    };
    let (bytes, converted) = refiner::convert(fp32, args.precision)?;
    write(&args.output, &bytes)?;
    println!(
        "wrote {} ({label} refiner, {} bytes); {converted} weight tensors converted",
        args.output.display(),
        bytes.len()
    );
    let Some(path) = &args.report else { return Ok(()) };
    let Some(dir) = &args.eval else { anyhow::bail!("--report needs --eval DIR to evaluate on") };
    let data = calibrate::load(dir, args.eval_pairs, args.seed.wrapping_add(1)).context("the report's eval folder")?;
    let cmp = refiner::compare(&args.pass1_engine, fp32, &args.output, &data, args.draws, args.seed)?;
    let notes = vec![
        format!(
            "fp32: `{}`; {label}: `{}`; in-context pass: `{}`",
            fp32.display(),
            args.output.display(),
            args.pass1_engine.display()
        ),
        format!("eval: {} pairs of `{}`, {} draws, seed {}", data.len(), dir.display(), args.draws, args.seed),
        format!("command: `segicl-quantize {}`", std::env::args().skip(1).collect::<Vec<_>>().join(" ")),
    ];
    let text = cmp.markdown(&format!("segicl-quantize report: {label} refiner"), &notes, label);
    std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    print!("{text}");
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(fp32) = args.refiner.clone() {
        return run_refiner(&args, &fp32);
    }
    let engine = args.engine.clone().expect("clap requires --engine without --refiner");
    let options = Options {
        engine: engine.clone(),
        target: args.precision,
        calib: args.calib.clone(),
        method: args.method.into(),
        calib_pairs: args.calib_pairs,
        seed: args.seed,
        keep_float: args.keep_float,
        shot_side: args.shot_side,
    };
    let outcome = quantize(&options)?;
    write(&args.output, &outcome.bytes)?;
    let label = match args.precision {
        Target::Int8 => "int8",
        Target::Fp16 => "fp16",
    };
    println!("wrote {} ({label}, {} bytes)", args.output.display(), outcome.bytes.len());
    match args.precision {
        Target::Int8 => println!(
            "{} Conv/MatMul/Gemm nodes quantised, calibrated on {} pairs; in float: {}",
            outcome.converted,
            outcome.calib_pairs,
            if outcome.float_nodes.is_empty() { "nothing".into() } else { outcome.float_nodes.join(", ") }
        ),
        Target::Fp16 => println!("{} weight tensors stored as f16", outcome.converted),
    }
    let Some(path) = &args.report else { return Ok(()) };
    let Some(dir) = args.eval.as_ref().or(args.calib.as_ref()) else {
        anyhow::bail!("--report needs --eval DIR (or --calib DIR) to evaluate on")
    };
    let data = calibrate::load(dir, args.eval_pairs, args.seed.wrapping_add(1)).context("the report's eval folder")?;
    let cmp = report::compare(&engine, &args.output, &data, args.draws, args.seed, &[1, 2], 30)?;
    let mut notes = vec![
        format!("fp32: `{}`; {label}: `{}`", engine.display(), args.output.display()),
        format!(
            "eval: {} pairs of `{}`, {} draws per shot count, seed {}",
            data.len(),
            dir.display(),
            args.draws,
            args.seed
        ),
    ];
    if args.precision == Target::Int8 {
        notes.push(format!(
            "calibration: {:?} on {} pairs of `{}`; in float: {}",
            options.method,
            outcome.calib_pairs,
            args.calib.as_ref().map_or(String::new(), |p| p.display().to_string()),
            if outcome.float_nodes.is_empty() { "nothing".into() } else { outcome.float_nodes.join(", ") }
        ));
    }
    notes.push(format!("command: `segicl-quantize {}`", std::env::args().skip(1).collect::<Vec<_>>().join(" ")));
    let text = cmp.markdown(&format!("segicl-quantize report: {label}"), &notes, label);
    std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    print!("{text}");
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("segicl-quantize: {e:#}");
            ExitCode::FAILURE
        }
    }
}
