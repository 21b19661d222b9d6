//! `segicl-edge --backend cuda|auto` in a build with the CUDA backend. Without a GPU (no
//! libcuda.so.1, as in CI; or a driver that sees no device) `cuda` must fail with one clear line
//! and `auto` must run on the CPU and log why; with one, both must run on it.
#![cfg(any(feature = "cuda-12", feature = "cuda-13"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segicl_eval::synthetic::Task;

fn engine() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/prototype.plan");
    path.to_str().unwrap().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segicl-edge")).args(args).output().expect("segicl-edge runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Whether the NVIDIA driver library can be loaded here (what the backend needs first).
fn driver_present() -> bool {
    // SAFETY: loads and unloads a library by its NUL-terminated name; nothing from it is used.
    unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        !handle.is_null() && libc::dlclose(handle) == 0
    }
}

/// Arguments that segment one synthetic frame from two shots written under `dir`.
fn segment_args(dir: &Path) -> Vec<String> {
    segicl_eval::evaluation::write_synthetic(dir, Task::UsLesion, 1..4).unwrap();
    let file = |kind: &str, n: u64| dir.join(format!("{kind}/{n}.png")).to_str().unwrap().to_string();
    let shot = |n| format!("{}={}", file("images", n), file("masks", n));
    let out = dir.join("out").to_str().unwrap().to_string();
    ["segment", "--shot", &shot(1), "--shot", &shot(2), "--query", &file("images", 3), "--out", &out]
        .map(String::from)
        .to_vec()
}

#[test]
fn backend_cuda_fails_cleanly_without_a_gpu_and_runs_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let segment = segment_args(dir.path());
    let bench = ["bench", "--frames", "3", "--warmup", "2", "--shots", "2"].map(String::from).to_vec();
    let engine = engine();
    for command in [segment, bench] {
        let mut args = vec!["--engine", &engine, "--backend", "cuda"];
        args.extend(command.iter().map(String::as_str));
        let o = run(&args);
        let t = text(&o);
        assert!(!t.contains("panicked"), "{args:?} panicked: {t}");
        if o.status.success() {
            assert!(driver_present(), "{args:?} ran on cuda without a driver: {t}");
            if command[0] == "bench" {
                assert!(t.contains("backend cuda") && t.contains("device: frame"), "{t}");
            }
            continue;
        }
        assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.starts_with("error: backend cuda: ") && stderr.lines().count() == 1, "{stderr}");
        assert!(stderr.contains("--backend cpu"), "{stderr}");
        if !driver_present() {
            assert!(stderr.contains("NVIDIA driver cannot be loaded (libcuda.so.1"), "{stderr}");
        }
    }
}

#[test]
fn backend_auto_says_why_it_did_not_take_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let mut args = vec!["-v", "--engine", &engine, "--backend", "auto"];
    let segment = segment_args(dir.path());
    args.extend(segment.iter().map(String::as_str));
    let o = run(&args);
    let t = text(&o);
    assert!(o.status.success() && !t.contains("panicked"), "{t}");
    assert!(dir.path().join("out/3.mask.png").exists(), "{t}");
    if !driver_present() {
        assert!(
            t.contains("backend auto: using cpu, not cuda: backend cuda: the NVIDIA driver cannot be loaded"),
            "{t}"
        );
        assert!(t.contains("backend cpu)"), "{t}");
    }
}

/// A driver that sees no device (a container with the driver library but no GPU), made of stub
/// libraries: the backend must stop at cuInit with one line, without a panic.
#[test]
fn a_driver_without_a_device_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let stub = |name: &str, source: &str| {
        let c = dir.path().join(format!("{name}.c"));
        std::fs::write(&c, source).unwrap();
        let so = dir.path().join(name);
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-o", so.to_str().unwrap(), c.to_str().unwrap()])
            .arg(format!("-Wl,-soname,{name}"))
            .status()
            .expect("cc runs");
        assert!(status.success());
    };
    let driver = "int cuDriverGetVersion(int *v) { *v = 13000; return 0; }\n\
         int cuInit(unsigned flags) { return 100; }\n\
         int cuGetErrorString(int e, const char **s) { *s = \"no CUDA-capable device is detected\"; return 0; }\n\
         int cuGetErrorName(int e, const char **s) { *s = \"CUDA_ERROR_NO_DEVICE\"; return 0; }\n";
    // cudarc tries the unversioned name first: stub both, ahead of a real driver on the path.
    stub("libcuda.so", driver);
    stub("libcuda.so.1", driver);
    for library in ["libnvrtc.so.12", "libnvrtc.so.13", "libcublas.so.12", "libcublas.so.13", "libcudnn.so.9"] {
        stub(library, "void stub(void) {}\n");
    }
    let engine = engine();
    let with_stubs = |backend: &str| {
        Command::new(env!("CARGO_BIN_EXE_segicl-edge"))
            .args(["-v", "--engine", &engine, "--backend", backend, "bench", "--frames", "1", "--warmup", "0"])
            .env("LD_LIBRARY_PATH", dir.path())
            .output()
            .expect("segicl-edge runs")
    };
    let o = with_stubs("cuda");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.ends_with("CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device is detected\"); use --backend cpu, or auto to take the best one present\n"), "{stderr}");
    let o = with_stubs("auto");
    assert!(o.status.success() && text(&o).contains("using cpu, not cuda: backend cuda: cuInit"), "{}", text(&o));
}
