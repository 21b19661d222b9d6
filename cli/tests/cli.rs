//! The `segicl-edge` command line, end to end, as a validation engineer uses it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segicl::format::{EngineFile, Tag};
use segicl::{OwnedImage, PixelFormat};
use segicl_eval::dataset::save_png;
use segicl_eval::synthetic::Task;

fn engine() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/prototype.plan")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segicl-edge")).args(args).output().expect("segicl-edge runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Writes synthetic `task` samples `seeds` as `dir/images/N.png` and `dir/masks/N.png`.
fn write_samples(dir: &Path, task: Task, seeds: std::ops::Range<u64>) {
    segicl_eval::evaluation::write_synthetic(dir, task, seeds).unwrap();
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn segment_writes_frame_sized_masks_and_overlays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_samples(&data, Task::FundusDisc, 1..5);
    let shot =
        |n: u64| format!("{}={}", p(&data.join(format!("images/{n}.png"))), p(&data.join(format!("masks/{n}.png"))));
    let out = dir.path().join("out");
    let o = run(&[
        "--engine",
        p(&engine()),
        "segment",
        "--shot",
        &shot(1),
        "--shot",
        &shot(2),
        "--query",
        p(&data.join("images/3.png")),
        p(&data.join("images/4.png")),
        "--out",
        p(&out),
        "--overlay",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["shots"], 2);
    assert_eq!(json["results"].as_array().unwrap().len(), 2);
    let mask = image::open(out.join("3.mask.png")).unwrap().into_luma8();
    assert_eq!(mask.dimensions(), (288, 288));
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    let truth = image::open(data.join("masks/3.png")).unwrap().into_luma8();
    let dice = segicl::metrics::overlap(mask.as_raw(), truth.as_raw()).dice;
    assert!(dice > 0.8, "Dice {dice}");
    assert_eq!(image::open(out.join("4.overlay.png")).unwrap().into_rgb8().dimensions(), (288, 288));
}

#[test]
fn segment_with_roi_writes_nothing_outside_the_crop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_samples(&data, Task::FundusCup, 1..5);
    let shot =
        |n: u64| format!("{}={}", p(&data.join(format!("images/{n}.png"))), p(&data.join(format!("masks/{n}.png"))));
    let out = dir.path().join("out");
    let (s1, s2, s3) = (shot(1), shot(2), shot(3));
    let query = data.join("images/4.png");
    let prototype = engine();
    let args = [
        "--engine",
        p(&prototype),
        "segment",
        "--shot",
        &s1,
        "--shot",
        &s2,
        "--shot",
        &s3,
        "--query",
        p(&query),
        "--out",
        p(&out),
        "--json",
    ];
    let o = run(&[&args[..], &["--roi", "--roi-margin", "0.6"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((json["roi"]["margin"].as_f64().unwrap() - 0.6).abs() < 1e-6, "{json}");
    let crop = &json["results"][0]["roi_crop"];
    let at = |k: &str| crop[k].as_u64().unwrap_or_else(|| panic!("roi_crop lacks {k}: {json}")) as u32;
    let (x, y, w, h) = (at("x"), at("y"), at("width"), at("height"));
    assert!(w < 288 && h < 288, "{crop}");
    let mask = image::open(out.join("4.mask.png")).unwrap().into_luma8();
    for (px, py, v) in mask.enumerate_pixels() {
        assert!(v.0[0] == 0 || (x..x + w).contains(&px) && (y..y + h).contains(&py), "({px}, {py}) outside {crop}");
    }
    let truth = image::open(data.join("masks/4.png")).unwrap().into_luma8();
    let dice = segicl::metrics::overlap(mask.as_raw(), truth.as_raw()).dice;
    assert!(dice > 0.8, "Dice {dice} with ROI");
    // Without --roi: no crop.
    let o = run(&args);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json["roi"].is_null() && json["results"][0]["roi_crop"].is_null(), "{json}");
}

#[test]
fn segment_with_default_shots_needs_no_shot_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_samples(&data, Task::UsLesion, 7..8);
    let (query, prototype) = (data.join("images/7.png"), engine());
    let query = p(&query);
    let o =
        run(&["--engine", p(&prototype), "segment", "--task", "us-lesion", "--query", query, "--out", p(dir.path())]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.path().join("7.mask.png").exists());
    // The bundled engine's named tasks work the same way.
    let out = dir.path().join("bundled");
    let o = run(&["segment", "--task", "optic-disc", "--query", query, "--out", p(&out), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["shots"], 3, "{json}");
    assert!(out.join("7.mask.png").exists());
}

#[test]
fn shipped_quantised_engines_verify_inspect_and_segment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = run(&["synth", "--task", "fundus-disc", "--count", "1", "--first", "7", "--out", p(&data)]);
    assert!(o.status.success() && text(&o).contains("wrote 1 fundus-disc pairs"), "{}", text(&o));
    let query = data.join("images/7.png");
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    for (file, precision, calibration) in [
        ("segicl-ref-int8.plan", "encoder I8, decoder I8", Some("calibration minmax on 84 pairs; in float: ")),
        ("segicl-ref-fp16.plan", "encoder F16, decoder F16", None),
    ] {
        let engine = models.join(file);
        let o = run(&["--engine", p(&engine), "verify"]);
        assert!(o.status.success() && text(&o).contains("verified"), "{}", text(&o));
        let o = run(&["--engine", p(&engine), "inspect"]);
        let shown = text(&o);
        assert!(o.status.success() && shown.contains(precision), "{shown}");
        assert_eq!(calibration.is_some_and(|c| shown.contains(c)), calibration.is_some(), "{shown}");
        assert_eq!(shown.contains("CALIB"), calibration.is_some(), "{shown}");
        let out = dir.path().join(file);
        let o =
            run(&["--engine", p(&engine), "segment", "--task", "optic-disc", "--query", p(&query), "--out", p(&out)]);
        assert!(o.status.success() && out.join("7.mask.png").exists(), "{}", text(&o));
    }
}

/// One row per bad command line: its arguments and words its error must contain.
#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_samples(&data, Task::UsLesion, 1..3);
    let img = |n: u64| data.join(format!("images/{n}.png")).to_str().unwrap().to_string();
    let mask = |n: u64| data.join(format!("masks/{n}.png")).to_str().unwrap().to_string();
    let small = dir.path().join("small.png");
    save_png(&small, &OwnedImage::zeros(10, 10, PixelFormat::Gray8)).unwrap();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"not a png at all").unwrap();
    let onnx = dir.path().join("encoder.onnx");
    std::fs::write(&onnx, EngineFile::open(&engine()).unwrap().section(Tag::ENCODER).unwrap()).unwrap();
    let shot = format!("{}={}", img(1), mask(1));
    let out = p(dir.path()).to_string();
    let mut cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec!["synth".into(), "--task".into(), "us-lesions".into(), "--out".into(), out.clone()],
            vec!["unknown synthetic task `us-lesions`"],
        ),
        (
            vec!["eval".into(), "--synthetic".into(), "us-lesion".into(), "--threshold".into(), "1.5".into()],
            vec!["threshold 1.5 is not strictly between 0 and 1"],
        ),
        (
            vec![
                "segment".into(),
                "--shot".into(),
                format!("{}={}", img(1), p(&small)),
                "--query".into(),
                img(2),
                "--out".into(),
                out.clone(),
            ],
            vec!["10×10", "320×256"],
        ),
        (
            vec![
                "segment".into(),
                "--shot".into(),
                shot.clone(),
                "--query".into(),
                p(&garbage).into(),
                "--out".into(),
                out.clone(),
            ],
            vec!["garbage.png", "decode"],
        ),
        (
            vec![
                "segment".into(),
                "--shot".into(),
                shot.clone(),
                "--shot".into(),
                shot.clone(),
                "--shot".into(),
                shot.clone(),
                "--shot".into(),
                shot.clone(),
                "--query".into(),
                img(2),
                "--out".into(),
                out.clone(),
            ],
            vec!["at most 3"],
        ),
        (
            vec![
                "segment".into(),
                "--shot".into(),
                format!("{}=", img(1)),
                "--query".into(),
                img(2),
                "--out".into(),
                out.clone(),
            ],
            vec!["IMAGE=MASK"],
        ),
        (
            vec![
                "segment".into(),
                "--shot".into(),
                format!("{}={}", img(1), p(&dir.path().join("missing.png"))),
                "--query".into(),
                img(2),
                "--out".into(),
                out.clone(),
            ],
            // The operating system's reason once, ending the line.
            vec!["missing.png: No such file or directory (os error 2)\n"],
        ),
        (vec!["--engine".into(), p(&onnx).into(), "inspect".into()], vec!["bare ONNX", "segicl-edge pack"]),
        (vec!["--engine".into(), p(&dir.path().join("nope.plan")).into(), "inspect".into()], vec!["nope.plan"]),
        (vec!["--backend".into(), "cuda".into(), "inspect".into()], vec![]),
        (
            vec![
                "segment".into(),
                "--task".into(),
                "us-lesion".into(),
                "--roi-margin".into(),
                "0.3".into(),
                "--query".into(),
                img(2),
                "--out".into(),
                out.clone(),
            ],
            vec!["--roi"],
        ),
        (
            vec![
                "segment".into(),
                "--task".into(),
                "us-lesion".into(),
                "--roi".into(),
                "--roi-margin".into(),
                "-1".into(),
                "--query".into(),
                img(2),
                "--out".into(),
                out.clone(),
            ],
            vec!["ROI margin -1"],
        ),
        (
            vec!["eval".into(), "--synthetic".into(), "us-lesion".into(), "--baseline-engine".into(), p(&onnx).into()],
            vec!["prototype baseline", "encoder.onnx"],
        ),
        (
            vec![
                "segment".into(),
                "--task".into(),
                "liver".into(),
                "--query".into(),
                img(2),
                "--out".into(),
                out.clone(),
            ],
            vec!["liver", "optic-disc"],
        ),
    ];
    cases.push((
        vec!["eval".into(), "--synthetic".into(), "us-lesion".into(), "--draws".into(), "0".into()],
        vec!["--draws must be at least 1"],
    ));
    let segment = ["segment", "--task", "us-lesion", "--query", &img(2), "--out", &out].map(String::from);
    cases.push(([["--threads".into(), "100000".into()].as_slice(), &segment].concat(), vec!["threads 100000"]));
    cases.push((
        vec!["--engine".into(), out.clone(), "inspect".into()],
        vec!["is a directory; an engine is a regular file"],
    ));
    if !cfg!(any(feature = "cuda-12", feature = "cuda-13")) {
        // A build without the CUDA backend (with it, `tests/cuda_cli.rs` checks `--backend cuda`).
        let args = [["--backend".into(), "cuda".into()].as_slice(), &segment].concat();
        cases.push((args, vec!["this build has no CUDA backend", "--backend cpu"]));
    }
    for (args, words) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&args);
        let t = text(&o);
        if words.is_empty() {
            assert!(o.status.success(), "{args:?}: {t}");
            continue;
        }
        assert!(!o.status.success(), "{args:?} succeeded: {t}");
        assert!(!t.contains("panicked"), "{args:?} panicked: {t}");
        for w in words {
            assert!(t.contains(w), "{args:?}: `{t}` lacks `{w}`");
        }
    }
}

