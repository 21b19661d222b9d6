//! The shim's flat C API (`shim.h`) as a table of function pointers, and safe wrappers over it.
//!
//! The table is the real shim's functions in a `tensorrt` build ([`ShimApi::linked`]) and a mock
//! in the tests, so everything above it (errors, buffer ownership, the plan cache) is tested
//! without TensorRT.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use super::library::Libraries;
use super::tensorrt_error as error;
use crate::error::Result;

/// `SEGICL_TRT_OK`.
const OK: i32 = 0;
/// `SEGICL_TRT_REFUSED`.
const REFUSED: i32 = 2;
/// `SEGICL_TRT_MAX_RANK`.
const MAX_RANK: usize = 8;

/// Opaque shim types.
#[repr(C)]
pub struct Handle {
    _private: [u8; 0],
}
/// A deserialized engine of the shim.
#[repr(C)]
pub struct EngineHandle {
    _private: [u8; 0],
}
/// An execution context of the shim.
#[repr(C)]
pub struct ContextHandle {
    _private: [u8; 0],
}

/// `createInferBuilder_INTERNAL` / `createInferRuntime_INTERNAL`.
pub type Factory = unsafe extern "C" fn(logger: *mut c_void, version: i32) -> *mut c_void;
/// `createNvOnnxParser_INTERNAL`.
pub type ParserFactory = unsafe extern "C" fn(network: *mut c_void, logger: *mut c_void, version: i32) -> *mut c_void;

/// `segicl_trt_blob`: bytes the shim owns until [`ShimApi::blob_free`].
#[repr(C)]
pub struct Blob {
    /// What the shim frees.
    pub owner: *mut c_void,
    /// The bytes.
    pub data: *const u8,
    /// How many.
    pub len: usize,
}

impl Blob {
    /// An empty blob for the shim to fill.
    pub const EMPTY: Blob = Blob { owner: std::ptr::null_mut(), data: std::ptr::null(), len: 0 };
}

/// The shim's functions (`shim.h` documents each).
#[allow(missing_docs)]
pub struct ShimApi {
    pub compiled_version: unsafe extern "C" fn() -> i32,
    pub compiled_for_rtx: unsafe extern "C" fn() -> i32,
    pub open: unsafe extern "C" fn(Factory, Factory, Option<ParserFactory>) -> *mut Handle,
    pub close: unsafe extern "C" fn(*mut Handle),
    pub take_messages: unsafe extern "C" fn(*mut Handle, *mut c_char, usize) -> usize,
    #[allow(clippy::type_complexity)]
    pub build: unsafe extern "C" fn(
        *mut Handle,
        *const c_void,
        usize,
        i32,
        usize,
        *const c_void,
        usize,
        *mut Blob,
        *mut Blob,
    ) -> i32,
    pub blob_free: unsafe extern "C" fn(*mut Blob),
    pub deserialize: unsafe extern "C" fn(*mut Handle, *const c_void, usize) -> *mut EngineHandle,
    pub engine_free: unsafe extern "C" fn(*mut EngineHandle),
    pub engine_tensor:
        unsafe extern "C" fn(*mut EngineHandle, *const c_char, *mut i32, *mut i64, *mut i32, *mut i32) -> i32,
    pub context_new: unsafe extern "C" fn(*mut EngineHandle) -> *mut ContextHandle,
    pub context_free: unsafe extern "C" fn(*mut ContextHandle),
    pub context_bind: unsafe extern "C" fn(*mut ContextHandle, *const c_char, *mut c_void) -> i32,
    pub context_enqueue: unsafe extern "C" fn(*mut ContextHandle, *mut c_void) -> i32,
}

#[cfg(feature = "tensorrt")]
mod linked {
    use super::*;

