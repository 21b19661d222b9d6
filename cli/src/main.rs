//! `segicl-edge`: segment frames in context, inspect, verify and pack engines, benchmark and
//! evaluate them. One module per subcommand.

mod bake;
mod bench;
mod demo;
mod draw;
mod eval;
mod inspect;
mod pack;
mod pack_refiner;
mod segment;
mod synth;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use segicl::{BackendChoice, BoxRule, Engine, EngineOptions, RefineOptions, Refiner, RoiOptions};

/// The engine the repository ships, used when --engine is not given.
pub const BUNDLED_ENGINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/segicl-ref.plan");
/// The training-free prototype engine: `eval`'s baseline when --baseline-engine is not given.
pub const PROTOTYPE_ENGINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/prototype.plan");

/// The refiner the repository ships (LiteMedSAM, int8 weights), used when --refiner is not given.
pub const BUNDLED_REFINER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/litemedsam-int8.refiner");

/// A bundled engine's path, without the `..` when it can be resolved.
pub fn bundled(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

/// In-context segmentation of medical frames from one to three example shots.
#[derive(Parser)]
#[command(name = "segicl-edge", version, about, propagate_version = true)]
struct Cli {
    /// Engine file (default: the bundled models/segicl-ref.plan).
    #[arg(long, global = true)]
    engine: Option<PathBuf>,
    /// Backend: cpu (the native executor), tract, cuda, tensorrt or auto (tensorrt in a build with
    /// it, then cuda, then cpu, then tract).
    #[arg(long, global = true, default_value = "auto")]
    backend: BackendChoice,
    /// CPU threads for the graphs.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Log what the runtime does (info level; RUST_LOG overrides).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment query images from shots (IMG=MASK) or an engine's default shots.
    Segment(segment::Args),
    /// Show an engine's header, sections, manifest and default shots.
    Inspect(inspect::Args),
    /// Check every checksum of an engine (or refiner) and load its graphs; exit 1 on any failure.
    Verify(verify::Args),
    /// Pack a manifest and two ONNX graphs (plus card and default shots) into an engine.
    Pack(pack::Args),
    /// Pack a refiner's manifest and two ONNX graphs (plus card) into a refiner file.
    PackRefiner(pack_refiner::Args),
    /// Time the encoder, decoder and whole frame with cached shots, against the uncached path.
    Bench(bench::Args),
    /// Write a copy of the engine with this device's TensorRT plans baked in (a fleet of
    /// identical devices then skips the build at first open).
    Bake(bake::Args),
    /// Dice and IoU over a folder of image/mask pairs (or a synthetic task) with 1, 2, 3 shots.
    Eval(eval::Args),
    /// Segment bundled synthetic samples, write overlays and print a Dice table.
    Demo(demo::Args),
    /// Write synthetic image/mask pairs as a folder (for eval and segicl-quantize --calib).
    Synth(synth::Args),
}

/// ROI mode, for `segment` and `eval`.
#[derive(clap::Args)]
pub struct RoiArgs {
    /// Refine small structures in two passes: the whole frame, then a crop around the first
    /// prediction, with the shots cropped around their own masks.
    #[arg(long)]
    roi: bool,
    /// Margin around the predicted box, as a fraction of its larger side (with --roi; default 0.5).
    #[arg(long, value_name = "M", requires = "roi", allow_negative_numbers = true)]
    roi_margin: Option<f32>,
}

impl RoiArgs {
    /// The session's ROI options, `None` without --roi.
    pub fn options(&self) -> Option<RoiOptions> {
        let default = RoiOptions::default();
        self.roi.then(|| RoiOptions { margin: self.roi_margin.unwrap_or(default.margin), ..default })
    }
}

/// The refinement pass, for `segment`, `eval` and `bench`.
#[derive(clap::Args)]
pub struct RefineArgs {
    /// Redraw each mask with the refiner (LiteMedSAM) from a box around it; per task, the shots
    /// decide the box rule and margin, or that refinement stays off.
    #[arg(long)]
    refine: bool,
    /// Refiner file (with --refine; default: the bundled models/litemedsam-int8.refiner).
    #[arg(long, value_name = "FILE", requires = "refine")]
    refiner: Option<PathBuf>,
    /// Box rule with one shot or --no-gate, tried first by the gate: largest-blob or all-blobs.
    #[arg(long, value_name = "RULE", requires = "refine")]
    box_rule: Option<BoxRule>,
    /// Margin of that box on each side, as a fraction of its width and height (default: the
    /// refiner's, 0.05 for LiteMedSAM).
    #[arg(long, value_name = "M", requires = "refine", allow_negative_numbers = true)]
    refine_margin: Option<f32>,
    /// Always refine with --box-rule and --refine-margin: no choice per task on the shots.
    #[arg(long, requires = "refine")]
    no_gate: bool,
}

impl RefineArgs {
    /// The refiner and the session's options, `None` without --refine; `memo_frames` frames keep
    /// their embeddings.
    pub fn open(&self, global: &Global, memo_frames: usize) -> anyhow::Result<Option<(Refiner, RefineOptions)>> {
        if !self.refine {
            return Ok(None);
        }
        let path = self.refiner.clone().unwrap_or_else(|| bundled(BUNDLED_REFINER));
        let refiner = Refiner::open(&path, &global.options)?;
        let options = RefineOptions {
            rule: self.box_rule.unwrap_or(BoxRule::LargestBlob),
            margin: self.refine_margin,
            gate: !self.no_gate,
            memo_frames,
        };
        options.check()?;
        Ok(Some((refiner, options)))
    }
}

/// `--refiner [FILE]` of `inspect` and `verify`: look at a refiner file instead of the engine.
#[derive(clap::Args)]
pub struct RefinerArg {
    /// Inspect or verify a refiner file instead of the engine (without FILE: the bundled
    /// models/litemedsam-int8.refiner).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    refiner: Option<Option<PathBuf>>,
}

impl RefinerArg {
    /// The refiner file named, if --refiner was given.
    pub fn path(&self) -> Option<PathBuf> {
        self.refiner.as_ref().map(|p| p.clone().unwrap_or_else(|| bundled(BUNDLED_REFINER)))
    }
}

/// Options every subcommand that opens an engine shares.
pub struct Global {
    engine: PathBuf,
    options: EngineOptions,
}

impl Global {
    /// Opens the engine with the chosen backend and threads.
    pub fn open(&self) -> anyhow::Result<Engine> {
        Ok(Engine::open(&self.engine, &self.options)?)
    }
}

fn main() -> ExitCode {
    // Die quietly when the reader of stdout goes away (`segicl-edge inspect | head`), as
    // command-line tools do, instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let level = if cli.verbose { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let global = Global {
        engine: cli.engine.unwrap_or_else(|| bundled(BUNDLED_ENGINE)),
        options: EngineOptions { backend: cli.backend, threads: cli.threads },
    };
    let result = match cli.command {
        Command::Segment(args) => segment::run(&global, args),
        Command::Inspect(args) => inspect::run(&global, args),
        Command::Verify(args) => verify::run(&global, args),
        Command::Pack(args) => pack::run(args),
        Command::PackRefiner(args) => pack_refiner::run(args),
        Command::Bench(args) => bench::run(&global, args),
        Command::Bake(args) => bake::run(&global, args),
        Command::Eval(args) => eval::run(&global, args),
        Command::Demo(args) => demo::run(&global, args),
        Command::Synth(args) => synth::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
