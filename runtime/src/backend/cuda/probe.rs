//! Finding the driver, the CUDA libraries and a device without letting cudarc panic.
//!
//! cudarc loads each library on first use and panics when it is missing, so [`libraries`] first
//! opens every one itself, under the names cudarc will try, and turns an absence into an error
//! that names the file. [`guarded`] turns any panic that remains (a symbol missing from an old
//! library, say) into an error too.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once};

use cudarc::driver::{result as driver, sys, CudaContext};

use super::{error, ErrorContext};
use crate::error::Result;

/// The CUDA major version this build's bindings are for (feature `cuda-12` or `cuda-13`).
#[cfg(feature = "cuda-12")]
pub const CUDA_MAJOR: i32 = 12;
/// The CUDA major version this build's bindings are for (feature `cuda-12` or `cuda-13`).
#[cfg(not(feature = "cuda-12"))]
pub const CUDA_MAJOR: i32 = 13;

#[cfg(all(feature = "cuda-12", feature = "cuda-13"))]
compile_error!("features cuda-12 and cuda-13 are exclusive (`cuda` means cuda-13): build with --features cuda-12 alone for CUDA 12");

/// cudarc's check that a library loads under one of the names it tries.
type PresenceCheck = unsafe fn() -> bool;

/// The libraries the backend loads: cudarc's check, what the library is, and cudarc's name for it.
const LIBRARIES: [(PresenceCheck, &str, &str); 4] = [
    (cudarc::driver::sys::is_culib_present, "the NVIDIA driver", "cuda"),
    (cudarc::nvrtc::sys::is_culib_present, "NVRTC", "nvrtc"),
    (cudarc::cublas::sys::is_culib_present, "cuBLAS", "cublas"),
    (cudarc::cudnn::sys::is_culib_present, "cuDNN 9", "cudnn"),
];

/// The file a CUDA `CUDA_MAJOR` system has for the library cudarc calls `name`.
fn file_name(name: &str) -> String {
    match name {
        "cuda" => "libcuda.so.1".into(),
        "cudnn" => "libcudnn.so.9".into(),
        other => format!("lib{other}.so.{CUDA_MAJOR}"),
    }
}

/// Checks that the driver, NVRTC, cuBLAS and cuDNN can be loaded under a name cudarc tries
/// (cudarc panics on the first call into a library it cannot load); the error names the first
/// that cannot and what to install.
pub fn libraries() -> Result<()> {
    for (present, what, name) in LIBRARIES {
        // SAFETY: each check only tries to load the library under cudarc's candidate names.
        if unsafe { present() } {
            continue;
        }
        let fix = if name == "cuda" {
            "install the NVIDIA driver, or run where a GPU is visible".to_string()
        } else {
            format!(
                "install the CUDA {CUDA_MAJOR} libraries (NVRTC, cuBLAS) and cuDNN 9 and put their \
                 directory on LD_LIBRARY_PATH{}",
                if CUDA_MAJOR == 13 { ", or build with --features cuda-12 for CUDA 12" } else { "" }
            )
        };
        return Err(error(format!("{what} cannot be loaded ({} not found): {fix}", file_name(name))));
    }
    Ok(())
}

/// Initialises the driver, checks that it runs CUDA `CUDA_MAJOR` programs and opens device 0.
/// Call after [`libraries`], inside [`guarded`].
pub fn device() -> Result<Arc<CudaContext>> {
    let mut version = 0;
    // SAFETY: writes one int; libcuda was found by `libraries`.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result().context("cuDriverGetVersion")?;
    let (major, minor) = (version / 1000, version % 1000 / 10);
    if major < CUDA_MAJOR {
        let fix =
            if CUDA_MAJOR == 13 { "update the driver or build with --features cuda-12" } else { "update the driver" };
        return Err(error(format!(
            "the NVIDIA driver runs CUDA {major}.{minor} programs, this build needs CUDA {CUDA_MAJOR}: {fix}"
        )));
    }
    driver::init().context("cuInit (is the GPU visible to this process?)")?;
    let count = driver::device::get_count().context("cuDeviceGetCount")?;
    if count == 0 {
        return Err(error("the driver sees no CUDA device"));
    }
    CudaContext::new(0).context("creating a context on device 0")
}

thread_local! {
    /// Whether this thread runs inside [`guarded`], and where its last panic there happened.
    static GUARD: (Cell<bool>, Cell<Option<String>>) = const { (Cell::new(false), Cell::new(None)) };
}

/// Runs `f`, turning a panic inside it (cudarc panics when a library or symbol it loads lazily
/// is missing) into an error saying what was being done and where it panicked. The panic hook is
/// wrapped once so that such a panic prints nothing: the error reports it. Panics elsewhere, and
/// on other threads, reach the previous hook as before.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if GUARD.with(|(inside, _)| inside.get()) {
                GUARD.with(|(_, location)| location.set(info.location().map(|l| l.to_string())));
            } else {
                previous(info);
            }
        }));
    });
    let outer = GUARD.with(|(inside, _)| inside.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARD.with(|(inside, _)| inside.set(outer));
    result.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let at = GUARD.with(|(_, location)| location.take()).map(|l| format!(" (at {l})")).unwrap_or_default();
        Err(error(format!("{what}: {why}{at}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_backend_error_saying_where() {
        let e = guarded::<()>("loading", || panic!("Unable to dynamically load the \"cuda\" shared library"));
        let text = e.unwrap_err().to_string();
        assert!(text.starts_with("backend cuda: loading: Unable to dynamically load"), "{text}");
        assert!(text.contains("(at runtime/src/backend/cuda/probe.rs:"), "{text}");
        assert_eq!(guarded("adding", || Ok(1 + 1)).unwrap(), 2);
    }
}