    extern "C" {
        fn segicl_trt_compiled_version() -> i32;
        fn segicl_trt_compiled_for_rtx() -> i32;
        fn segicl_trt_open(builder: Factory, runtime: Factory, parser: Option<ParserFactory>) -> *mut Handle;
        fn segicl_trt_close(trt: *mut Handle);
        fn segicl_trt_take_messages(trt: *mut Handle, buffer: *mut c_char, capacity: usize) -> usize;
        #[allow(clippy::too_many_arguments)]
        fn segicl_trt_build(
            trt: *mut Handle,
            onnx: *const c_void,
            onnx_len: usize,
            precision: i32,
            workspace: usize,
            timing: *const c_void,
            timing_len: usize,
            plan: *mut Blob,
            timing_out: *mut Blob,
        ) -> i32;
        fn segicl_trt_blob_free(blob: *mut Blob);
        fn segicl_trt_deserialize(trt: *mut Handle, plan: *const c_void, len: usize) -> *mut EngineHandle;
        fn segicl_trt_engine_free(engine: *mut EngineHandle);
        fn segicl_trt_engine_tensor(
            engine: *mut EngineHandle,
            name: *const c_char,
            io: *mut i32,
            dims: *mut i64,
            rank: *mut i32,
            data_type: *mut i32,
        ) -> i32;
        fn segicl_trt_context_new(engine: *mut EngineHandle) -> *mut ContextHandle;
        fn segicl_trt_context_free(context: *mut ContextHandle);
        fn segicl_trt_context_bind(context: *mut ContextHandle, name: *const c_char, address: *mut c_void) -> i32;
        fn segicl_trt_context_enqueue(context: *mut ContextHandle, stream: *mut c_void) -> i32;
    }

    /// The shim compiled into this build.
    pub static LINKED: ShimApi = ShimApi {
        compiled_version: segicl_trt_compiled_version,
        compiled_for_rtx: segicl_trt_compiled_for_rtx,
        open: segicl_trt_open,
        close: segicl_trt_close,
        take_messages: segicl_trt_take_messages,
        build: segicl_trt_build,
        blob_free: segicl_trt_blob_free,
        deserialize: segicl_trt_deserialize,
        engine_free: segicl_trt_engine_free,
        engine_tensor: segicl_trt_engine_tensor,
        context_new: segicl_trt_context_new,
        context_free: segicl_trt_context_free,
        context_bind: segicl_trt_context_bind,
        context_enqueue: segicl_trt_context_enqueue,
    };
}

impl ShimApi {
    /// The shim compiled into this build (`runtime/build.rs`).
    #[cfg(feature = "tensorrt")]
    pub fn linked() -> &'static ShimApi {
        &linked::LINKED
    }

    /// The TensorRT version the shim was compiled for, and whether it is TensorRT-RTX.
    pub fn compiled(&self) -> (super::library::Version, bool) {
        // SAFETY: both take nothing and return a constant.
        let (code, rtx) = unsafe { ((self.compiled_version)(), (self.compiled_for_rtx)() != 0) };
        (super::library::Version { major: code / 10000, minor: code / 100 % 100, patch: code % 100, build: 0 }, rtx)
    }
}

/// Precision of a plan's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanPrecision {
    /// f32 throughout (strongly typed).
    F32,
    /// f16 where TensorRT finds it faster (`kFP16`).
    F16,
    /// int8 from the graph's QDQ pairs, f16 elsewhere (`kINT8 | kFP16`).
    Int8,
}

impl PlanPrecision {
    /// `f32`, `f16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            PlanPrecision::F32 => "f32",
            PlanPrecision::F16 => "f16",
            PlanPrecision::Int8 => "int8",
        }
    }

    fn code(self) -> i32 {
        match self {
            PlanPrecision::F32 => 0,
            PlanPrecision::F16 => 1,
            PlanPrecision::Int8 => 2,
        }
    }
}

/// A plan TensorRT built, with the timing cache after the build and the warnings it logged.
#[derive(Debug)]
pub struct Built {
    /// The serialized plan.
    pub plan: Vec<u8>,
    /// The timing cache after the build (empty when TensorRT gave none).
    pub timing_cache: Vec<u8>,
    /// Warnings TensorRT logged while building.
    pub warnings: Vec<String>,
}

/// A shim handle over loaded TensorRT libraries.
pub struct Trt {
    api: &'static ShimApi,
    handle: *mut Handle,
    /// Kept loaded while the handle lives.
    libraries: Arc<Libraries>,
}

// SAFETY: the shim's handle may be used from several threads (its logger locks); the libraries
// are shared read-only.
unsafe impl Send for Trt {}
// SAFETY: as above.
unsafe impl Sync for Trt {}

