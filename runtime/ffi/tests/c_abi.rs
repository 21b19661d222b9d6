//! Builds `tests/c/abi_test.c` against the freshly built `libsegicl.so`, runs it (under valgrind
//! when it is on PATH, and built with ASan/UBSan when the compiler can) on the prototype engine and
//! the stand-in refiner, and checks that the masks it wrote match the Rust API's, byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use segicl::{BoxRule, EngineOptions, RefineOptions, Refiner};
use segicl_eval::synthetic::Task;
use segicl_tests::{prototype, prototype_path, sample, segment, set_shots};

const SHOT_SEEDS: [u64; 3] = [1, 2, 3];
const FRAME_SEEDS: [u64; 4] = [10, 11, 12, 13];

/// `…/target/<profile>`: the test binary lives in `…/target/<profile>/deps/c_abi-HASH`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") { deps.parent().unwrap() } else { deps };
    dir.to_path_buf()
}

/// Compiles `tests/c/{source}` with `extra` flags against the library in `lib` (found at run
/// time through `lib` and `so_dir`) into `exe`; false if the compiler refuses.
fn compile(source: &str, lib: &Path, so_dir: &Path, exe: &Path, extra: &[&str]) -> bool {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .args(extra)
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c").join(source))
        .arg("-L")
        .arg(lib)
        .args(["-lsegicl", "-lpthread"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", so_dir.display()))
        .arg("-o")
        .arg(exe)
        .status()
        .expect("cc runs (is a C compiler installed?)")
        .success()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
}

fn write_inputs(dir: &Path) -> (usize, usize) {
    let mut size = None;
    for (i, &seed) in SHOT_SEEDS.iter().enumerate() {
        let (image, mask) = sample(Task::UsLesion, seed);
        size = Some((image.width, image.height));
        std::fs::write(dir.join(format!("shot{i}.gray")), &image.data).unwrap();
        std::fs::write(dir.join(format!("shot{i}.mask")), &mask.data).unwrap();
    }
    for (i, &seed) in FRAME_SEEDS.iter().enumerate() {
        let (image, _) = sample(Task::UsLesion, seed);
        assert_eq!(Some((image.width, image.height)), size, "frames and shots share one size");
        std::fs::write(dir.join(format!("frame{i}.gray")), &image.data).unwrap();
    }
    let (w, h) = size.unwrap();
    std::fs::write(dir.join("meta.txt"), format!("{w} {h}\n")).unwrap();
    (w, h)
}

/// Builds `libsegicl.so` into `lib` with the cargo running this test and the test's profile:
/// `cargo test` builds the crate only as a test harness, never its cdylib, and a library left
/// from an earlier build may be stale. The build selects what `cargo test --workspace` selects
/// (every package, with dev-dependencies), so it resolves the same features and reuses what that
/// run compiled; `-p segicl-ffi` alone resolves them differently and compiles tract again.
fn build_library(lib: &Path) {
    let profile = lib.file_name().and_then(|n| n.to_str()).expect("target/<profile>");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "--workspace", "--lib", "--tests"]);
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "`cargo build --workspace --lib --tests` failed: {status}");
    assert!(lib.join("libsegicl.so").is_file(), "{} is missing after the build", lib.join("libsegicl.so").display());
}

