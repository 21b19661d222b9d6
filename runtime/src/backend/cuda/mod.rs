//! The CUDA backend: both graphs of an engine, lowered to a [`Plan`], run on an NVIDIA GPU.
//!
//! Built with cudarc, which loads the driver, NVRTC, cuBLAS and cuDNN at run time: a build
//! needs no CUDA toolkit, and a machine without a GPU gets an [`Error::Backend`] saying what is
//! missing (`probe.rs`), never a panic. Convolutions run through cuDNN, matrix products through cuBLAS (strided
//! batched, f32 accumulation) and every other op through the NVRTC kernels of `kernels.cu`,
//! compiled once at open for the device.
//!
//! Tensors are stored in f16 with f32 arithmetic by default; `SEGICL_CUDA_PRECISION=f32` stores
//! them in f32 (and keeps cuDNN and cuBLAS off the reduced-precision tensor-core paths). Weights
//! are uploaded once per engine in that precision. Each session has its own stream, buffers and
//! cuBLAS/cuDNN handles; from its second run on, each graph is replayed as a CUDA graph
//! ([`Launching`] says how to turn that off). The [`Runner`] interface passes host slices, so
//! every frame uploads its image and the context (S·T×D floats, 17 KiB for the reference model:
//! a few microseconds) and downloads the logits; the features stay on the device between the
//! encoder and the decoder.

mod copies;
mod executor;
mod graph;
mod kernels;
pub(crate) mod probe;
mod runner;

use std::fmt::Display;
use std::sync::Arc;

use cudarc::cublas::sys::cudaDataType;
use cudarc::cudnn::sys::cudnnMathType_t;
use cudarc::cudnn::CudnnDataType;
use cudarc::driver::{CudaContext, DeviceRepr, ValidAsZeroBits};
use half::f16;

use super::plan::{self, Plan};
use super::{Backend, Runner};
use crate::error::{Error, Result};
use crate::format::EngineFile;
use crate::manifest::{Graph, Manifest};
use graph::DeviceGraph;
use kernels::Kernels;

/// How tensors are stored on the device (arithmetic is f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 16-bit floats: half the memory traffic, tensor cores for convolutions and products.
    F16,
    /// 32-bit floats: the CPU backend's numbers, to check the f16 path against.
    F32,
}

impl Precision {
    /// The precision `SEGICL_CUDA_PRECISION` asks for (`f16`, the default, or `f32`).
    pub fn from_env() -> Result<Precision> {
        match std::env::var("SEGICL_CUDA_PRECISION").as_deref() {
            Err(_) | Ok("f16") => Ok(Precision::F16),
            Ok("f32") => Ok(Precision::F32),
            Ok(other) => Err(error(format!("SEGICL_CUDA_PRECISION is `{other}`: choose f16 or f32"))),
        }
    }

    /// `f16` or `f32`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F16 => "f16",
            Precision::F32 => "f32",
        }
    }
}

/// How sessions queue a graph's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launching {
    /// One by one on the first run, then as a CUDA graph captured on the second (the default;
    /// one by one for good when the capture fails, with a warning).
    Graphs,
    /// One by one, always (`SEGICL_CUDA_GRAPHS=0`).
    Eager,
    /// One by one, waiting for each and naming the node of the first that fails
    /// (`SEGICL_CUDA_DEBUG=1`).
    Debug,
}

impl Launching {
    /// What `SEGICL_CUDA_DEBUG` and `SEGICL_CUDA_GRAPHS` ask for.
    pub fn from_env() -> Launching {
        let set = |name, value| std::env::var(name).is_ok_and(|v| v == value);
        if set("SEGICL_CUDA_DEBUG", "1") {
            Launching::Debug
        } else if set("SEGICL_CUDA_GRAPHS", "0") {
            Launching::Eager
        } else {
            Launching::Graphs
        }
    }
}

/// A storage element type of the device tensors.
pub trait Element: DeviceRepr + ValidAsZeroBits + CudnnDataType + Copy + Send + Sync + 'static {
    /// The precision it implements.
    const PRECISION: Precision;
    /// Its cuBLAS data type.
    const BLAS: cudaDataType;
    /// The cuDNN math mode its convolutions use.
    const CONV_MATH: cudnnMathType_t;
    /// Converts an f32 (rounding to nearest).
    fn from_f32(v: f32) -> Self;
    /// Converts an f16.
    fn from_f16(v: f16) -> Self;
}

impl Element for f32 {
    const PRECISION: Precision = Precision::F32;
    const BLAS: cudaDataType = cudaDataType::CUDA_R_32F;
    const CONV_MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_FMA_MATH;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f16(v: f16) -> Self {
        v.to_f32()
    }
}

