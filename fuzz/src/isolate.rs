//! One case in a child process of its own: fork, limits (address space, CPU time), the engine
//! opened and run as a user would, and how it ended, read from the exit status.

use std::path::Path;
use std::time::{Duration, Instant};

use segicl::{Engine, EngineOptions, Error, MaskMut, OwnedImage, PixelFormat};
use segicl_eval::synthetic::{sample, Task};

/// How a case ended. [`Outcome::is_defect`] says which are bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Opened, took shots and returned a mask from finite logits.
    Segmented,
    /// `Engine::open` refused the file with an error.
    RefusedAtOpen,
    /// `Engine::open` refused it with an error after tract panicked on the graph (caught inside
    /// segicl, never seen by the caller).
    RefusedAtOpenTractPanic,
    /// Opened, then a shot or the frame was refused with an error.
    RefusedAtRun,
    /// Opened, then a graph produced NaN or infinity and segicl said so (`Error::NonFinite`).
    NonFiniteRefused,
    /// A mask came back although the logits were not finite.
    NonFiniteMask,
    /// A panic reached the caller.
    Panic,
    /// The process died of a signal (SIGSEGV, SIGBUS, SIGABRT from an abort, ...).
    Signal(i32),
    /// Still running at the time limit (killed).
    Hang,
    /// The child exited with a code `exercise` never returns (an abort path that exits).
    Exited(i32),
}

impl Outcome {
    /// Whether this outcome is a bug of segicl.
    pub fn is_defect(self) -> bool {
        matches!(
            self,
            Outcome::NonFiniteMask | Outcome::Panic | Outcome::Signal(_) | Outcome::Hang | Outcome::Exited(_)
        )
    }

    /// Short name for reports.
    pub fn name(self) -> String {
        match self {
            Outcome::Segmented => "segmented".into(),
            Outcome::RefusedAtOpen => "refused at open".into(),
            Outcome::RefusedAtOpenTractPanic => "refused at open (tract panic caught)".into(),
            Outcome::RefusedAtRun => "refused at run".into(),
            Outcome::NonFiniteRefused => "non-finite, refused".into(),
            Outcome::NonFiniteMask => "NON-FINITE MASK".into(),
            Outcome::Panic => "PANIC".into(),
            Outcome::Signal(s) => format!("SIGNAL {s}"),
            Outcome::Hang => "HANG".into(),
            Outcome::Exited(c) => format!("EXIT {c}"),
        }
    }

    fn code(self) -> i32 {
        match self {
            Outcome::Segmented => 10,
            Outcome::RefusedAtOpen => 11,
            Outcome::RefusedAtOpenTractPanic => 12,
            Outcome::RefusedAtRun => 13,
            Outcome::NonFiniteRefused => 14,
            Outcome::NonFiniteMask => 20,
            Outcome::Panic => 21,
            Outcome::Signal(_) | Outcome::Hang | Outcome::Exited(_) => unreachable!("not an exit code"),
        }
    }

    fn from_code(code: i32) -> Option<Outcome> {
        [
            Outcome::Segmented,
            Outcome::RefusedAtOpen,
            Outcome::RefusedAtOpenTractPanic,
            Outcome::RefusedAtRun,
            Outcome::NonFiniteRefused,
            Outcome::NonFiniteMask,
            Outcome::Panic,
        ]
        .into_iter()
        .find(|o| o.code() == code)
    }
}

/// The synthetic shot and frame every case uses, made once in the parent (a child inherits them,
/// so no case spends its time drawing them).
pub struct Inputs {
    shot: OwnedImage,
    shot_mask: OwnedImage,
    frame: OwnedImage,
}

impl Inputs {
    /// An ultrasound-lesion shot with its mask and a second frame of the same task.
    pub fn new() -> Inputs {
        let (shot, mask) = sample(Task::UsLesion, 1);
        let shot_mask = OwnedImage { width: shot.width, height: shot.height, format: PixelFormat::Gray8, data: mask };
        let (frame, _) = sample(Task::UsLesion, 2);
        Inputs { shot, shot_mask, frame }
    }
}

/// Opens the engine at `path` and uses it as a user would: the engine's first default shots
/// (or the synthetic shot of `inputs`), then one synthetic frame. Panics are caught and reported
/// as such.
pub fn exercise(path: &Path, inputs: &Inputs) -> Outcome {
    std::panic::catch_unwind(|| run(path, inputs)).unwrap_or(Outcome::Panic)
}

