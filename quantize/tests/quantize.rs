//! segicl-quantize end to end: int8 and fp16 versions of the prototype engine and of the learned
//! reference engine stay within stated tolerances of fp32, record what they are, and bad
//! calibration folders fail with a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;

use segicl::format::Tag;
use segicl::manifest::{CalibrationMethod, DType};
use segicl::{Engine, EngineMetadata, EngineOptions};
use segicl_eval::evaluation::{score, set_shots, synthetic_samples, write_synthetic};
use segicl_eval::synthetic::Task;
use segicl_quantize::int8::KeepFloat;
use segicl_quantize::{quantize, write, Options, Target};

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(name)
}

fn options(engine: &Path, target: Target, calib: Option<&Path>) -> Options {
    Options {
        engine: engine.to_path_buf(),
        target,
        calib: calib.map(Path::to_path_buf),
        method: CalibrationMethod::Minmax,
        calib_pairs: 16,
        seed: 0,
        keep_float: KeepFloat::Auto,
        shot_side: None,
    }
}

/// Quantises `engine` to `target` (calibrated on synthetic ultrasound lesions and optic discs,
/// 8 pairs each) into `dir`.
fn quantised(engine: &Path, target: Target, dir: &Path) -> PathBuf {
    let calib = dir.join("calib");
    if !calib.exists() {
        write_synthetic(&calib, Task::UsLesion, 100..108).unwrap();
        write_synthetic(&calib, Task::FundusDisc, 200..208).unwrap();
    }
    let out = dir.join(format!("{target:?}.plan"));
    write(&out, &quantize(&options(engine, target, Some(&calib))).unwrap().bytes).unwrap();
    out
}

/// Over synthetic frames of `task` (3 shots): the largest |logit difference| between the two
/// engines relative to the largest |logit| of `a`, and the mean Dice of each against the
/// reference masks.
fn compare(a: &Path, b: &Path, task: Task) -> (f32, f64, f64) {
    let open = |p: &Path| Engine::open(p, &EngineOptions::default()).unwrap().session().unwrap();
    let (mut sa, mut sb) = (open(a), open(b));
    let data = synthetic_samples(task, 500, 11);
    set_shots(&mut sa, &data, &[0, 1, 2]).unwrap();
    set_shots(&mut sb, &data, &[0, 1, 2]).unwrap();
    let (mut diff, mut top, mut da, mut db) = (0f32, 0f32, 0.0, 0.0);
    for query in &data[3..] {
        da += score(&mut sa, query).unwrap().0.dice / 8.0;
        db += score(&mut sb, query).unwrap().0.dice / 8.0;
        let d = sa.logits().iter().zip(sb.logits()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        diff = diff.max(d);
        top = sa.logits().iter().fold(top, |m, x| m.max(x.abs()));
    }
    eprintln!("{} vs {} on {task:?}: max |Δ logit| {diff} of {top}, Dice {da:.4} → {db:.4}", a.display(), b.display());
    (diff / top, da, db)
}

/// fp16 and int8 versions of `engine` against fp32, on the calibration task and another one.
/// Tolerances (|Δ logit| relative to the largest |logit|): fp16 ≤ 0.002 and |Δ Dice| ≤ 0.002;
/// int8 ≤ 0.1 and |Δ Dice| ≤ 0.02.
fn stays_close(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = model(engine);
    for (target, logit_tol, dice_tol) in [(Target::Fp16, 0.002, 0.002), (Target::Int8, 0.1, 0.02)] {
        let q = quantised(&fp32, target, dir.path());
        for task in [Task::UsLesion, Task::FundusDisc] {
            let (diff, da, db) = compare(&fp32, &q, task);
            assert!(diff <= logit_tol, "{engine} {target:?} on {task:?}: max |Δ logit| is {diff} of the largest");
            assert!((da - db).abs() <= dice_tol, "{engine} {target:?} on {task:?}: Dice {da:.4} → {db:.4}");
        }
    }
}

#[test]
fn the_prototype_engine_stays_close_to_fp32() {
    stays_close("prototype.plan");
}

#[test]
fn the_learned_reference_engine_stays_close_to_fp32() {
    stays_close("segicl-ref.plan");
}

#[test]
fn quantised_engines_are_smaller_verify_and_record_their_precision() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = model("segicl-ref.plan");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let graphs = |m: &EngineMetadata| {
        let len = |t| m.file.layout().find(t).unwrap().length as f64;
        len(Tag::ENCODER) + len(Tag::DECODER)
    };
    let reference = EngineMetadata::open(&fp32).unwrap();
    for (target, dtype, file_share, graph_share) in
        [(Target::Int8, DType::I8, 0.30, 0.35), (Target::Fp16, DType::F16, 0.55, 0.55)]
    {
        let q = quantised(&fp32, target, dir.path());
        // What `segicl-edge verify` checks: every crc32, the manifest, both graphs load.
        let meta = EngineMetadata::open(&q).unwrap();
        Engine::open(&q, &EngineOptions::default()).unwrap();
        assert_eq!((meta.manifest.precision.encoder, meta.manifest.precision.decoder), (dtype, dtype));
        assert!(size(&q) <= file_share * size(&fp32), "{target:?}: {} of {} bytes", size(&q), size(&fp32));
        assert!(graphs(&meta) <= graph_share * graphs(&reference), "{target:?} graphs");
        assert_eq!(meta.shots.names().collect::<Vec<_>>(), reference.shots.names().collect::<Vec<_>>());
        match target {
            Target::Int8 => {
                let c = meta.manifest.calibration.as_ref().expect("int8 records its calibration");
                assert_eq!((c.method, c.pairs), (CalibrationMethod::Minmax, 16));
                assert!(c.float_nodes.iter().any(|n| n.contains("head")), "{:?}", c.float_nodes);
                let calib: serde_json::Value = serde_json::from_slice(meta.file.section(Tag::CALIB).unwrap()).unwrap();
                assert!(calib["decoder"].as_object().is_some_and(|m| !m.is_empty()));
            }
            Target::Fp16 => assert!(meta.manifest.calibration.is_none() && meta.file.section(Tag::CALIB).is_none()),
        }
        let err = quantize(&options(&q, Target::Int8, Some(&dir.path().join("calib")))).unwrap_err();
        assert!(format!("{err:#}").contains("quantise an fp32 engine"), "{err:#}");
    }
}

