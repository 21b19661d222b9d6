//! Backends run the encoder and decoder graphs. Each one prepares its plans once per engine and
//! hands out one [`Runner`] per session; runners write into caller-owned buffers.

pub mod cpu;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
pub mod cuda;
#[cfg(any(feature = "cuda-12", feature = "cuda-13", test))]
pub mod plan;

use std::time::Duration;

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
    /// Device-side times of the last [`Runner::encode`] and [`Runner::decode`], for backends that
    /// measure them (the CUDA backend, with events); `None` before both have run.
    fn device_timings(&self) -> Option<DeviceTimings> {
        None
    }
}

/// Device-side times of a runner's last encoder and decoder pass, measured on the device.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceTimings {
    /// Copies of both passes' inputs to the device.
    pub upload: Duration,
    /// The encoder's kernels.
    pub encoder: Duration,
    /// The decoder's kernels.
    pub decoder: Duration,
    /// Copies of both passes' outputs to the host.
    pub download: Duration,
}

impl DeviceTimings {
    /// Sum of all four.
    pub fn total(&self) -> Duration {
        self.upload + self.encoder + self.decoder + self.download
    }
}

/// Prepares the backend `choice` names for the engine in `file`; `auto` takes CUDA when it can
/// and otherwise the CPU, logging why.
pub fn prepare(
    choice: BackendChoice,
    file: &EngineFile,
    manifest: &Manifest,
    threads: usize,
) -> Result<Box<dyn Backend>> {
    let cpu = || -> Result<Box<dyn Backend>> { Ok(Box::new(cpu::CpuBackend::prepare(file, manifest, threads)?)) };
    match choice {
        BackendChoice::Cpu => cpu(),
        BackendChoice::Cuda => prepare_cuda(file, manifest).map_err(|e| match e {
            Error::Backend { backend, what } => Error::Backend {
                backend,
                what: format!("{what}; use --backend cpu, or auto to take the best one present"),
            },
            other => other,
        }),
        BackendChoice::Auto => prepare_cuda(file, manifest).or_else(|e| {
            log::info!("backend auto: using cpu, not cuda: {e}");
            cpu()
        }),
    }
}

#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
fn prepare_cuda(file: &EngineFile, manifest: &Manifest) -> Result<Box<dyn Backend>> {
    cuda::prepare(file, manifest)
}

#[cfg(not(any(feature = "cuda-12", feature = "cuda-13")))]
fn prepare_cuda(_: &EngineFile, _: &Manifest) -> Result<Box<dyn Backend>> {
    Err(Error::Backend {
        backend: "cuda",
        what: "this build has no CUDA backend: build with --features cuda (CUDA 13) or cuda-12".into(),
    })
}
