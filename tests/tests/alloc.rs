//! Allocations on the hot path (one frame, context cached), counted by a global allocator.
//!
//! segicl's own stages (pre-processing, context cache, ROI crops, post-processing) and the native
//! CPU executor (the default backend for the bundled engines, int8 included) allocate nothing: a
//! whole frame makes no allocation after warm-up. tract (`--backend tract`, and the refiner)
//! allocates each op's output tensor on every run: those allocations must not grow from frame to
//! frame, and must all be freed by the end of the frame (nothing retained). With `threads` > 1
//! the native executor's worker threads (named `segicl-cpu-N`) allocate nothing per frame either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use segicl::cache::ContextCache;
use segicl::postprocess::logits_to_mask;
use segicl::preprocess::Preprocessor;
use segicl::roi::{logits_box, mask_box};
use segicl::{BackendChoice, Engine, EngineOptions, ImageView, MaskMut, PixelFormat, RoiOptions};
use segicl_eval::synthetic::Task;
use segicl_tests::{prototype, prototype_path, reference, reference_path, sample, set_shots};

/// Counts allocations (and live bytes) made by threads that armed it, per thread, so that tests
/// running side by side do not count each other's.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

/// Allocations made by the native executor's worker threads, armed or not (only the test of
/// several threads starts any).
static WORKER_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread is one of the native executor's workers, once known.
    static WORKER: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether this thread is a native executor worker (by its name, looked up once).
fn is_worker() -> bool {
    WORKER.with(|w| {
        w.get().unwrap_or_else(|| {
            w.set(Some(false)); // in case the lookup allocates: no recursion
            let worker = std::thread::current().name().is_some_and(|n| n.starts_with("segicl-cpu-"));
            w.set(Some(worker));
            worker
        })
    })
}

