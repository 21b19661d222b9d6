//! The C ABI of segicl: `libsegicl.so` / `libsegicl.a`, described by the generated `segicl.h`.
//!
//! Conventions: opaque handles (`SegiclEngine`, `SegiclSession`); every function that can fail
//! returns a [`SegiclStatus`] and leaves a message for [`segicl_last_error`] (per thread);
//! out-parameters are written only on success; every `_free` accepts NULL; no panic crosses the
//! boundary (each entry point catches unwinds and returns `SEGICL_ERR_INTERNAL`).
//!
//! Threads: an engine is read-only once open and may be shared by any number of threads; a
//! session belongs to one thread at a time (it may move between threads, but two threads must
//! not call into the same session at once).

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};

use segicl::{
    BackendChoice, BoxRule, Engine, EngineOptions, Error, ImageView, MaskMut, PixelFormat, RefineOptions, Refiner,
    RoiOptions, Session,
};

/// ABI version: bumped on any incompatible change of the functions or structs below.
pub const SEGICL_ABI_VERSION: u32 = 2;

/// Result of a call. Codes are never reused.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegiclStatus {
    /// Success.
    SEGICL_OK = 0,
    /// A pointer, size, stride, slot, format or option is wrong.
    SEGICL_ERR_INVALID_ARGUMENT,
    /// A file could not be read.
    SEGICL_ERR_IO,
    /// The engine file is damaged, not an engine, or its graphs break the manifest.
    SEGICL_ERR_CORRUPT_ENGINE,
    /// Asked for something this build or this engine does not support.
    SEGICL_ERR_UNSUPPORTED,
    /// Segment called before any shot was set.
    SEGICL_ERR_NO_SHOTS,
    /// The backend failed or is not available here.
    SEGICL_ERR_BACKEND,
    /// A bug: a panic was caught at the boundary.
    SEGICL_ERR_INTERNAL,
    /// A graph produced NaN or infinite values (damaged or overflowing weights); no mask or shot
    /// was kept.
    SEGICL_ERR_NON_FINITE,
}
use SegiclStatus::*;

/// Pixel layout of a [`SegiclImage`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegiclPixelFormat {
    /// One byte per pixel.
    SEGICL_PIXEL_GRAY8 = 0,
    /// One native-endian 16-bit sample per pixel.
    SEGICL_PIXEL_GRAY16,
    /// Red, green, blue bytes.
    SEGICL_PIXEL_RGB8,
    /// Blue, green, red bytes.
    SEGICL_PIXEL_BGR8,
    /// Red, green, blue, alpha bytes (alpha ignored).
    SEGICL_PIXEL_RGBA8,
}

/// Backend to run on.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegiclBackend {
    /// The best one that runs the engine: TensorRT or CUDA (when built and present), then the
    /// native CPU executor, then tract (engines whose ops the native executor lacks).
    SEGICL_BACKEND_AUTO = 0,
    /// The native CPU executor (float and int8 engines whose graphs it lowers; others:
    /// SEGICL_ERR_BACKEND).
    SEGICL_BACKEND_CPU,
    /// An NVIDIA GPU through CUDA (not in this build: SEGICL_ERR_BACKEND).
    SEGICL_BACKEND_CUDA,
    /// An NVIDIA GPU through TensorRT: plans built on the device at first open and cached (a
    /// build without it, or a device without TensorRT 10.3+: SEGICL_ERR_BACKEND).
    SEGICL_BACKEND_TENSORRT,
    /// tract on the CPU (the reference): every engine whose ops tract knows.
    SEGICL_BACKEND_TRACT,
}

/// A caller-owned image: `height` rows of `width` pixels, rows `stride_bytes` apart, in a
/// buffer of `data_len` readable bytes (at least `stride_bytes × (height − 1) + width × bytes
/// per pixel`; the library checks it and reads nothing past it).
#[repr(C)]
pub struct SegiclImage {
    /// First byte of the first row.
    pub data: *const u8,
    /// Bytes readable from `data`.
    pub data_len: usize,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes from one row to the next (at least width × bytes per pixel).
    pub stride_bytes: u32,
    /// Pixel layout.
    pub format: SegiclPixelFormat,
}