impl Trt {
    /// A handle of `api` over the factories of `libraries`.
    pub fn open(api: &'static ShimApi, libraries: Arc<Libraries>) -> Result<Arc<Trt>> {
        // SAFETY: the factories are TensorRT's (or the tests' fakes), loaded and kept alive by
        // `libraries`, which the handle holds.
        let handle = unsafe {
            (api.open)(libraries.create_builder, libraries.create_runtime, libraries.create_parser.clone().ok())
        };
        if handle.is_null() {
            return Err(error("the TensorRT shim could not allocate its handle"));
        }
        Ok(Arc::new(Trt { api, handle, libraries }))
    }

    /// The loaded libraries.
    pub fn libraries(&self) -> &Libraries {
        &self.libraries
    }

    /// The warnings and errors logged since the last call, one per line.
    fn take_messages(&self) -> Vec<String> {
        // SAFETY: a null buffer asks for the length only.
        let len = unsafe { (self.api.take_messages)(self.handle, std::ptr::null_mut(), 0) };
        let mut buffer = vec![0u8; len + 1];
        // SAFETY: the buffer holds `len + 1` bytes, which the shim NUL-terminates.
        let written = unsafe { (self.api.take_messages)(self.handle, buffer.as_mut_ptr().cast(), buffer.len()) };
        buffer.truncate(written.min(len));
        String::from_utf8_lossy(&buffer).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
    }

    /// An error saying `what` failed, with the errors TensorRT logged (or all its messages).
    fn failure(&self, what: &str) -> crate::error::Error {
        let messages = self.take_messages();
        let errors: Vec<&str> = messages.iter().filter_map(|m| m.strip_prefix("error: ")).collect();
        let why = if errors.is_empty() { messages.join("; ") } else { errors.join("; ") };
        error(if why.is_empty() { what.to_string() } else { format!("{what}: {why}") })
    }

    /// Parses `onnx` and builds a plan in `precision`, starting from `timing_cache`.
    pub fn build(&self, onnx: &[u8], precision: PlanPrecision, workspace: usize, timing_cache: &[u8]) -> Result<Built> {
        if let Err(why) = &self.libraries.create_parser {
            return Err(error(why.clone()));
        }
        self.take_messages();
        let (mut plan, mut timing) = (Blob::EMPTY, Blob::EMPTY);
        let timing_ptr = if timing_cache.is_empty() { std::ptr::null() } else { timing_cache.as_ptr().cast() };
        // SAFETY: every pointer is valid for the length passed; the blobs are filled by the shim
        // and freed below.
        let status = unsafe {
            (self.api.build)(
                self.handle,
                onnx.as_ptr().cast(),
                onnx.len(),
                precision.code(),
                workspace,
                timing_ptr,
                timing_cache.len(),
                &mut plan,
                &mut timing,
            )
        };
        let take = |blob: &mut Blob| {
            let bytes = if blob.data.is_null() || blob.len == 0 {
                Vec::new()
            } else {
                // SAFETY: the shim's blob holds `len` bytes until it is freed.
                unsafe { std::slice::from_raw_parts(blob.data, blob.len) }.to_vec()
            };
            // SAFETY: frees what the shim allocated (a no-op on an empty blob).
            unsafe { (self.api.blob_free)(blob) };
            bytes
        };
        let (plan, timing_cache) = (take(&mut plan), take(&mut timing));
        match status {
            OK if !plan.is_empty() => {
                let warnings = self.take_messages().into_iter().map(|m| m.replacen("warning: ", "", 1)).collect();
                Ok(Built { plan, timing_cache, warnings })
            }
            REFUSED => Err(self.failure("TensorRT refused the graph")),
            _ => Err(self.failure("TensorRT could not build a plan")),
        }
    }

    /// Deserializes `plan` for this GPU and TensorRT.
    pub fn deserialize(self: &Arc<Self>, plan: &[u8]) -> Result<TrtEngine> {
        self.take_messages();
        // SAFETY: `plan` is valid for its length; the shim copies what it keeps.
        let handle = unsafe { (self.api.deserialize)(self.handle, plan.as_ptr().cast(), plan.len()) };
        if handle.is_null() {
            return Err(self.failure("TensorRT refused the plan"));
        }
        Ok(TrtEngine { trt: self.clone(), handle })
    }
}

