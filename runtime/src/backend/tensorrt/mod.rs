//! The TensorRT backend: each graph of an engine as a TensorRT plan, built on the device from the
//! engine's ONNX section at first open and cached (or baked into the engine for a fleet).
//!
//! TensorRT's API is C++, so a small shim of this project's (`shim.cpp`, flat C functions,
//! compiled by `runtime/build.rs` against the TensorRT headers found at build time) makes the
//! virtual calls, and TensorRT's libraries are loaded at run time ([`library`]), their version
//! checked against the headers the shim was compiled with. Device buffers and the stream come
//! from cudarc; each session binds its buffers once and runs `enqueueV3` per pass.
//!
//! - [`api`]: the shim's C API as a table of function pointers and safe wrappers over it.
//! - [`library`]: finding and checking `libnvinfer.so.10` (or TensorRT-RTX's library).
//! - [`plans`]: plan keys, the plan cache, baked `TRT_*` sections, and choosing or building a plan.

pub mod api;
pub mod library;
pub mod plans;
#[cfg(feature = "tensorrt")]
mod runner;

#[cfg(feature = "tensorrt")]
pub use runner::{bake, prepare, DevicePlans, PlanSession};

use crate::error::Error;

#[cfg(all(feature = "tensorrt", not(any(feature = "cuda-12", feature = "cuda-13"))))]
compile_error!(
    "the tensorrt feature needs a CUDA feature too: --features tensorrt,cuda-12 (JetPack 6) or tensorrt,cuda"
);

/// An [`Error::Backend`] of this backend.
pub fn tensorrt_error(what: impl Into<String>) -> Error {
    Error::Backend { backend: "tensorrt", what: what.into() }
}

#[cfg(test)]
mod tests;