/// Adds one allocation (if `new`) and `bytes` live bytes when this thread is armed; counts a
/// worker thread's allocations in [`WORKER_ALLOCATIONS`].
fn record(new: bool, bytes: isize) {
    if ARMED.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + new as usize));
        LIVE_BYTES.with(|b| b.set(b.get() + bytes));
    } else if new && is_worker() {
        WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(true, layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(false, -(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(true, new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting armed on this thread; returns its result, allocations and net bytes.
fn count<R>(f: impl FnOnce() -> R) -> (R, usize, isize) {
    let (n0, b0) = (ALLOCATIONS.with(Cell::get), LIVE_BYTES.with(Cell::get));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, ALLOCATIONS.with(Cell::get) - n0, LIVE_BYTES.with(Cell::get) - b0)
}

#[test]
fn segicl_stages_allocate_nothing() {
    let engine = prototype();
    let m = engine.manifest();
    let pre = Preprocessor::from_manifest(m);
    let r = m.resolution;
    let mut input = vec![0.0; pre.image_len()];
    let mut mask_in = vec![0.0; r * r];
    let logits: Vec<f32> = (0..r * r).map(|i| (i % 7) as f32 - 3.0).collect();
    let mut cache = ContextCache::new(m.tokens_per_shot, m.token_width);
    let tokens = vec![0.5; m.tokens_per_shot * m.token_width];
    for task in [Task::UsLesion, Task::FundusDisc] {
        let (image, mask) = sample(task, 4);
        let (w, h) = (image.width, image.height);
        let mut out = vec![0u8; w * h];
        let ((), n, _) = count(|| {
            pre.image(&image.view(), &mut input);
            pre.mask(&mask.view(), &image.view(), &mut mask_in).unwrap();
            cache.store(1, 7, &tokens);
            cache.copy(1, 2);
            cache.clear(1);
            let roi = RoiOptions::default();
            let crop = roi.crop(mask_box(&mask.view()).unwrap(), w, h);
            pre.image(&image.view().crop(crop).unwrap(), &mut input);
            let crop = roi.crop(logits_box(&logits, r, 0.0, w, h).unwrap(), w, h);
            let mut view = MaskMut::packed(&mut out, w, h).unwrap();
            logits_to_mask(&logits, r, 0.0, &mut view);
            view.fill(0);
            logits_to_mask(&logits, r, 0.0, &mut view.crop(crop).unwrap());
        });
        assert_eq!(n, 0, "{}: pre/post-processing, cache and ROI crops allocated", task.name());
    }
    // Every pixel format and a padded stride.
    let bytes = vec![77u8; 300 * 4 * 200 + 200 * 5];
    for format in [PixelFormat::Gray8, PixelFormat::Gray16, PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Rgba8] {
        let stride = 300 * format.bytes_per_pixel() + 5;
        let view = ImageView::new(&bytes, 300, 200, stride, format).unwrap();
        let ((), n, _) = count(|| pre.image(&view, &mut input));
        assert_eq!(n, 0, "{}", format.name());
    }
}

/// Allocations of each frame of `task` on `engine` after warm-up; checks none is retained.
fn frame_allocations(engine: &Engine, roi: Option<RoiOptions>, task: Task) -> Vec<usize> {
    let mut s = engine.session().unwrap();
    s.set_roi(roi).unwrap();
    session_allocations(&mut s, task, |s| {
        assert_eq!(s.last_crop().is_some(), roi.is_some(), "the ROI pass runs exactly when ROI is on")
    })
}

/// Allocations of each frame of `task` in session `s` (shots 1, 2, 3 set here) after warm-up;
/// checks none is retained, and `check` after each frame.
fn session_allocations(s: &mut segicl::Session, task: Task, check: impl Fn(&segicl::Session)) -> Vec<usize> {
    set_shots(s, task, &[1, 2, 3]);
    let frames: Vec<_> = (10..14).map(|seed| sample(task, seed).0).collect();
    let (w, h) = (frames[0].width, frames[0].height);
    let mut out = vec![0u8; w * h];
    for f in &frames {
        s.segment(&f.view(), &mut MaskMut::packed(&mut out, w, h).unwrap()).unwrap();
    }
    let mut counts = Vec::new();
    for f in frames.iter().chain(&frames) {
        let view = f.view();
        let mut mask = MaskMut::packed(&mut out, w, h).unwrap();
        let (r, n, net) = count(|| s.segment(&view, &mut mask));
        r.unwrap();
        assert_eq!(net, 0, "a frame left {net} bytes allocated");
        check(s);
        counts.push(n);
    }
    counts
}

#[test]
fn a_frame_allocates_nothing_on_the_native_executor() {
    let int8 = reference_path().with_file_name("segicl-ref-int8.plan");
    let int8 = Engine::open(int8, &EngineOptions::default()).expect("models/segicl-ref-int8.plan opens");
    for (name, engine) in [("prototype", prototype()), ("segicl-ref", reference()), ("segicl-ref-int8", int8)] {
        assert_eq!(engine.backend_name(), "cpu", "{name} runs on the native executor");
        for roi in [None, Some(RoiOptions::default())] {
            let counts = frame_allocations(&engine, roi, Task::FundusCup);
            eprintln!("{name}, ROI {}: allocations per frame {counts:?}", roi.is_some());
            assert!(counts.iter().all(|&n| n == 0), "{name}, ROI {}: {counts:?}", roi.is_some());
        }
    }
}

#[test]
fn tract_allocates_a_constant_amount_per_pass_and_retains_nothing() {
    let engine = Engine::open(prototype_path(), &EngineOptions { backend: BackendChoice::Tract, threads: 1 }).unwrap();
    assert_eq!(engine.backend_name(), "tract");
    let plain = frame_allocations(&engine, None, Task::FundusCup);
    let roi = frame_allocations(&engine, Some(RoiOptions::default()), Task::FundusCup);
    eprintln!("tract: allocations per frame: {plain:?} in one pass, {roi:?} with the ROI pass");
    assert!(plain[0] > 0 && plain.windows(2).all(|w| w[0] == w[1]), "allocations vary or grow: {plain:?}");
    // Each pass allocates what tract's executor allocates for one frame, and nothing else.
    assert!(roi.iter().zip(&plain).all(|(r, p)| *r == 2 * p), "ROI mode allocates more than two passes: {roi:?}");
}

#[test]
fn refined_frames_allocate_a_constant_amount_and_retain_nothing() {
    // The stand-in refiner (its mask is the box), every frame refined; four frames cycle through
    // a memo of two, so each frame runs the refiner's encoder and reuses an evicted memo entry.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("box-fill.refiner");
    std::fs::write(&path, segicl_models::box_refiner::file().unwrap()).unwrap();
    let refiner = segicl::Refiner::open(&path, &segicl::EngineOptions::default()).unwrap();
    let mut s = prototype().session().unwrap();
    let options = segicl::RefineOptions { gate: false, memo_frames: 2, ..Default::default() };
    s.set_refiner(Some((&refiner, options))).unwrap();
    let counts = session_allocations(&mut s, Task::UsLesion, |s| {
        assert!(s.last_refine_box().is_some(), "every frame is refined")
    });
    // Pass 1 runs on the native executor (no allocation); the refiner runs with tract.
    eprintln!("allocations per refined frame (the refiner's tract graphs): {counts:?}");
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "allocations vary or grow: {counts:?}");
}

#[test]
fn the_box_search_allocates_nothing_after_its_first_frame() {
    use segicl::refine::boxes::{BoxFinder, BoxRule};
    let (_, mask) = sample(Task::FundusCup, 5);
    let (w, h) = (mask.width, mask.height);
    let mut data = mask.data.clone();
    let mut finder = BoxFinder::new();
    let mut view = MaskMut::packed(&mut data, w, h).unwrap();
    assert_eq!(finder.find(&mut view, BoxRule::LargestBlob).len(), 1);
    for rule in BoxRule::ALL {
        let (found, n, _) = count(|| finder.find(&mut view, rule).len());
        assert_eq!(n, 0, "{}: the blob search allocated", rule.name());
        assert!(found >= 1);
    }
    let logits: Vec<f32> = (0..64 * 64).map(|i| (i % 5) as f32 - 2.0).collect();
    let ((), n, _) = count(|| segicl::postprocess::region_to_mask(&logits, 64, (64, 40), 0.0, &mut view));
    assert_eq!(n, 0, "upsampling a region allocated");
}

#[test]
fn a_frame_on_two_threads_allocates_nothing_on_either() {
    let engine =
        Engine::open(segicl_tests::reference_path(), &EngineOptions { backend: BackendChoice::Cpu, threads: 2 })
            .unwrap();
    let mut s = engine.session().unwrap();
    session_allocations(&mut s, Task::FundusCup, |_| {}); // the worker started and warmed up
    let before = WORKER_ALLOCATIONS.load(Ordering::Relaxed);
    let counts = session_allocations(&mut s, Task::FundusCup, |_| {});
    let workers = WORKER_ALLOCATIONS.load(Ordering::Relaxed) - before;
    eprintln!("segicl-ref on 2 threads: allocations per frame {counts:?}, by the worker {workers}");
    assert!(counts.iter().all(|&n| n == 0), "{counts:?}");
    assert_eq!(workers, 0, "the worker thread allocated while shots and frames ran");
}