/// `segment` loses nothing: two queries that would write the same mask are refused before any
/// work; a bad query is reported and the others are still written; a mask that cannot be written
/// is an I/O error and leaves nothing half-written under its name.
#[test]
fn segment_output_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_samples(&data, Task::UsLesion, 1..4);
    let img = |n: u64| data.join(format!("images/{n}.png")).to_str().unwrap().to_string();
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(img(3), other.join("2.png")).unwrap();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"not a png").unwrap();
    let out = dir.path().join("out");
    let prototype = engine();
    let segment = |queries: &[&str]| {
        let mut args = vec!["--engine", p(&prototype), "segment", "--task", "us-lesion", "--out", p(&out), "--query"];
        args.extend(queries);
        run(&args)
    };

    let o = segment(&[&img(2), p(&other.join("2.png"))]);
    assert!(!o.status.success() && text(&o).contains("would both write 2.mask.png"), "{}", text(&o));
    assert!(!out.exists(), "nothing is written when two queries collide");

    let o = segment(&[&img(1), p(&garbage), &img(2)]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("garbage.png") && t.contains("1 of 3 queries failed"), "{t}");
    assert!(out.join("1.mask.png").is_file() && out.join("2.mask.png").is_file(), "{t}");
    assert!(!out.join("garbage.mask.png").exists());

    std::fs::remove_file(out.join("1.mask.png")).unwrap();
    std::fs::create_dir(out.join("1.mask.png")).unwrap();
    let o = segment(&[&img(1)]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("1.mask.png") && !t.contains("invalid argument"), "{t}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("partial")), "{left:?}");
}