fn run(path: &Path, inputs: &Inputs) -> Outcome {
    let engine = match Engine::open(path, &EngineOptions::default()) {
        Ok(e) => e,
        Err(e) if e.to_string().contains("tract panicked") => return Outcome::RefusedAtOpenTractPanic,
        Err(_) => return Outcome::RefusedAtOpen,
    };
    let refused = |e: Error| match e {
        Error::NonFinite { .. } => Outcome::NonFiniteRefused,
        _ => Outcome::RefusedAtRun,
    };
    let mut session = match engine.session() {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    if let Some(task) = engine.default_shots().names().next().map(str::to_string) {
        if let Err(e) = session.use_default_shots(&task) {
            if matches!(e, Error::NonFinite { .. }) {
                return Outcome::NonFiniteRefused;
            }
        }
    }
    if session.shot_count() == 0 {
        if let Err(e) = session.set_shot(0, &inputs.shot.view(), &inputs.shot_mask.view()) {
            return refused(e);
        }
    }
    let frame = &inputs.frame;
    let mut out = vec![0u8; frame.width * frame.height];
    let view = MaskMut::packed(&mut out, frame.width, frame.height).expect("a frame-sized buffer");
    match session.segment(&frame.view(), &mut { view }) {
        Ok(()) if session.logits().iter().all(|v| v.is_finite()) => Outcome::Segmented,
        Ok(()) => Outcome::NonFiniteMask,
        Err(e) => refused(e),
    }
}

/// Limits of one child.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU time after which the child is stopped (SIGXCPU) and the case is a hang; a child that
    /// waits without using the CPU is killed after [`WALL_FACTOR`] times as long on the clock.
    /// CPU time, not the clock, so that a busy machine does not make slow cases look hung.
    pub timeout: Duration,
    /// Address-space limit of the child, in bytes.
    pub memory: u64,
}

/// A child is killed after this many times its CPU limit on the wall clock.
pub const WALL_FACTOR: u32 = 6;

/// A running child.
pub struct Child {
    pid: libc::pid_t,
    started: Instant,
}

/// Forks a child that runs [`exercise`] on `path` with `inputs` under `limits` and exits with its
/// outcome. The caller must be single-threaded (the fuzzer's parent is).
pub fn spawn(path: &Path, inputs: &Inputs, limits: Limits) -> std::io::Result<Child> {
    // SAFETY: the parent has one thread, so the child starts from a consistent state; the child
    // only runs `exercise` and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let memory = libc::rlimit { rlim_cur: limits.memory, rlim_max: limits.memory };
        // SIGXCPU at the soft limit (a hang); the hard limit, a second later, kills with SIGKILL.
        let cpu_s = limits.timeout.as_secs().max(1);
        let cpu = libc::rlimit { rlim_cur: cpu_s, rlim_max: cpu_s + 1 };
        // SAFETY: plain system calls on this process; `_exit` skips the parent's atexit state.
        unsafe {
            libc::setrlimit(libc::RLIMIT_AS, &memory);
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
            let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if devnull >= 0 {
                libc::dup2(devnull, 2);
            }
            std::panic::set_hook(Box::new(|_| {}));
            libc::_exit(exercise(path, inputs).code());
        }
    }
    Ok(Child { pid, started: Instant::now() })
}

impl Child {
    /// The outcome if the child has ended; kills it (a hang) once `WALL_FACTOR × timeout` has
    /// passed on the clock.
    pub fn poll(&self, timeout: Duration) -> Option<Outcome> {
        let mut status = 0;
        // SAFETY: waits for our own child without blocking.
        let done = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if done == self.pid {
            return Some(decode(status));
        }
        if self.started.elapsed() > timeout * WALL_FACTOR {
            // SAFETY: our own child; reaped by the blocking wait right after.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut status, 0);
            }
            return Some(Outcome::Hang);
        }
        None
    }
}

fn decode(status: i32) -> Outcome {
    if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        return Outcome::from_code(code).unwrap_or(Outcome::Exited(code));
    }
    match libc::WTERMSIG(status) {
        libc::SIGXCPU => Outcome::Hang,
        signal => Outcome::Signal(signal),
    }
}
