//! Backends run the encoder and decoder graphs. Each one prepares its plans once per engine and
//! hands out one [`Runner`] per session; runners write into caller-owned buffers.

pub mod cpu;

use crate::error::{Error, Result};
use crate::format::EngineFile;
use crate::manifest::Manifest;

/// Which backend an engine should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The best backend present; says which it took.
    #[default]
    Auto,
    /// tract on the CPU (always built).
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(Error::invalid(format!("unknown backend `{other}`: choose cpu, cuda or auto"))),
        }
    }
}

/// A backend with both graphs of one engine prepared, shared read-only by its sessions.
pub trait Backend: Send + Sync {
    /// Short name (`cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// A runner for one session.
    fn runner(&self) -> Result<Box<dyn Runner>>;
}

/// Runs the graphs for one session; not shared between threads.
pub trait Runner: Send {
    /// Runs the encoder on `image` (C×R×R) and `mask` (R×R, 0/1), writes the context tokens
    /// (T×D) into `ctx` and keeps the features for the next [`Runner::decode`].
    fn encode(&mut self, image: &[f32], mask: &[f32], ctx: &mut [f32]) -> Result<()>;
    /// Runs the decoder on the features of the last `encode`, the context (S·T×D) and its
    /// validity (S·T), writing R×R logits.
    fn decode(&mut self, ctx: &[f32], ctx_valid: &[f32], logits: &mut [f32]) -> Result<()>;
}

/// Prepares the backend `choice` names for the engine in `file`; `auto` takes the CPU and logs why.
pub fn prepare(
    choice: BackendChoice,
    file: &EngineFile,
    manifest: &Manifest,
    threads: usize,
) -> Result<Box<dyn Backend>> {
    match choice {
        BackendChoice::Cpu => Ok(Box::new(cpu::CpuBackend::prepare(file, manifest, threads)?)),
        BackendChoice::Auto => {
            log::info!("backend auto: using cpu (this build has no GPU backend)");
            Ok(Box::new(cpu::CpuBackend::prepare(file, manifest, threads)?))
        }
        BackendChoice::Cuda => Err(Error::Backend {
            backend: "cuda",
            what: "this build has no CUDA backend yet; use --backend cpu, or auto to take the best one present".into(),
        }),
    }
}