/// A caller-owned mask the size of the frame, in a buffer of `data_len` writable bytes (at
/// least `stride_bytes × (height − 1) + width`); written as 0 (background) or 255 (foreground),
/// and nothing past `data_len` or between rows is touched.
#[repr(C)]
pub struct SegiclMask {
    /// First byte of the first row.
    pub data: *mut u8,
    /// Bytes writable from `data`.
    pub data_len: usize,
    /// Width in pixels (must equal the frame's).
    pub width: u32,
    /// Height in pixels (must equal the frame's).
    pub height: u32,
    /// Bytes from one row to the next (at least width).
    pub stride_bytes: u32,
}

/// [`SegiclOptions::refine_box_rule`]: the box surrounds the largest 8-connected blob of the
/// first pass's mask (ignores stray specks).
pub const SEGICL_BOX_LARGEST_BLOB: u32 = 0;

/// [`SegiclOptions::refine_box_rule`]: the box surrounds every foreground pixel of the first
/// pass's mask (for a target the first pass splits into several blobs).
pub const SEGICL_BOX_ALL_BLOBS: u32 = 1;

/// [`SegiclOptions::refine_box_rule`]: a box per blob of the first pass's mask (up to 8, each at
/// least a tenth of the largest), for targets of several objects (nuclei, glands, cells).
pub const SEGICL_BOX_EACH_BLOB: u32 = 2;

/// Options of [`segicl_engine_open`]; start from [`segicl_options_default`].
///
/// The struct only grows, at the end; `struct_size` says which version the caller compiled:
/// 20 (version 1: `struct_size` … `roi`; the later fields take their defaults) or
/// `sizeof(SegiclOptions)` of this header. The fields after `roi` are ordered so that the struct
/// has no padding on 32- and 64-bit targets.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SegiclOptions {
    /// `sizeof(SegiclOptions)` as the caller compiled it.
    pub struct_size: u32,
    /// Backend to run on.
    pub backend: SegiclBackend,
    /// CPU threads for the graphs (0 means 1).
    pub threads: u32,
    /// Probability threshold of the masks, strictly between 0 and 1; 0 means the engine's.
    pub threshold: f32,
    /// Two-pass ROI refinement for small structures (optic disc, cup): 1 on (margin 0.5 of the
    /// predicted box's larger side, crops of at least 64 pixels; a frame costs two passes), 0 off.
    pub roi: u32,
    /// The box the refiner is prompted with: [`SEGICL_BOX_LARGEST_BLOB`] (0, default) or
    /// [`SEGICL_BOX_ALL_BLOBS`] (1) or [`SEGICL_BOX_EACH_BLOB`] (2). With the gate on, the rule
    /// tried first.
    pub refine_box_rule: u32,
    /// Path of a refiner file (a pretrained promptable segmenter, e.g. LiteMedSAM), opened by
    /// [`segicl_engine_open`] with the same backend and threads (a refiner runs on the CPU: the
    /// CUDA backend is refused); every session of the engine then redraws its masks' boundaries
    /// from a box around them. NULL (default): no refinement. Read only during the call.
    pub refiner_path: *const c_char,
    /// Margin added around the box on each side, as a fraction 0..=1 of its width and height;
    /// negative (default -1): the refiner's own margin.
    pub refine_margin: f32,
    /// 1 (default): per task, choose the box rule and margin on the shots, or skip refinement
    /// where it does not beat the first pass on them (needs two or three distinct shots; costs a
    /// refinement per shot and candidate when the shots change); 0: always refine with
    /// `refine_box_rule` and `refine_margin`.
    pub refine_gate: u32,
}

/// [`SegiclImage`] as this library reads it: the enum as the integer the caller stored, so that
/// an out-of-range value is an error instead of undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawImage {
    data: *const u8,
    data_len: usize,
    width: u32,
    height: u32,
    stride_bytes: u32,
    format: u32,
}

/// The first version of [`SegiclOptions`] (`struct_size` 20), as this library reads it (see
/// [`RawImage`]).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawOptionsV1 {
    struct_size: u32,
    backend: u32,
    threads: u32,
    threshold: f32,
    roi: u32,
}

