//! A fixed pool of worker threads per session, for the native executor's large operations.
//!
//! [`Threads::split`] (through [`Pool::split`]) cuts an output buffer into one contiguous part per thread (on whole units:
//! rows of a matrix, planes of a tensor) and runs the same work on every part at once, the
//! calling thread taking the first. Each unit is computed the same way whatever the number of
//! threads, so results do not depend on it, bit for bit.
//!
//! A dispatch allocates nothing: the work is handed over by reference through atomics. Workers
//! spin for a short while after each dispatch, since a frame's operations follow each other
//! within microseconds, then sleep on a condition variable until the next frame.

use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Multiply-adds under which an operation runs on the calling thread alone: handing it over
/// would cost more than it saves.
const MIN_SPLIT: usize = 1 << 18;

/// The pool of a session and each thread's own scratch (for packing B panels).
pub struct Threads {
    pool: Pool,
    panels: Vec<Mutex<Vec<f32>>>,
    /// Operations of fewer multiply-adds run on the calling thread.
    min_split: usize,
}

impl Threads {
    /// `threads` threads (the caller's included), each with a scratch of `panel` floats.
    pub fn new(threads: usize, panel: usize) -> std::io::Result<Threads> {
        let pool = Pool::new(threads)?;
        let panels = (0..pool.threads()).map(|_| Mutex::new(vec![0.0; panel])).collect();
        Ok(Threads { pool, panels, min_split: MIN_SPLIT })
    }

    /// [`Threads::new`] that splits every operation, however small (for the kernel tests).
    #[cfg(test)]
    pub fn eager(threads: usize, panel: usize) -> Threads {
        Threads { min_split: 0, ..Threads::new(threads, panel).unwrap() }
    }

    /// Whether [`Threads::split`] runs an operation of `cost` multiply-adds on several threads.
    pub fn splits(&self, cost: usize) -> bool {
        self.pool.threads() > 1 && cost >= self.min_split
    }

    /// [`Pool::split`], or all of it on the calling thread when `cost` (multiply-adds) is small.
    pub fn split<T: Send>(
        &self,
        out: &mut [T],
        unit: usize,
        units: usize,
        cost: usize,
        work: impl Fn(usize, Range<usize>, &mut [T]) + Sync,
    ) {
        if !self.splits(cost) {
            let len = out.len().min(units * unit);
            work(0, 0..units, &mut out[..len]);
        } else {
            self.pool.split(out, unit, units, work);
        }
    }

    /// The scratch of part `part` of a split (each part runs on its own thread).
    pub fn panel(&self, part: usize) -> MutexGuard<'_, Vec<f32>> {
        self.panels[part].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a worker spins for the next dispatch before it goes to sleep.
const SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// The calling thread and `threads - 1` workers.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Work for every thread: `job(part)` for part 1.. on the workers (0 is the caller's).
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    threads: usize,
    /// Bumped once per dispatch (and at shutdown): a worker runs the job when it changes.
    epoch: AtomicU64,
    /// The current job: a `Job` on the dispatching thread's stack, its lifetime erased; valid
    /// while `pending` is non-zero.
    job: AtomicPtr<()>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// Whether a worker's part panicked.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers asleep (or about to be), so a dispatch knows to wake them.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Pool {
    /// A pool of `threads` (at least 1; 1 runs everything on the caller and starts no thread).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Pool { shared: shared.clone(), workers: Vec::with_capacity(threads - 1) };
        for part in 1..threads {
            let shared = shared.clone();
            let worker =
                std::thread::Builder::new().name(format!("segicl-cpu-{part}")).spawn(move || work(&shared, part))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Splits the first `units · unit` elements of `out` (the last unit may be shorter, ending
    /// at `out`'s end) into one contiguous run of whole units per thread and calls
    /// `work(part, units_of_the_part, part_of_out)` on each at once, part `i` on thread `i`;
    /// returns when all are done. A panic in any part is raised here, after every part finished.
    pub fn split<T: Send>(
        &self,
        out: &mut [T],
        unit: usize,
        units: usize,
        work: impl Fn(usize, Range<usize>, &mut [T]) + Sync,
    ) {
        let threads = self.threads().min(units);
        let len = out.len().min(units * unit);
        if threads <= 1 {
            work(0, 0..units, &mut out[..len]);
            return;
        }
        let part = |i: usize| {
            let units = i * units / threads..(i + 1) * units / threads;
            (units.start * unit..(units.end * unit).min(len), units)
        };
        let base = SendPtr(out.as_mut_ptr());
        let job = |i: usize| {
            if i >= threads {
                return;
            }
            let (elements, units) = part(i);
            // SAFETY: the parts' element ranges are disjoint and inside `out[..len]`; each part
            // index is run exactly once per dispatch, and `out` is not touched by the caller
            // until every part has finished (`dispatch` waits for them).
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(elements.start), elements.len()) };
            work(i, units, chunk);
        };
        self.dispatch(&job);
    }