/// Every activation QuantizeLinear of `engine`'s two graphs: checks that its zero point is a
/// scalar int8 0 and its scale the CALIB section's `amax / 127` for the tensor it reads (TensorRT
/// imports QDQ as symmetric int8: a uint8 zero point or an `amax / 255` scale would clip at
/// about amax / 2 there). Returns how many there are.
fn check_symmetric_int8_activations(engine: &Path) -> usize {
    use segicl_quantize::graph::{decode, f32_values, graph, INT8};
    let meta = EngineMetadata::open(engine).unwrap();
    let calib: serde_json::Value = serde_json::from_slice(meta.file.section(Tag::CALIB).unwrap()).unwrap();
    let mut count = 0;
    for (tag, key) in [(Tag::ENCODER, "encoder"), (Tag::DECODER, "decoder")] {
        let model = decode(meta.file.section(tag).unwrap(), key).unwrap();
        let g = graph(&model);
        let init = |name: &str| g.initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no `{name}`"));
        for n in g.node.iter().filter(|n| n.op_type == "QuantizeLinear") {
            let tensor = &n.input[0];
            let zero = init(&n.input[2]);
            assert_eq!(
                (zero.data_type, zero.dims.as_slice(), zero.raw_data.as_slice()),
                (INT8, &[][..], &[0u8][..]),
                "{key} `{tensor}`: zero point {zero:?}"
            );
            let amax = calib[key][tensor]["amax"].as_f64().unwrap_or_else(|| panic!("{key} `{tensor}` not in CALIB"));
            let amax = amax as f32;
            let expected = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            assert_eq!(f32_values(init(&n.input[1])).unwrap(), vec![expected], "{key} `{tensor}`: scale");
            count += 1;
        }
    }
    count
}

#[test]
fn activations_are_symmetric_int8_in_new_and_shipped_engines() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = quantised(&model("segicl-ref.plan"), Target::Int8, dir.path());
    let shipped = model("segicl-ref-int8.plan");
    let (fresh, shipped) = (check_symmetric_int8_activations(&fresh), check_symmetric_int8_activations(&shipped));
    // The reference model's 45 quantised nodes read 51 distinct activation tensors (`auto`).
    assert_eq!((fresh, shipped), (51, 51));
}

