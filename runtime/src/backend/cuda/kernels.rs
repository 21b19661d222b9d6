//! The backend's own kernels (`kernels.cu`): every op but Conv and MatMul, compiled by NVRTC
//! once per backend for the device's architecture and the storage precision, and the codes and
//! parameter layout the source expects.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, DeviceRepr};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use super::{ErrorContext, Precision};
use crate::backend::plan::{BinaryKind, PoolKind, ReduceKind, ResizeCoordinates, ResizeMode, UnaryKind};
use crate::error::Result;

/// The CUDA C source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Most axes a [`Strided`] describes (`MAX_RANK` in the source).
pub const MAX_RANK: usize = 8;

/// The source's `struct Strided`: an iteration domain (row-major) and two sets of element
/// strides over it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    rank: i64,
    shape: [i64; MAX_RANK],
    a: [i64; MAX_RANK],
    b: [i64; MAX_RANK],
}

// SAFETY: `repr(C)` integers only, laid out as the source's `struct Strided`.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// The domain `shape` with strides `a` and `b`, or `None` past [`MAX_RANK`] axes.
    pub fn new(shape: &[usize], a: &[i64], b: &[i64]) -> Option<Strided> {
        assert!(a.len() == shape.len() && b.len() == shape.len(), "one stride per axis");
        if shape.len() > MAX_RANK {
            return None;
        }
        let mut s = Strided { rank: shape.len() as i64, shape: [1; MAX_RANK], a: [0; MAX_RANK], b: [0; MAX_RANK] };
        for axis in 0..shape.len() {
            s.shape[axis] = shape[axis] as i64;
            s.a[axis] = a[axis];
            s.b[axis] = b[axis];
        }
        Some(s)
    }
}

/// Row-major strides of `shape`, in elements.
pub fn dense_strides(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1] as i64;
    }
    strides
}

/// The kernels of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// f32 graph input to storage.
    CastIn,
    /// Storage to f32 graph output.
    CastOut,
    /// Constant fill.
    Fill,
    /// Strided copy (Broadcast, Slice, Transpose, Concat, Pad).
    CopyStrided,
    /// Broadcasting binary op.
    Binary,
    /// Element-wise unary op.
    Unary,
    /// Reduction over the middle of [outer, len, inner].
    Reduce,
    /// Softmax over the middle of [outer, len, inner].
    Softmax,
    /// Layer normalisation over rows.
    LayerNorm,
    /// 2-D average or max pooling.
    Pool,
    /// Nearest or bilinear resize of the last two axes.
    Resize,
    /// Gather with device indices.
    Gather,
    /// Per-channel bias of a convolution.
    BiasAdd,
}

impl Kernel {
    /// Every kernel, in [`Kernels`] order.
    pub const ALL: [Kernel; 13] = [
        Kernel::CastIn,
        Kernel::CastOut,
        Kernel::Fill,
        Kernel::CopyStrided,
        Kernel::Binary,
        Kernel::Unary,
        Kernel::Reduce,
        Kernel::Softmax,
        Kernel::LayerNorm,
        Kernel::Pool,
        Kernel::Resize,
        Kernel::Gather,
        Kernel::BiasAdd,
    ];

    /// Its name in the source.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::CastIn => "cast_in",
            Kernel::CastOut => "cast_out",
            Kernel::Fill => "fill",
            Kernel::CopyStrided => "copy_strided",
            Kernel::Binary => "binary",
            Kernel::Unary => "unary",
            Kernel::Reduce => "reduce",
            Kernel::Softmax => "softmax",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Pool => "pool",
            Kernel::Resize => "resize",
            Kernel::Gather => "gather",
            Kernel::BiasAdd => "bias_add",
        }
    }
}

/// Compiles the source to PTX for `precision`; `arch` (`compute_87`, say) targets a device,
/// `None` takes NVRTC's default.
pub fn compile(precision: Precision, arch: Option<&str>) -> Result<Ptx, CompileError> {
    let mut options = vec![];
    if let Some(arch) = arch {
        options.push(format!("--gpu-architecture={arch}"));
    }
    if precision == Precision::F16 {
        options.push("-DSEGICL_F16".to_string());
    }
    let options = CompileOptions { options, name: Some("kernels.cu".into()), ..Default::default() };
    compile_ptx_with_opts(SOURCE, options)
}

/// The kernels, loaded into one context.
pub struct Kernels(Vec<CudaFunction>);

impl Kernels {
    /// Loads the compiled `ptx` into `context` and looks up every kernel.
    pub fn load(context: &Arc<CudaContext>, ptx: Ptx) -> Result<Kernels> {
        let module = context
            .load_module(ptx)
            .context("loading the kernels (a driver older than NVRTC rejects its PTX: update the driver)")?;
        let functions = Kernel::ALL.iter().map(|k| module.load_function(k.name()).context(k.name()));
        Ok(Kernels(functions.collect::<Result<_>>()?))
    }

    /// The function of `kernel`.
    pub fn get(&self, kernel: Kernel) -> &CudaFunction {
        &self.0[kernel as usize]
    }
}