/// [`SegiclOptions`] as this library reads it: version 1, then the refinement fields.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawOptions {
    v1: RawOptionsV1,
    refine_box_rule: u32,
    refiner_path: *const c_char,
    refine_margin: f32,
    refine_gate: u32,
}

/// `struct_size` of version 1 of [`SegiclOptions`].
const OPTIONS_V1_SIZE: usize = 20;

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<RawImage>() == size_of::<SegiclImage>() && align_of::<RawImage>() == align_of::<SegiclImage>());
    assert!(size_of::<RawOptionsV1>() == OPTIONS_V1_SIZE);
    assert!(
        size_of::<RawOptions>() == size_of::<SegiclOptions>()
            && align_of::<RawOptions>() == align_of::<SegiclOptions>()
    );
    assert!(offset_of!(SegiclOptions, roi) == offset_of!(RawOptionsV1, roi));
    assert!(offset_of!(SegiclOptions, refine_box_rule) == OPTIONS_V1_SIZE);
    assert!(offset_of!(SegiclOptions, refine_box_rule) == offset_of!(RawOptions, refine_box_rule));
    assert!(offset_of!(SegiclOptions, refiner_path) == offset_of!(RawOptions, refiner_path));
    assert!(offset_of!(SegiclOptions, refine_margin) == offset_of!(RawOptions, refine_margin));
    assert!(offset_of!(SegiclOptions, refine_gate) == offset_of!(RawOptions, refine_gate));
    // No padding anywhere: every byte of the struct is a field.
    assert!(size_of::<SegiclOptions>() == OPTIONS_V1_SIZE + 12 + size_of::<*const c_char>());
    assert!(size_of::<SegiclPixelFormat>() == 4 && size_of::<SegiclBackend>() == 4);
};

/// An open engine (opaque). Shareable between threads.
pub struct SegiclEngine {
    engine: Engine,
    threshold: Option<f32>,
    roi: Option<RoiOptions>,
    refine: Option<(Refiner, RefineOptions)>,
}

/// A session (opaque): one stream's context and buffers.
pub struct SegiclSession {
    session: Session,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Empties the last error; allocates only when it held a message (the success path of the
/// per-frame calls allocates nothing).
fn clear_last_error() {
    LAST_ERROR.with(|e| {
        if !e.borrow().as_bytes().is_empty() {
            *e.borrow_mut() = CString::default();
        }
    });
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// A failure: its status and the message for `segicl_last_error`.
struct Failure(SegiclStatus, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Io { .. } => SEGICL_ERR_IO,
            Error::Corrupt { .. } | Error::NotAnEngine { .. } | Error::Contract { .. } => SEGICL_ERR_CORRUPT_ENGINE,
            Error::UnsupportedVersion { .. } => SEGICL_ERR_UNSUPPORTED,
            Error::InvalidArgument(_) => SEGICL_ERR_INVALID_ARGUMENT,
            Error::NoShots => SEGICL_ERR_NO_SHOTS,
            Error::Backend { .. } => SEGICL_ERR_BACKEND,
            Error::NonFinite { .. } => SEGICL_ERR_NON_FINITE,
        };
        Failure(status, e.to_string())
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure(SEGICL_ERR_INVALID_ARGUMENT, message.into())
}

/// Runs `body`, catching panics; records the message of any failure and returns the status.
fn boundary(body: impl FnOnce() -> Result<(), Failure>) -> SegiclStatus {
    match segicl::guard::no_panic(body) {
        Ok(Ok(())) => {
            clear_last_error();
            SEGICL_OK
        }
        Ok(Err(Failure(status, message))) => {
            set_last_error(&message);
            status
        }
        Err(panic) => {
            set_last_error(&format!("internal error (please report): {panic}"));
            SEGICL_ERR_INTERNAL
        }
    }
}

/// `ptr` as a reference, or an invalid-argument failure naming `what`.
///
/// # Safety
/// `ptr` is NULL or points to a live, properly aligned `T`.
unsafe fn arg<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    unsafe { ptr.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// `ptr` as a mutable reference, or an invalid-argument failure naming `what`.
///
/// # Safety
/// `ptr` is NULL or points to a live, properly aligned `T` nobody else uses during the call.
unsafe fn arg_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    unsafe { ptr.as_mut() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| invalid(format!("{what} is not UTF-8")))
}

/// A NUL-terminated path argument: any bytes on Unix (paths need not be UTF-8), UTF-8 elsewhere.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
unsafe fn path_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a std::path::Path, Failure> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    #[cfg(unix)]
    return Ok(std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes)));
    #[cfg(not(unix))]
    std::str::from_utf8(bytes).map(std::path::Path::new).map_err(|_| invalid(format!("{what} is not UTF-8")))
}