#[test]
fn bad_calibration_folders_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = model("prototype.plan");
    let folder = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(d.join("images")).unwrap();
        std::fs::create_dir_all(d.join("masks")).unwrap();
        d
    };
    let empty = folder("empty");
    let unreadable = folder("unreadable");
    std::fs::write(unreadable.join("images/a.png"), b"not a png").unwrap();
    std::fs::write(unreadable.join("masks/a.png"), b"not a png").unwrap();
    let mismatched = folder("mismatched");
    write_synthetic(&mismatched, Task::UsLesion, 1..3).unwrap();
    let small = segicl::OwnedImage::zeros(5, 5, segicl::PixelFormat::Gray8);
    segicl_eval::dataset::save_png(&mismatched.join("masks/1.png"), &small).unwrap();
    let single = folder("single");
    write_synthetic(&single, Task::UsLesion, 1..2).unwrap();
    let unpaired = folder("unpaired");
    write_synthetic(&unpaired, Task::UsLesion, 1..3).unwrap();
    std::fs::remove_dir_all(unpaired.join("masks")).unwrap();
    std::fs::create_dir_all(unpaired.join("masks")).unwrap();
    let cases: [(Option<&Path>, &str); 7] = [
        (Some(&dir.path().join("missing")), "missing"),
        (Some(&empty), "no image/mask pairs"),
        (Some(&unpaired), "no image/mask pairs"),
        (Some(&unreadable), "cannot decode image"),
        (Some(&mismatched), "mask is 5×5 but the image is"),
        (Some(&single), "needs at least 2"),
        (None, "int8 needs --calib"),
    ];
    for (calib, needle) in cases {
        let err = format!("{:#}", quantize(&options(&engine, Target::Int8, calib)).unwrap_err());
        assert!(err.contains(needle), "expected `{needle}` in `{err}`");
    }
    let mut o = options(&engine, Target::Int8, Some(&mismatched));
    o.keep_float = KeepFloat::Nodes(vec!["no-such-node".into()]);
    let err = format!("{:#}", quantize(&o).unwrap_err());
    assert!(err.contains("no-such-node"), "{err}");
}

#[test]
fn the_command_writes_an_engine_and_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib");
    write_synthetic(&calib, Task::FundusDisc, 1..9).unwrap();
    let (out, report) = (dir.path().join("p8.plan"), dir.path().join("report.md"));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let run = |args: &[String]| Command::new(env!("CARGO_BIN_EXE_segicl-quantize")).args(args).output().unwrap();
    let o = run(&[
        "--engine".into(),
        p(&model("prototype.plan")),
        "--precision".into(),
        "int8".into(),
        "--calib".into(),
        p(&calib),
        "--draws".into(),
        "1".into(),
        "-o".into(),
        p(&out),
        "--report".into(),
        p(&report),
    ]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    let md = std::fs::read_to_string(&report).unwrap();
    for needle in ["| 3 | 5 |", "max abs logit diff", "## Size", "| 2 | "] {
        assert!(md.contains(needle), "report lacks `{needle}`:\n{md}");
    }
    EngineMetadata::open(&out).unwrap();
    // A bad engine path: one clear line, non-zero exit, nothing written.
    let missing = dir.path().join("nope.plan");
    let bad_out = dir.path().join("bad.plan");
    let o = run(&["--engine".into(), p(&missing), "--precision".into(), "fp16".into(), "-o".into(), p(&bad_out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.starts_with("segicl-quantize: ") && err.contains("nope.plan"), "{err}");
    assert!(!bad_out.exists());
}

/// The CPU backend's plan for a graph of `engine`: how many nodes compute in f16.
fn f16_nodes_in_cpu_plan(engine: &Path) -> usize {
    use segicl::manifest::{Direction, Graph};
    use tract_onnx::prelude::*;
    let meta = EngineMetadata::open(engine).unwrap();
    let mut total = 0;
    for (graph, tag) in [(Graph::Encoder, Tag::ENCODER), (Graph::Decoder, Tag::DECODER)] {
        let mut model = tract_onnx::onnx().model_for_read(&mut meta.file.section(tag).unwrap()).unwrap();
        for ix in 0..model.input_outlets().unwrap().len() {
            let name = model.node(model.input_outlets().unwrap()[ix].node).name.clone();
            let spec = meta.manifest.tensors(graph, Direction::Input).find(|t| t.name == name).unwrap();
            model.set_input_fact(ix, f32::fact(&spec.shape).into()).unwrap();
        }
        let plan = model.into_optimized().unwrap();
        total +=
            plan.nodes().iter().filter(|n| n.outputs.iter().any(|o| o.fact.datum_type == f16::datum_type())).count();
    }
    total
}

#[test]
fn the_cpu_backend_upcasts_f16_weights_at_open() {
    // tract's f16 arithmetic is unusably slow on x86: every Cast of an f16 weight must be folded
    // into an f32 constant when the graph is optimised, leaving no f16 node to run per frame.
    let dir = tempfile::tempdir().unwrap();
    let fp16 = quantised(&model("segicl-ref.plan"), Target::Fp16, dir.path());
    let meta = EngineMetadata::open(&fp16).unwrap();
    let graph = segicl_quantize::graph::decode(meta.file.section(Tag::DECODER).unwrap(), "decoder").unwrap();
    let stored_f16 = segicl_quantize::graph::graph(&graph)
        .initializer
        .iter()
        .filter(|t| t.data_type == segicl_quantize::graph::FLOAT16)
        .count();
    assert!(stored_f16 > 10, "the decoder stores {stored_f16} f16 weights");
    assert_eq!(f16_nodes_in_cpu_plan(&fp16), 0);
}
