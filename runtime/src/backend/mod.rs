//! Backends run the encoder and decoder graphs. Each one prepares its plans once per engine and
//! hands out one [`Runner`] per session; runners write into caller-owned buffers.

#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
pub mod cuda;
pub mod limits;
pub mod native;
pub mod onnx;
pub mod plan;
pub mod tensorrt;
#[cfg(feature = "tract")]
pub mod tract;

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::EngineFile;
use crate::manifest::Manifest;

/// Which backend an engine should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The best backend that runs the engine (TensorRT when built with it, then CUDA, then the
    /// native CPU executor, then tract); says which it took and why not the ones before it.
    #[default]
    Auto,
    /// The native CPU executor (engines whose graphs lower to a plan: the bundled float and int8
    /// ones).
    Cpu,
    /// tract on the CPU: every engine whose ops tract knows (the reference in tests).
    Tract,
    /// An NVIDIA GPU through CUDA.
    Cuda,
    /// An NVIDIA GPU through TensorRT (plans built on the device and cached).
    TensorRt,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "tract" => Ok(BackendChoice::Tract),
            "cuda" => Ok(BackendChoice::Cuda),
            "tensorrt" => Ok(BackendChoice::TensorRt),
            other => {
                Err(Error::invalid(format!("unknown backend `{other}`: choose cpu, tract, cuda, tensorrt or auto")))
            }
        }
    }
}

/// A backend with both graphs of one engine prepared, shared read-only by its sessions.
pub trait Backend: Send + Sync {
    /// Short name (`cpu`, `tract`, `cuda`, `tensorrt`).
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

/// Prepares the backend `choice` names for the engine in `file`; `auto` takes TensorRT (in a
/// build with it) or CUDA when it can, then the native CPU executor, then tract, logging why it
/// passed over each one.
pub fn prepare(
    choice: BackendChoice,
    file: &EngineFile,
    manifest: &Manifest,
    threads: usize,
) -> Result<Box<dyn Backend>> {
    let native =
        || -> Result<Box<dyn Backend>> { Ok(Box::new(native::NativeBackend::prepare(file, manifest, threads)?)) };
    let tract = || prepare_tract(file, manifest, threads);
    let suggest = |e: Error, other: &str| match e {
        Error::Backend { backend, what } => Error::Backend {
            backend,
            what: format!("{what}; use --backend {other}, or auto to take the best one present"),
        },
        other => other,
    };
    match choice {
        BackendChoice::Cpu if cfg!(feature = "tract") => native().map_err(|e| suggest(e, "tract")),
        BackendChoice::Cpu => native(),
        BackendChoice::Tract => tract(),
        BackendChoice::Cuda => prepare_cuda(file, manifest).map_err(|e| suggest(e, "cpu")),
        BackendChoice::TensorRt => prepare_tensorrt(file, manifest).map_err(|e| suggest(e, "cuda or cpu")),
        BackendChoice::Auto => prepare_gpu(file, manifest).or_else(|not_cuda| match native() {
            Ok(backend) => {
                log::info!("backend auto: using cpu, not cuda: {not_cuda}");
                Ok(backend)
            }
            Err(Error::Backend { backend, what }) if cfg!(not(feature = "tract")) => Err(Error::Backend {
                backend,
                what: format!("{what}; this build has no tract backend to fall back on (not cuda: {not_cuda})"),
            }),
            Err(not_native) => {
                log::info!(
                    "backend auto: using tract, not cuda: {not_cuda}; not the native cpu executor: {not_native}"
                );
                tract()
            }
        }),
    }
}

#[cfg(feature = "tract")]
fn prepare_tract(file: &EngineFile, manifest: &Manifest, threads: usize) -> Result<Box<dyn Backend>> {
    Ok(Box::new(tract::TractBackend::prepare(file, manifest, threads)?))
}

#[cfg(not(feature = "tract"))]
fn prepare_tract(_: &EngineFile, _: &Manifest, _: usize) -> Result<Box<dyn Backend>> {
    Err(Error::Backend {
        backend: "tract",
        what: "this build has no tract backend: build with --features tract".into(),
    })
}

/// The TensorRT backend, else the CUDA one (logging why not TensorRT), in a build with TensorRT.
#[cfg(feature = "tensorrt")]
fn prepare_gpu(file: &EngineFile, manifest: &Manifest) -> Result<Box<dyn Backend>> {
    prepare_tensorrt(file, manifest).or_else(|not_tensorrt| {
        log::info!("backend auto: not tensorrt: {not_tensorrt}");
        prepare_cuda(file, manifest)
    })
}

/// The CUDA backend, in a build without TensorRT.
#[cfg(not(feature = "tensorrt"))]
fn prepare_gpu(file: &EngineFile, manifest: &Manifest) -> Result<Box<dyn Backend>> {
    prepare_cuda(file, manifest)
}

#[cfg(feature = "tensorrt")]
fn prepare_tensorrt(file: &EngineFile, manifest: &Manifest) -> Result<Box<dyn Backend>> {
    tensorrt::prepare(file, manifest)
}

#[cfg(not(feature = "tensorrt"))]
fn prepare_tensorrt(_: &EngineFile, _: &Manifest) -> Result<Box<dyn Backend>> {
    Err(Error::Backend {
        backend: "tensorrt",
        what: "this build has no TensorRT backend: build with --features tensorrt,cuda-12 (JetPack 6) or tensorrt,cuda"
            .into(),
    })
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

/// What a build without the `tract` feature (the small library) runs and refuses.
#[cfg(all(test, not(feature = "tract")))]
mod without_tract {
    use std::path::{Path, PathBuf};

    use crate::{BackendChoice, Engine, EngineOptions, Refiner};

    fn bundled(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(name)
    }

    fn open(name: &str, backend: BackendChoice) -> crate::Result<Engine> {
        Engine::open(bundled(name), &EngineOptions { backend, threads: 1 })
    }

    #[test]
    fn the_bundled_engines_run_natively_and_the_rest_is_refused_saying_why() {
        for name in ["segicl-ref.plan", "segicl-ref-fp16.plan", "segicl-ref-int8.plan", "prototype.plan"] {
            for backend in [BackendChoice::Auto, BackendChoice::Cpu] {
                assert_eq!(open(name, backend).unwrap().backend_name(), "cpu", "{name}");
            }
            let err = open(name, BackendChoice::Tract).unwrap_err().to_string();
            assert!(err.contains("this build has no tract backend"), "{err}");
        }
        let refiner = Refiner::open(bundled("litemedsam-int8.refiner"), &EngineOptions::default());
        assert!(refiner.unwrap_err().to_string().contains("refiners run on tract"));
    }
}