/// The source's code for a binary op.
pub fn binary_code(kind: BinaryKind) -> i64 {
    match kind {
        BinaryKind::Add => 0,
        BinaryKind::Sub => 1,
        BinaryKind::Mul => 2,
        BinaryKind::Div => 3,
        BinaryKind::Max => 4,
        BinaryKind::Min => 5,
        BinaryKind::Pow => 6,
    }
}

/// The source's code for a unary op, with its bounds and scale (clip and quantize; unused by the
/// others).
pub fn unary_code(kind: UnaryKind) -> (i64, f32, f32, f32) {
    let code = match kind {
        UnaryKind::Relu => 0,
        UnaryKind::Tanh => 1,
        UnaryKind::Sqrt => 2,
        UnaryKind::Sign => 3,
        UnaryKind::Clip { min, max } => return (4, min, max, 1.0),
        UnaryKind::Quantize { scale, min, max } => return (10, min, max, scale),
        UnaryKind::Sigmoid => 5,
        UnaryKind::Exp => 6,
        UnaryKind::Neg => 7,
        UnaryKind::Abs => 8,
        UnaryKind::Copy => 9,
    };
    (code, f32::NEG_INFINITY, f32::INFINITY, 1.0)
}

/// The source's code for a reduction.
pub fn reduce_code(kind: ReduceKind) -> i64 {
    match kind {
        ReduceKind::Sum => 0,
        ReduceKind::Mean => 1,
        ReduceKind::Max => 2,
        ReduceKind::L2 => 3,
    }
}

/// The source's code for a pooling window.
pub fn pool_code(kind: PoolKind) -> i64 {
    match kind {
        PoolKind::Average { count_include_pad: false } => 0,
        PoolKind::Average { count_include_pad: true } => 1,
        PoolKind::Max => 2,
    }
}

/// The source's codes for a resize: (linear, coordinates).
pub fn resize_codes(mode: ResizeMode, coordinates: ResizeCoordinates) -> (i64, i64) {
    let linear = match mode {
        ResizeMode::Nearest => 0,
        ResizeMode::Linear => 1,
    };
    let coordinates = match coordinates {
        ResizeCoordinates::HalfPixel => 0,
        ResizeCoordinates::PytorchHalfPixel => 1,
        ResizeCoordinates::AlignCorners => 2,
        ResizeCoordinates::Asymmetric => 3,
    };
    (linear, coordinates)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::backend::cuda::probe::CUDA_MAJOR;

    #[test]
    fn strided_matches_the_sources_struct() {
        assert_eq!(std::mem::size_of::<Strided>(), 8 * (1 + 3 * MAX_RANK));
        assert!(SOURCE.contains(&format!("#define MAX_RANK {MAX_RANK}\n")));
        assert_eq!(dense_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(dense_strides(&[]), [0i64; 0]);
        assert!(Strided::new(&[1; MAX_RANK + 1], &[0; MAX_RANK + 1], &[0; MAX_RANK + 1]).is_none());
    }

    /// Loads NVRTC from `dir` by path, so that cudarc's later load by name finds it (the loader
    /// matches a loaded library's soname) and NVRTC finds its builtins library.
    fn preload_nvrtc(dir: &Path) {
        let builtins = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("SEGICL_NVRTC_DIR={}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(&format!("libnvrtc-builtins.so.{CUDA_MAJOR}.")) && !name.contains(".alt")
            });
        let nvrtc = dir.join(format!("libnvrtc.so.{CUDA_MAJOR}"));
        for path in builtins.chain([nvrtc]) {
            let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: loads a library by its NUL-terminated path and keeps it loaded.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            assert!(!handle.is_null(), "SEGICL_NVRTC_DIR: cannot load {}", path.display());
        }
    }

    /// Compiles the kernels with the real NVRTC (no GPU needed), so a mistake in the source
    /// fails here. Set SEGICL_NVRTC_DIR to the directory of libnvrtc.so.N and its builtins (pip's
    /// nvidia/cu13/lib, say): the test then fails on any problem. Unset, it runs when NVRTC is on
    /// the loader's path and otherwise says that it skipped.
    #[test]
    fn the_kernels_compile_with_nvrtc() {
        match std::env::var_os("SEGICL_NVRTC_DIR") {
            Some(dir) => preload_nvrtc(Path::new(&dir)),
            // SAFETY: only tries to load the library.
            None if unsafe { cudarc::nvrtc::sys::is_culib_present() } => {}
            None => {
                eprintln!("skipped: NVRTC not found; set SEGICL_NVRTC_DIR to compile the kernels");
                return;
            }
        }
        for precision in [Precision::F16, Precision::F32] {
            for arch in [None, Some("compute_87")] {
                let ptx = compile(precision, arch).unwrap_or_else(|e| match e {
                    CompileError::CompileError { log, .. } => {
                        panic!("{precision:?} {arch:?}:\n{}", log.to_string_lossy())
                    }
                    other => panic!("{precision:?} {arch:?}: {other}"),
                });
                let text = ptx.to_src();
                for kernel in Kernel::ALL {
                    assert!(text.contains(&format!(".entry {}(", kernel.name())), "{kernel:?} missing from the PTX");
                }
            }
        }
    }
}