    /// Runs `job(0)` here and `job(1..threads)` on the workers; returns when all have.
    fn dispatch(&self, job: Job) {
        let shared = &*self.shared;
        // Workers use the job only while `pending` is non-zero, and this function does not
        // return (or unwind) before it is zero again, so `job` outlives every use.
        shared.job.store(&job as *const Job as *mut (), Ordering::Relaxed);
        shared.panicked.store(false, Ordering::Relaxed);
        shared.pending.store(shared.threads - 1, Ordering::Relaxed);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if shared.panicked.load(Ordering::Relaxed) {
            panic!("a worker thread of the native executor panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker: waits for each new epoch, runs its part of the job, counts itself done.
fn work(shared: &Shared, part: usize) {
    let mut seen = 0;
    loop {
        let started = std::time::Instant::now();
        let mut epoch = shared.epoch.load(Ordering::Acquire);
        while epoch == seen {
            if started.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            } else {
                let mut guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.epoch.load(Ordering::SeqCst) == seen {
                    guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            epoch = shared.epoch.load(Ordering::Acquire);
        }
        seen = epoch;
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the epoch changed, so `dispatch` stored a live job (the Acquire load above
        // pairs with its SeqCst increment) and waits for this worker before it returns.
        let job: Job = unsafe { *(shared.job.load(Ordering::Relaxed) as *const Job) };
        if catch_unwind(AssertUnwindSafe(|| job(part))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// A raw pointer the parts of [`Pool::split`] share.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only used by `split`, whose parts write disjoint ranges.
unsafe impl<T: Send> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_done_once_whatever_the_threads() {
        for threads in [1, 2, 3, 7] {
            let pool = Pool::new(threads).unwrap();
            for (units, unit) in [(1, 5), (2, 3), (10, 4), (33, 1)] {
                // The last unit short: 2 of its `unit` elements.
                let mut out = vec![0usize; (units - 1) * unit + 2.min(unit)];
                for _ in 0..3 {
                    pool.split(&mut out, unit, units, |_, range, part| {
                        assert!(part.len() <= range.len() * unit && part.len() > (range.len() - 1) * unit);
                        for (i, v) in part.iter_mut().enumerate() {
                            *v += range.start * unit + i + 1;
                        }
                    });
                }
                let want: Vec<usize> = (0..out.len()).map(|i| 3 * (i + 1)).collect();
                assert_eq!(out, want, "{threads} threads, {units} units of {unit}");
            }
        }
    }

    #[test]
    fn a_panicking_part_is_raised_after_all_parts_finish() {
        let pool = Pool::new(3).unwrap();
        let mut out = vec![0u8; 30];
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.split(&mut out, 1, 30, |_, range, part| {
                if range.start > 0 {
                    panic!("part at {}", range.start);
                }
                part.fill(1);
            })
        }));
        assert!(caught.is_err());
        assert!(out[..10].iter().all(|&v| v == 1), "the caller's part ran");
        // The pool still works afterwards.
        pool.split(&mut out, 1, 30, |_, _, part| part.fill(2));
        assert!(out.iter().all(|&v| v == 2));
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = Pool::new(2).unwrap();
        let mut out = vec![0u32; 8];
        pool.split(&mut out, 1, 8, |_, _, part| part.fill(1));
        std::thread::sleep(std::time::Duration::from_millis(50));
        pool.split(&mut out, 1, 8, |_, _, part| part.fill(2));
        assert!(out.iter().all(|&v| v == 2));
    }
}