/// A fresh folder with the C tests' inputs, and the freshly built library.
struct Workspace {
    /// `target/<profile>`, where `libsegicl.so` is.
    lib: PathBuf,
    /// Where the loader finds the library under its SONAME.
    so_dir: PathBuf,
    /// Width and height of the frames and shots.
    size: (usize, usize),
    tmp: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let lib = lib_dir();
        build_library(&lib);
        let tmp = tempfile::tempdir().unwrap();
        let size = write_inputs(tmp.path());
        // The library's SONAME is libsegicl.so.2, which cargo does not lay out: the loader finds
        // it through a link in DIR/lib, as an install would provide it.
        let so_dir = tmp.path().join("lib");
        std::fs::create_dir(&so_dir).unwrap();
        std::os::unix::fs::symlink(lib.join("libsegicl.so"), so_dir.join("libsegicl.so.2")).unwrap();
        Workspace { lib, so_dir, size, tmp }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

/// A frame through the C ABI allocates nothing after warm-up (native executor, with and without
/// the ROI pass), counted by a C program whose malloc the library's allocations resolve to.
#[test]
fn c_frames_allocate_nothing() {
    let ws = Workspace::new();
    let (dir, lib, so_dir) = (ws.dir(), &ws.lib, &ws.so_dir);
    let exe = dir.join("alloc_count");
    assert!(compile("alloc_count.c", lib, so_dir, &exe, &[]), "alloc_count.c does not compile");
    let out = Command::new(&exe).arg(dir).arg(prototype_path()).output().expect("alloc_count runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("allocations per frame").count(), 2, "{stdout}");
}

#[test]
fn c_program_matches_the_rust_api() {
    let ws = Workspace::new();
    let (dir, lib, so_dir, (w, h)) = (ws.dir(), &ws.lib, &ws.so_dir, ws.size);
    let refiner_path = dir.join("refiner.plan");
    std::fs::write(&refiner_path, segicl_models::box_refiner::file().unwrap()).unwrap();

    let exe = dir.join("abi_test");
    assert!(compile("abi_test.c", lib, so_dir, &exe, &[]), "abi_test.c does not compile");
    let valgrind = on_path("valgrind");
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        c.args(["--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    println!("running abi_test {}", if valgrind { "under valgrind" } else { "without valgrind (not on PATH)" });
    let start = Instant::now();
    // The engine at a path that is not UTF-8 (Unix paths are bytes): every open of the C test uses it.
    let engine_path = dir.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"engine-\xff.plan"));
    std::fs::copy(prototype_path(), &engine_path).unwrap();
    let out = cmd.arg(dir).arg(&engine_path).arg(&refiner_path).output().expect("abi_test runs");
    println!("abi_test took {:.1} s", start.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if valgrind {
        let summary = ["ERROR SUMMARY", "definitely lost", "indirectly lost", "All heap blocks were freed"];
        for line in stderr.lines().filter(|l| summary.iter().any(|k| l.contains(k))) {
            println!("{line}");
        }
    }
    assert!(out.status.success(), "abi_test failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    // The same program built with AddressSanitizer and UndefinedBehaviorSanitizer (the C side is
    // instrumented; the library's heap blocks get ASan's red zones), where the compiler has them.
    let sanitized = dir.join("abi_test_asan");
    if compile(
        "abi_test.c",
        lib,
        so_dir,
        &sanitized,
        &["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"],
    ) {
        let out = Command::new(&sanitized)
            .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
            .arg(dir)
            .arg(&engine_path)
            .arg(&refiner_path)
            .output()
            .expect("abi_test_asan runs");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("under ASan/UBSan: {}", stdout.lines().last().unwrap_or(""));
        assert!(out.status.success() && stdout.contains(" 0 failed"), "abi_test under ASan/UBSan:\n{stdout}\n{stderr}");
    } else {
        println!("ASan/UBSan: the C compiler cannot build with -fsanitize=address,undefined here; skipped");
    }

    let engine = prototype();
    let mut session = engine.session().unwrap();
    set_shots(&mut session, Task::UsLesion, &SHOT_SEEDS);
    for (i, &seed) in FRAME_SEEDS.iter().enumerate() {
        let (frame, _) = sample(Task::UsLesion, seed);
        let want = segment(&mut session, &frame);
        let got = std::fs::read(dir.join(format!("c_mask{i}.raw"))).unwrap();
        assert_eq!(got.len(), w * h, "c_mask{i}.raw size");
        assert!(got == want.data, "c_mask{i}.raw differs from the Rust API's mask");
    }
    session.set_roi(Some(segicl::RoiOptions::default())).unwrap();
    for (i, &seed) in FRAME_SEEDS.iter().enumerate() {
        let (frame, _) = sample(Task::UsLesion, seed);
        let want = segment(&mut session, &frame);
        assert!(session.last_crop().is_some(), "frame {i}: the ROI pass ran");
        let got = std::fs::read(dir.join(format!("c_roi_mask{i}.raw"))).unwrap();
        assert!(got == want.data, "c_roi_mask{i}.raw differs from the Rust API's ROI mask");
    }

    // The refined masks: one shot (all blobs' box, no margin, no gate), three shots with the gate, and three
    // with every field of the C options set.
    let refiner = Refiner::open(&refiner_path, &EngineOptions::default()).unwrap();
    let refined = |name: &str, shots: &[u64], options: RefineOptions| {
        let mut session = engine.session().unwrap();
        session.set_refiner(Some((&refiner, options))).unwrap();
        set_shots(&mut session, Task::UsLesion, shots);
        let mut boxes = 0;
        for (i, &seed) in FRAME_SEEDS.iter().enumerate() {
            let (frame, _) = sample(Task::UsLesion, seed);
            let want = segment(&mut session, &frame);
            boxes += usize::from(session.last_refine_box().is_some());
            let got = std::fs::read(dir.join(format!("{name}{i}.raw"))).unwrap();
            assert_eq!(got.len(), w * h, "{name}{i}.raw size");
            assert!(got == want.data, "{name}{i}.raw differs from the Rust API's refined mask");
        }
        boxes
    };
    let one_box = RefineOptions { rule: BoxRule::AllBlobs, margin: Some(0.0), gate: false, ..RefineOptions::default() };
    let one_shot = refined("c_refined1_mask", &SHOT_SEEDS[..1], one_box);
    assert!(one_shot > 0, "with one shot, no frame was refined");
    let gated = refined("c_refined_mask", &SHOT_SEEDS, RefineOptions::default());
    println!("refined with the gate on: {gated} of {} frames", FRAME_SEEDS.len());
    let all_blobs =
        RefineOptions { rule: BoxRule::AllBlobs, margin: Some(0.1), gate: false, ..RefineOptions::default() };
    let always = refined("c_refined_opts_mask", &SHOT_SEEDS, all_blobs);
    assert_eq!(always, FRAME_SEEDS.len(), "with the gate off, every frame is refined");
}