#[test]
fn verify_names_the_damaged_section_and_exits_1() {
    let o = run(&["--engine", p(&engine()), "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("verified"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.plan");
    let mut bytes = std::fs::read(engine()).unwrap();
    let decoder = EngineFile::open(&engine()).unwrap().layout().find(Tag::DECODER).copied().unwrap();
    bytes[decoder.offset as usize + 100] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&["--engine", p(&bad), "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("DECODER") && text(&o).contains("checksum"), "{}", text(&o));
}

#[test]
fn pack_then_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let file = EngineFile::open(&engine()).unwrap();
    for (tag, name) in
        [(Tag::ENCODER, "e.onnx"), (Tag::DECODER, "d.onnx"), (Tag::MANIFEST, "m.json"), (Tag::CARD, "card.md")]
    {
        std::fs::write(dir.path().join(name), file.section(tag).unwrap()).unwrap();
    }
    write_samples(&dir.path().join("shots"), Task::FundusCup, 1..4);
    let out = dir.path().join("new.plan");
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let o = run(&[
        "pack",
        "--manifest",
        &f("m.json"),
        "--encoder",
        &f("e.onnx"),
        "--decoder",
        &f("d.onnx"),
        "--card",
        &f("card.md"),
        "--shots",
        &format!("cup={}", f("shots")),
        "-o",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["--engine", p(&out), "inspect", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["manifest"]["default_shot_tasks"], serde_json::json!(["cup"]));
    assert_eq!(json["sections"].as_array().unwrap().len(), 5);
    // Graphs that do not fit the manifest: nothing is left behind.
    let bad = dir.path().join("bad.plan");
    let o =
        run(&["pack", "--manifest", &f("m.json"), "--encoder", &f("d.onnx"), "--decoder", &f("e.onnx"), "-o", p(&bad)]);
    assert!(!o.status.success() && text(&o).contains("do not fit"), "{}", text(&o));
    assert!(!bad.exists());
}

#[test]
fn eval_json_has_one_row_per_shot_count() {
    let dir = tempfile::tempdir().unwrap();
    write_samples(dir.path(), Task::UsLesion, 1..7);
    let prototype = engine();
    let args =
        ["--engine", p(&prototype), "eval", "--data", p(dir.path()), "--shots", "1,3", "--draws", "2", "--seed", "4"];
    let o = run(&[&args[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = json["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["shots"], 3);
    assert_eq!(rows[1]["queries"], 2 * 3);
    assert!(rows[1]["dice_mean"].as_f64().unwrap() > 0.7, "{json}");
    let again = run(&[&args[..], &["--json"]].concat());
    assert_eq!(again.stdout, o.stdout, "the same seed gives the same figures");
}

#[test]
fn eval_scores_roi_and_baselines_on_the_same_draws() {
    let dir = tempfile::tempdir().unwrap();
    write_samples(dir.path(), Task::FundusCup, 1..8);
    // The prototype engine under another name: the baseline runs in a session of its own.
    let copy = dir.path().join("copy.plan");
    std::fs::copy(engine(), &copy).unwrap();
    let prototype = engine();
    let base =
        ["--engine", p(&prototype), "eval", "--data", p(dir.path()), "--shots", "1,3", "--draws", "2", "--seed", "3"];
    let eval = |extra: &[&str]| {
        let o = run(&[&base[..], extra].concat());
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    let json = |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
    let plain = json(&eval(&["--json", "--no-baselines"]));
    let full = json(&eval(&["--json", "--roi", "--baseline-engine", p(&copy)]));
    assert!(plain["results"][0].get("baselines").is_none() && plain["results"][0].get("roi").is_none(), "{plain}");
    assert_eq!(full["roi"]["margin"].as_f64(), Some(0.5));
    assert_eq!(full["baseline_engine"].as_str(), Some(p(&copy)));
    for (a, b) in plain["results"].as_array().unwrap().iter().zip(full["results"].as_array().unwrap()) {
        let dice = |v: &serde_json::Value| v["dice_mean"].as_f64().unwrap();
        assert_eq!(dice(a), dice(b), "the model's scores do not depend on the other methods");
        assert_eq!(dice(&b["baselines"]["prototype"]), dice(b), "the same engine gives the same masks");
        let copy_shots = dice(&b["baselines"]["copy-shots"]);
        assert!((0.0..0.6).contains(&copy_shots), "copy-shots Dice {copy_shots}: the cup moves between frames");
        assert!(dice(&b["roi"]) > 0.8, "{b}");
    }
    let table = text(&eval(&["--roi"]));
    for column in ["roi dice", "copy-shots", "prototype", "the model itself"] {
        assert!(table.contains(column), "`{table}` lacks `{column}`");
    }
}

#[test]
fn demo_and_bench_run_on_the_bundled_engine() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["demo", "--out", p(dir.path())]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("segicl-ref") && t.contains("fundus-cup") && t.contains("task switch"), "{t}");
    assert!(t.contains("optic-disc") && dir.path().join("optic-disc-0.png").exists(), "default shots: {t}");
    assert!(dir.path().join("us-lesion-0.png").exists());
    assert!(t.contains("refinement pass (litemedsam") && t.contains("refined"), "refined task: {t}");
    assert!(dir.path().join("refined-optic-disc-0.png").exists());
    let o = run(&["bench", "--frames", "3", "--warmup", "1", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["stages"].as_array().unwrap().len(), 7);
}

/// The tests' stand-in refiner (its mask is the box; `tests/golden/box-fill.refiner`).
fn stand_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/box-fill.refiner")
}

#[test]
fn segment_and_eval_refine_with_a_refiner() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_samples(&data, Task::UsLesion, 1..7);
    let shot = format!("{}={}", p(&data.join("images/1.png")), p(&data.join("masks/1.png")));
    let out = dir.path().join("out");
    let (refiner, prototype, query) = (stand_in(), engine(), data.join("images/2.png"));
    let segment = |extra: &[&str]| {
        let base = ["--engine", p(&prototype), "segment", "--shot", &shot, "--query", p(&query)];
        run(&[&base[..], &["--out", p(&out), "--json"], extra].concat())
    };
    let o = segment(&[
        "--refine",
        "--refiner",
        p(&refiner),
        "--box-rule",
        "all-blobs",
        "--refine-margin",
        "0",
        "--no-gate",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["refiner"]["options"]["rule"], "all-blobs", "{json}");
    assert_eq!(json["refine_gate"]["shots"], 0, "--no-gate");
    let b = json["results"][0]["refine_box"].as_array().expect("the frame was refined");
    assert!(b[0].as_f64().unwrap() < b[2].as_f64().unwrap());
    let plain = segment(&[]);
    let plain: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(plain["results"][0]["refine_box"].is_null() && plain["refiner"].is_null(), "{plain}");

    let eval =
        ["--engine", p(&prototype), "eval", "--data", p(&data), "--shots", "1,2", "--draws", "2", "--no-baselines"];
    let o = run(&[&eval[..], &["--refine", "--refiner", p(&refiner), "--json"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for row in json["results"].as_array().unwrap() {
        let refine = &row["refine"];
        assert!(refine["dice_mean"].as_f64().is_some() && refine["iou_mean"].as_f64().is_some(), "{row}");
        assert!((0.0..=1.0).contains(&refine["gate_on"].as_f64().unwrap()), "{row}");
    }
    let o = run(&[&eval[..], &["--refine", "--refiner", p(&refiner), "--no-gate", "--json"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for row in json["results"].as_array().unwrap() {
        assert_eq!(row["refine"]["gate_on"], 1.0, "--no-gate: every draw refined: {row}");
    }
    let table = text(&run(&[&eval[..], &["--refine", "--refiner", p(&refiner)]].concat()));
    assert!(table.contains("refined") && table.contains("gate on"), "{table}");
}

#[test]
fn refiner_files_inspect_verify_pack_and_bad_uses() {
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in();
    let o = run(&["inspect", "--refiner", p(&refiner), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((json["kind"].as_str(), json["manifest"]["name"].as_str()), (Some("refiner"), Some("box-fill")));
    let o = run(&["inspect", "--refiner", p(&refiner)]);
    assert!(text(&o).contains("refiner, format 1.0") && text(&o).contains("box"), "{}", text(&o));
    let o = run(&["verify", "--refiner", p(&refiner)]);
    assert!(o.status.success() && text(&o).contains("verified"), "{}", text(&o));
    // Damage in the decoder is named.
    let file = EngineFile::open(&refiner).unwrap();
    let mut bytes = std::fs::read(&refiner).unwrap();
    bytes[file.layout().find(Tag::DECODER).unwrap().offset as usize + 10] ^= 4;
    let bad = dir.path().join("bad.refiner");
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&["verify", "--refiner", p(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("DECODER") && text(&o).contains("checksum"), "{}", text(&o));
    // pack-refiner rebuilds the same file from its parts.
    for (tag, name) in
        [(Tag::ENCODER, "e.onnx"), (Tag::DECODER, "d.onnx"), (Tag::MANIFEST, "m.json"), (Tag::CARD, "c.md")]
    {
        std::fs::write(dir.path().join(name), file.section(tag).unwrap()).unwrap();
    }
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let out = dir.path().join("new.refiner");
    let pack = |encoder: &str, decoder: &str| {
        let args = ["pack-refiner", "--manifest", &f("m.json"), "--encoder", &f(encoder), "--decoder", &f(decoder)];
        run(&[&args[..], &["--card", &f("c.md"), "-o", p(&out)]].concat())
    };
    let o = pack("e.onnx", "d.onnx");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&refiner).unwrap());
    let o = pack("d.onnx", "e.onnx");
    assert!(!o.status.success() && text(&o).contains("do not fit"), "{}", text(&o));
    assert!(!out.exists(), "nothing is left behind");
    // A refiner is not an engine, an engine is not a refiner, and options are checked.
    let data = dir.path().join("data");
    write_samples(&data, Task::UsLesion, 1..3);
    let shot = format!("{}={}", p(&data.join("images/1.png")), p(&data.join("masks/1.png")));
    let query = p(&data.join("images/2.png")).to_string();
    let prototype = engine();
    let refine = ["--engine", p(&prototype), "segment", "--shot", &shot, "--refine", "--refiner", p(&refiner)];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--engine", p(&refiner), "segment", "--shot", &shot], "is a refiner"),
        (
            vec!["--engine", p(&prototype), "segment", "--shot", &shot, "--refine", "--refiner", p(&prototype)],
            "not a refiner",
        ),
        ([&refine[..], &["--refine-margin", "2"]].concat(), "margin"),
        ([&refine[..], &["--box-rule", "huge"]].concat(), "largest-blob"),
        (vec!["--engine", p(&prototype), "segment", "--shot", &shot, "--refiner", p(&refiner)], "--refine"),
    ];
    for (args, needle) in cases {
        let o = run(&[&args[..], &["--query", &query, "--out", p(dir.path())]].concat());
        assert_eq!(o.status.code().map(|c| c != 0), Some(true), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: `{}` lacks `{needle}`", text(&o));
    }
}

/// A copy of the prototype engine with a plan record baked for each of `graphs` (encoder, decoder),
/// the key naming the graph section's CRC, or another one with `stale`.
fn baked_engine(dir: &Path, name: &str, graphs: &[(segicl::manifest::Graph, bool)]) -> PathBuf {
    use segicl::backend::tensorrt::plans::{self, DeviceId, PlanKey};
    let file = EngineFile::open(&engine()).unwrap();
    let mut writer = segicl::format::EngineWriter::new();
    for s in &file.layout().sections {
        writer = writer.section_with_flags(s.tag, s.flags, file.section(s.tag).unwrap().to_vec());
    }
    for &(graph, stale) in graphs {
        let source = if graph == segicl::manifest::Graph::Encoder { Tag::ENCODER } else { Tag::DECODER };
        let crc = file.layout().find(source).unwrap().crc32 ^ u32::from(stale);
        let key = PlanKey {
            graph,
            graph_crc: crc,
            precision: "f32".into(),
            builder: "workspace 256 MiB".into(),
            tensorrt: "TensorRT 10.3.0.30".into(),
            device: DeviceId { name: "Orin".into(), compute_capability: (8, 7), sms: 16, driver: 12060 },
        };
        writer = writer.section_with_flags(plans::baked_tag(graph), 0, plans::encode_record(&key, b"plan bytes"));
    }
    let path = dir.join(name);
    std::fs::write(&path, writer.to_bytes()).unwrap();
    path
}

#[test]
fn baked_tensorrt_plans_are_shown_and_checked() {
    use segicl::manifest::Graph;
    let dir = tempfile::tempdir().unwrap();
    let good = baked_engine(dir.path(), "good.plan", &[(Graph::Encoder, false)]);
    let o = run(&["--engine", p(&good), "inspect"]);
    let out = text(&o);
    assert!(out.contains(": engine format 1.2,") && out.contains("TRT_ENC"), "{out}");
    assert!(out.contains("tensorrt plan  encoder (0 KiB): encoder crc "), "{out}");
    assert!(out.contains("f32, workspace 256 MiB, TensorRT 10.3.0.30 on Orin (sm_87, 16 SMs, driver 12.6)"), "{out}");
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["--engine", p(&good), "inspect", "--json"]).stdout).unwrap();
    assert_eq!(json["tensorrt_plans"][0]["key"]["device"]["name"], "Orin");
    // A device without TensorRT runs the ONNX graphs: the file verifies and segments on the CPU.
    let o = run(&["--engine", p(&good), "verify"]);
    assert!(o.status.success() && text(&o).contains("ok   baked encoder plan for encoder crc"), "{}", text(&o));

    let stale = baked_engine(dir.path(), "stale.plan", &[(Graph::Encoder, false), (Graph::Decoder, true)]);
    let o = run(&["--engine", p(&stale), "inspect"]);
    assert!(text(&o).contains("tensorrt plan  decoder (0 KiB): unusable: it was built from a decoder graph with crc"));
    let o = run(&["--engine", p(&stale), "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL baked decoder plan: it was built from a decoder graph"), "{}", text(&o));

    // A damaged record.
    let mut bytes = std::fs::read(&good).unwrap();
    let section = EngineFile::open(&good).unwrap().layout().find(Tag::TRT_ENCODER).copied().unwrap();
    bytes[section.offset as usize..][..8].copy_from_slice(b"XXXXXXXX");
    let damaged = dir.path().join("damaged.plan");
    let file = EngineFile::open(&good).unwrap();
    let mut writer = segicl::format::EngineWriter::new();
    for s in &file.layout().sections {
        let payload = &bytes[s.offset as usize..][..s.length as usize];
        writer = writer.section_with_flags(s.tag, s.flags, payload.to_vec());
    }
    std::fs::write(&damaged, writer.to_bytes()).unwrap();
    let o = run(&["--engine", p(&damaged), "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL baked encoder plan: not a stored TensorRT plan"), "{}", text(&o));
}

#[test]
fn the_tensorrt_backend_and_bake_say_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("baked.plan");
    for args in [
        vec!["--engine", p(&engine()), "bake", "-o", p(&out)],
        vec!["--engine", p(&engine()), "--backend", "tensorrt", "bench", "--frames", "1"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        let t = text(&o);
        assert_eq!(t.lines().count(), 1, "{args:?}: one line: {t}");
        assert!(t.contains("TensorRT") || t.contains("tensorrt"), "{args:?}: {t}");
        if !cfg!(feature = "tensorrt") {
            assert!(t.contains("this build has no TensorRT backend: build"), "{args:?}: {t}");
        }
    }
    assert!(!out.exists(), "nothing written");
}