impl Element for f16 {
    const PRECISION: Precision = Precision::F16;
    const BLAS: cudaDataType = cudaDataType::CUDA_R_16F;
    const CONV_MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn from_f16(v: f16) -> Self {
        v
    }
}

/// An [`Error::Backend`] of this backend.
fn error(what: impl Into<String>) -> Error {
    Error::Backend { backend: "cuda", what: what.into() }
}

/// Turns a CUDA library's error into an [`Error::Backend`] saying what was being done.
trait ErrorContext<T> {
    /// The error, prefixed with `what`.
    fn context(self, what: impl Display) -> Result<T>;
}

impl<T, E: Display> ErrorContext<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| error(format!("{what}: {e}")))
    }
}

/// What the sessions of one engine share: the device, the kernels and both graphs' constants.
struct Shared<T> {
    kernels: Kernels,
    encoder: DeviceGraph<T>,
    decoder: DeviceGraph<T>,
    /// How sessions queue their operations.
    launching: Launching,
    context: Arc<CudaContext>,
}

/// Both graphs of an engine on the GPU, stored as `T`.
pub struct CudaBackend<T> {
    shared: Arc<Shared<T>>,
}

/// Prepares the engine in `file` on device 0, or says why it cannot: a library or device
/// missing, or an op of the graphs this backend does not implement (naming the node).
pub fn prepare(file: &EngineFile, manifest: &Manifest) -> Result<Box<dyn Backend>> {
    probe::libraries()?;
    let precision = Precision::from_env()?;
    let encoder = lower(file, manifest, Graph::Encoder)?;
    let decoder = lower(file, manifest, Graph::Decoder)?;
    probe::guarded("opening the device", || match precision {
        Precision::F16 => Ok(Box::new(CudaBackend::<f16>::open(encoder, decoder)?) as Box<dyn Backend>),
        Precision::F32 => Ok(Box::new(CudaBackend::<f32>::open(encoder, decoder)?) as Box<dyn Backend>),
    })
}

impl<T: Element> CudaBackend<T> {
    /// Opens device 0, compiles the kernels for it and uploads both graphs' constants.
    fn open(encoder: Plan, decoder: Plan) -> Result<Self> {
        let context = probe::device()?;
        // SAFETY: cudarc's per-buffer events are turned off before any buffer exists. The
        // backend orders work itself: constants are uploaded and synchronised here, before any
        // session exists, and each session runs on its one stream.
        unsafe { context.disable_event_tracking() };
        let (major, minor) = context.compute_capability().context("reading the compute capability")?;
        let ptx = kernels::compile(T::PRECISION, Some(&format!("compute_{major}{minor}")))
            .context("compiling the kernels with NVRTC")?;
        let kernels = Kernels::load(&context, ptx)?;
        let stream = context.default_stream();
        let encoder = DeviceGraph::upload("encoder", encoder, &stream)?;
        let decoder = DeviceGraph::upload("decoder", decoder, &stream)?;
        stream.synchronize().context("uploading the weights")?;
        let launching = Launching::from_env();
        log::info!(
            "cuda: {} (sm_{major}{minor}), {} storage with f32 arithmetic, launching {launching:?}",
            context.name().unwrap_or_else(|_| "device 0".into()),
            T::PRECISION.name(),
        );
        Ok(CudaBackend { shared: Arc::new(Shared { kernels, encoder, decoder, launching, context }) })
    }
}

impl<T: Element> Backend for CudaBackend<T> {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn runner(&self) -> Result<Box<dyn Runner>> {
        let shared = self.shared.clone();
        probe::guarded("creating a session", || Ok(Box::new(runner::CudaRunner::new(shared)?) as Box<dyn Runner>))
    }
}

/// Lowers one graph of the engine for this backend.
fn lower(file: &EngineFile, manifest: &Manifest, graph: Graph) -> Result<Plan> {
    plan::lower_engine(file, manifest, graph, "cuda")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::EngineMetadata;

    fn bundled(name: &str) -> EngineMetadata {
        EngineMetadata::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(name)).unwrap()
    }

    /// What `open` checks before it touches the device: the bundled engines lower and this
    /// backend runs each of their steps.
    #[test]
    fn the_bundled_engines_lower_to_steps_this_backend_runs() {
        for name in ["segicl-ref.plan", "segicl-ref-fp16.plan", "segicl-ref-int8.plan", "prototype.plan"] {
            let engine = bundled(name);
            for graph in [Graph::Encoder, Graph::Decoder] {
                let plan = lower(&engine.file, &engine.manifest, graph).unwrap_or_else(|e| panic!("{name}: {e}"));
                for step in &plan.steps {
                    assert_eq!(executor::unsupported(&step.op), None, "{name}: node {}", step.node);
                }
            }
        }
    }
}