impl Drop for Trt {
    fn drop(&mut self) {
        // SAFETY: the handle is ours; every engine holds an `Arc` of this, so none outlives it.
        unsafe { (self.api.close)(self.handle) }
    }
}

/// One I/O tensor of a deserialized plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// An input (else an output).
    pub input: bool,
    /// Its static shape (`-1` for a dynamic dimension).
    pub shape: Vec<i64>,
    /// TensorRT's `DataType` (0 is `kFLOAT`).
    pub data_type: i32,
}

/// A deserialized plan.
pub struct TrtEngine {
    trt: Arc<Trt>,
    handle: *mut EngineHandle,
}

// SAFETY: TensorRT engines may be shared between threads; contexts are created per session.
unsafe impl Send for TrtEngine {}
// SAFETY: as above.
unsafe impl Sync for TrtEngine {}

impl TrtEngine {
    /// The I/O tensor called `name`, or `None` when the plan has none.
    pub fn tensor(&self, name: &str) -> Result<Option<TensorInfo>> {
        let name = CString::new(name).map_err(|_| error(format!("tensor name `{name}` holds a NUL byte")))?;
        let (mut io, mut dims, mut rank, mut data_type) = (0, [0i64; MAX_RANK], 0, 0);
        // SAFETY: `dims` holds MAX_RANK values, the shim writes at most that many.
        let status = unsafe {
            (self.trt.api.engine_tensor)(
                self.handle,
                name.as_ptr(),
                &mut io,
                dims.as_mut_ptr(),
                &mut rank,
                &mut data_type,
            )
        };
        match status {
            OK => Ok(Some(TensorInfo {
                input: io == 1,
                shape: dims[..rank.clamp(0, MAX_RANK as i32) as usize].to_vec(),
                data_type,
            })),
            REFUSED => Ok(None),
            _ => Err(self.trt.failure("reading the plan's tensors")),
        }
    }

    /// An execution context (one per session).
    pub fn context(self: &Arc<Self>) -> Result<TrtContext> {
        // SAFETY: the context holds the engine, which outlives it.
        let handle = unsafe { (self.trt.api.context_new)(self.handle) };
        if handle.is_null() {
            return Err(self.trt.failure("creating an execution context"));
        }
        Ok(TrtContext { engine: self.clone(), handle })
    }
}

impl Drop for TrtEngine {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and every context holds an `Arc` of `self`, so none is left.
        unsafe { (self.trt.api.engine_free)(self.handle) }
    }
}

/// An execution context of a plan: the tensors' addresses and the launches.
pub struct TrtContext {
    engine: Arc<TrtEngine>,
    handle: *mut ContextHandle,
}

// SAFETY: a context is used by one thread at a time (`&mut self`).
unsafe impl Send for TrtContext {}

impl TrtContext {
    /// Sets the device address of the I/O tensor `name`.
    ///
    /// # Safety
    /// `address` must stay a device allocation of the tensor's size while the context runs.
    pub unsafe fn bind(&mut self, name: &str, address: *mut c_void) -> Result<()> {
        let c_name = CString::new(name).map_err(|_| error(format!("tensor name `{name}` holds a NUL byte")))?;
        // SAFETY: per the caller's contract.
        match unsafe { (self.engine.trt.api.context_bind)(self.handle, c_name.as_ptr(), address) } {
            OK => Ok(()),
            _ => Err(self.engine.trt.failure(&format!("binding tensor `{name}`"))),
        }
    }

    /// Queues the plan on the CUDA stream `stream`.
    ///
    /// # Safety
    /// `stream` must be a live CUDA stream of the context's device, and every tensor bound.
    pub unsafe fn enqueue(&mut self, stream: *mut c_void) -> Result<()> {
        // SAFETY: per the caller's contract.
        match unsafe { (self.engine.trt.api.context_enqueue)(self.handle, stream) } {
            OK => Ok(()),
            _ => Err(self.engine.trt.failure("enqueueV3")),
        }
    }
}

impl Drop for TrtContext {
    fn drop(&mut self) {
        // SAFETY: the handle is ours.
        unsafe { (self.engine.trt.api.context_free)(self.handle) }
    }
}