/// A view over a caller's image, after checking every field.
///
/// # Safety
/// `image` is NULL or points to a `SegiclImage` whose `data` is NULL or points to `data_len`
/// readable bytes.
unsafe fn image_view<'a>(image: *const SegiclImage, what: &str) -> Result<ImageView<'a>, Failure> {
    let image = unsafe { arg(image.cast::<RawImage>(), what) }?;
    let format = match image.format {
        0 => PixelFormat::Gray8,
        1 => PixelFormat::Gray16,
        2 => PixelFormat::Rgb8,
        3 => PixelFormat::Bgr8,
        4 => PixelFormat::Rgba8,
        other => return Err(invalid(format!("{what}: pixel format {other} is not one of SEGICL_PIXEL_*"))),
    };
    if image.data.is_null() {
        return Err(invalid(format!("{what}: data is NULL")));
    }
    let (w, h, stride) = (image.width as usize, image.height as usize, image.stride_bytes as usize);
    if w == 0 || h == 0 {
        return Err(invalid(format!("{what} is {w}×{h}: both sides must be at least 1 pixel")));
    }
    let Some(row) = w.checked_mul(format.bytes_per_pixel()) else {
        return Err(invalid(format!("{what}: a row of {w} pixels does not fit in memory")));
    };
    if stride < row {
        return Err(invalid(format!("{what}: stride {stride} is smaller than a row of {w} pixels ({row} bytes)")));
    }
    let len = extent(stride, h, row, image.data_len, what)?;
    // SAFETY: the caller promises `data_len` readable bytes at `data`, and `len` ≤ `data_len`.
    let bytes = unsafe { std::slice::from_raw_parts(image.data, len) };
    ImageView::new(bytes, w, h, stride, format).map_err(|e| Failure::from(e).with_context(what))
}

/// Bytes spanned by `height` rows of `row` bytes, `stride` apart, checked against the caller's
/// `data_len` and against the largest slice there can be.
fn extent(stride: usize, height: usize, row: usize, data_len: usize, what: &str) -> Result<usize, Failure> {
    let len = stride.checked_mul(height - 1).and_then(|n| n.checked_add(row)).filter(|&n| n <= isize::MAX as usize);
    let Some(len) = len else {
        return Err(invalid(format!("{what}: {height} rows of stride {stride} do not fit in memory")));
    };
    if len > data_len {
        return Err(invalid(format!(
            "{what}: data_len {data_len} is smaller than the {len} bytes its size and stride span"
        )));
    }
    Ok(len)
}

impl Failure {
    fn with_context(self, what: &str) -> Failure {
        Failure(self.0, format!("{what}: {}", self.1))
    }
}

/// The ABI version this library implements; firmware should refuse a mismatch.
#[no_mangle]
pub extern "C" fn segicl_abi_version() -> u32 {
    SEGICL_ABI_VERSION
}

/// The library version, e.g. "0.1.0" (static storage).
#[no_mangle]
pub extern "C" fn segicl_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The refinement fields of [`segicl_options_default`], after the version-1 fields `v1`.
fn with_refine_defaults(v1: RawOptionsV1) -> RawOptions {
    RawOptions {
        v1,
        refine_box_rule: SEGICL_BOX_LARGEST_BLOB,
        refiner_path: std::ptr::null(),
        refine_margin: -1.0,
        refine_gate: 1,
    }
}

fn default_options() -> RawOptions {
    with_refine_defaults(RawOptionsV1 {
        struct_size: std::mem::size_of::<SegiclOptions>() as u32,
        backend: SegiclBackend::SEGICL_BACKEND_AUTO as u32,
        threads: 1,
        threshold: 0.0,
        roi: 0,
    })
}

/// Default options: auto backend, 1 thread, the engine's threshold, no ROI, no refiner (and,
/// for when one is set: the largest blob's box, the refiner's margin, the gate on).
#[no_mangle]
pub extern "C" fn segicl_options_default() -> SegiclOptions {
    let d = default_options();
    SegiclOptions {
        struct_size: d.v1.struct_size,
        backend: SegiclBackend::SEGICL_BACKEND_AUTO,
        threads: d.v1.threads,
        threshold: d.v1.threshold,
        roi: d.v1.roi,
        refine_box_rule: d.refine_box_rule,
        refiner_path: d.refiner_path,
        refine_margin: d.refine_margin,
        refine_gate: d.refine_gate,
    }
}

/// Opens, verifies and prepares the engine file at `path`, and the refiner file at
/// `opts->refiner_path` if set; `opts` NULL means defaults. On success writes the engine to
/// `*out` (free it with [`segicl_engine_free`]). A refiner that cannot be opened fails the call
/// (`SEGICL_ERR_IO`, `SEGICL_ERR_CORRUPT_ENGINE`, …) with a message naming its file.
///
/// # Safety
/// `path` is a NUL-terminated string; `opts` is NULL or points to a `SegiclOptions` of at least
/// its `struct_size` bytes whose `refiner_path` is NULL or a NUL-terminated string; `out` is a
/// writable pointer.
#[no_mangle]
pub unsafe extern "C" fn segicl_engine_open(
    path: *const c_char,
    opts: *const SegiclOptions,
    out: *mut *mut SegiclEngine,
) -> SegiclStatus {
    boundary(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let path = unsafe { path_arg(path, "path") }?;
        let opts = if opts.is_null() { default_options() } else { unsafe { read_options(opts) }? };
        let backend = match opts.v1.backend {
            0 => BackendChoice::Auto,
            1 => BackendChoice::Cpu,
            2 => BackendChoice::Cuda,
            3 => BackendChoice::TensorRt,
            4 => BackendChoice::Tract,
            other => return Err(invalid(format!("backend {other} is not one of SEGICL_BACKEND_*"))),
        };
        let roi = match opts.v1.roi {
            0 => None,
            1 => Some(RoiOptions::default()),
            other => return Err(invalid(format!("roi {other} is neither 0 (off) nor 1 (on)"))),
        };
        let t = opts.v1.threshold;
        let threshold = if t == 0.0 {
            None
        } else if t > 0.0 && t < 1.0 {
            Some(t)
        } else {
            return Err(invalid(format!("threshold {t} is not 0 (engine default) or strictly between 0 and 1")));
        };
        let refine_options = refine_options(&opts)?;
        let refiner_path = if opts.refiner_path.is_null() {
            None
        } else {
            Some(unsafe { path_arg(opts.refiner_path, "refiner_path") }?)
        };
        install_logger();
        let options = EngineOptions { backend, threads: (opts.v1.threads as usize).max(1) };
        let engine = Engine::open(path, &options)?;
        let refine = match refiner_path {
            None => None,
            Some(file) => {
                let refiner = Refiner::open(file, &options).map_err(|e| refiner_failure(file, e))?;
                Some((refiner, refine_options))
            }
        };
        unsafe { out.write(Box::into_raw(Box::new(SegiclEngine { engine, threshold, roi, refine }))) };
        Ok(())
    })
}

/// The refinement fields of `opts` as [`RefineOptions`], checked whether or not a refiner is set.
fn refine_options(opts: &RawOptions) -> Result<RefineOptions, Failure> {
    let rule = match opts.refine_box_rule {
        SEGICL_BOX_LARGEST_BLOB => BoxRule::LargestBlob,
        SEGICL_BOX_ALL_BLOBS => BoxRule::AllBlobs,
        SEGICL_BOX_EACH_BLOB => BoxRule::EachBlob,
        other => {
            return Err(invalid(format!(
                "refine_box_rule {other} is not 0 (SEGICL_BOX_LARGEST_BLOB), 1 (SEGICL_BOX_ALL_BLOBS) or 2 \
                 (SEGICL_BOX_EACH_BLOB)"
            )))
        }
    };
    let gate = match opts.refine_gate {
        0 => false,
        1 => true,
        other => return Err(invalid(format!("refine_gate {other} is neither 0 (always refine) nor 1 (gate on)"))),
    };
    let m = opts.refine_margin;
    let margin = if m < 0.0 { None } else { Some(m) };
    let options = RefineOptions { rule, margin, gate, ..RefineOptions::default() };
    options.check()?;
    Ok(options)
}

/// A failure to open the refiner at `path`, its message naming the file.
fn refiner_failure(path: &std::path::Path, e: Error) -> Failure {
    let Failure(status, message) = Failure::from(e);
    let path = path.display().to_string();
    let path = path.as_str();
    let message = match message.strip_prefix(path) {
        Some(rest) => format!("refiner {path}{rest}"),
        None => format!("refiner {path}: {message}"),
    };
    Failure(status, message)
}

/// Reads the caller's options: version 1 (`struct_size` 20, the later fields take their
/// defaults) or this version; any other size is refused.
///
/// # Safety
/// `opts` points to at least `struct_size` readable bytes laid out as `SegiclOptions`.
unsafe fn read_options(opts: *const SegiclOptions) -> Result<RawOptions, Failure> {
    let size = unsafe { opts.cast::<u32>().read_unaligned() } as usize;
    let current = std::mem::size_of::<SegiclOptions>();
    if size == current {
        Ok(unsafe { opts.cast::<RawOptions>().read_unaligned() })
    } else if size == OPTIONS_V1_SIZE {
        Ok(with_refine_defaults(unsafe { opts.cast::<RawOptionsV1>().read_unaligned() }))
    } else {
        Err(invalid(format!(
            "options.struct_size is {size}, not a size this library knows: {OPTIONS_V1_SIZE} (version 1) or \
             {current} (this version); start from segicl_options_default()"
        )))
    }
}

/// Frees an engine; NULL is a no-op. Free its sessions first.
///
/// # Safety
/// `engine` is NULL or came from [`segicl_engine_open`] and was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn segicl_engine_free(engine: *mut SegiclEngine) {
    if !engine.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(engine) })));
    }
}

/// Creates a session on `engine`; writes it to `*out` (free it with [`segicl_session_free`]).
///
/// # Safety
/// `engine` is NULL or a live engine; `out` is a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn segicl_session_new(engine: *const SegiclEngine, out: *mut *mut SegiclSession) -> SegiclStatus {
    boundary(|| {
        let engine = unsafe { arg(engine, "engine") }?;
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let mut session = engine.engine.session()?;
        if let Some(t) = engine.threshold {
            session.set_threshold(t)?;
        }
        session.set_roi(engine.roi)?;
        session.set_refiner(engine.refine.as_ref().map(|(refiner, options)| (refiner, *options)))?;
        unsafe { out.write(Box::into_raw(Box::new(SegiclSession { session }))) };
        Ok(())
    })
}

/// Frees a session; NULL is a no-op.
///
/// # Safety
/// `session` is NULL or came from [`segicl_session_new`] and was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn segicl_session_free(session: *mut SegiclSession) {
    if !session.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(session) })));
    }
}

/// Sets shot `slot` (0..2) from an image and its GRAY8 mask of the same size (≥128 is
/// foreground). Setting the same shot again costs only a hash.
///
/// # Safety
/// `s` is NULL or a live session; `image` and `mask` are NULL or images whose `data` is NULL or
/// points to `data_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn segicl_set_shot(
    s: *mut SegiclSession,
    slot: u32,
    image: *const SegiclImage,
    mask: *const SegiclImage,
) -> SegiclStatus {
    boundary(|| {
        let s = unsafe { arg_mut(s, "session") }?;
        let image = unsafe { image_view(image, "image") }?;
        let mask = unsafe { image_view(mask, "mask") }?;
        s.session.set_shot(slot as usize, &image, &mask)?;
        Ok(())
    })
}

/// Empties shot `slot` (0..2); clearing an empty slot is not an error.
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn segicl_clear_shot(s: *mut SegiclSession, slot: u32) -> SegiclStatus {
    boundary(|| {
        let s = unsafe { arg_mut(s, "session") }?;
        s.session.clear_shot(slot as usize)?;
        Ok(())
    })
}

/// Replaces the context with the engine's default shots for `task`.
///
/// # Safety
/// `s` is NULL or a live session; `task` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn segicl_use_default_shots(s: *mut SegiclSession, task: *const c_char) -> SegiclStatus {
    boundary(|| {
        let s = unsafe { arg_mut(s, "session") }?;
        let task = unsafe { text(task, "task") }?;
        s.session.use_default_shots(task)?;
        Ok(())
    })
}

/// Segments `frame` with the session's shots into `out`, which must have the frame's size.
///
/// # Safety
/// `s` is NULL or a live session; `frame` is NULL or a valid image; `out` is NULL or a mask whose
/// `data` is NULL or points to `data_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn segicl_segment(
    s: *mut SegiclSession,
    frame: *const SegiclImage,
    out: *mut SegiclMask,
) -> SegiclStatus {
    boundary(|| {
        let s = unsafe { arg_mut(s, "session") }?;
        let frame = unsafe { image_view(frame, "frame") }?;
        let out = unsafe { arg(out, "out") }?;
        if out.data.is_null() {
            return Err(invalid("out: data is NULL"));
        }
        let (w, h, stride) = (out.width as usize, out.height as usize, out.stride_bytes as usize);
        if (w, h) != (frame.width(), frame.height()) {
            return Err(invalid(format!("out mask is {w}×{h} but the frame is {}×{}", frame.width(), frame.height())));
        }
        if stride < w {
            return Err(invalid(format!("out: stride {stride} is smaller than its width {w}")));
        }
        let len = extent(stride, h, w, out.data_len, "out")?;
        // SAFETY: the caller promises `data_len` writable bytes at `data`, and `len` ≤ `data_len`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(out.data, len) };
        let mut mask = MaskMut::new(bytes, w, h, stride)?;
        s.session.segment(&frame, &mut mask)?;
        Ok(())
    })
}

/// This thread's last failure message; "" after a success. Valid until this thread's next call.
#[no_mangle]
pub extern "C" fn segicl_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A log callback: level (1 error … 5 trace), a NUL-terminated message, the user pointer.
pub type SegiclLogCallback = Option<unsafe extern "C" fn(level: c_int, msg: *const c_char, user: *mut c_void)>;

struct Sink {
    callback: SegiclLogCallback,
    user: usize,
}

static SINK: Mutex<Sink> = Mutex::new(Sink { callback: None, user: 0 });
static INSTALL: Once = Once::new();

struct CallbackLogger;

impl log::Log for CallbackLogger {
    /// Info and above from segicl itself; warnings and errors from its dependencies.
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        let floor = if metadata.target().starts_with("segicl") { log::Level::Info } else { log::Level::Warn };
        metadata.level() <= floor
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("{}: {}", record.target(), record.args());
        // Copy the sink out so that a callback may call back into the library.
        let (callback, user) = {
            let sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
            (sink.callback, sink.user)
        };
        match callback {
            Some(cb) => {
                let msg = CString::new(line.replace('\0', " ")).unwrap_or_default();
                // SAFETY: the caller registered `cb` with `user` for exactly this use.
                unsafe { cb(record.level() as c_int, msg.as_ptr(), user as *mut c_void) };
            }
            None => eprintln!("segicl {}: {line}", record.level()),
        }
    }

    fn flush(&self) {}
}

/// Routes the `log` crate to [`CallbackLogger`] once per process (unless the host already
/// installed a logger).
fn install_logger() {
    INSTALL.call_once(|| {
        if log::set_logger(&CallbackLogger).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// Sends the library's log lines (info and above; warnings and above from its dependencies) to
/// `cb` with `user`; NULL sends them to stderr. The callback may be called from any thread that
/// calls into the library, and may itself call into the library.
///
/// # Safety
/// `cb`, if not NULL, stays callable with `user` until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn segicl_set_log_callback(cb: SegiclLogCallback, user: *mut c_void) {
    let _ = catch_unwind(|| {
        install_logger();
        let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        *sink = Sink { callback: cb, user: user as usize };
    });
}
