//! Hostile engines and inputs: each is refused with a clear error (or handled), never a panic, a
//! hang, a silent empty mask or a crash. One table per kind of bad input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use segicl::format::{EngineWriter, Tag};
use segicl::manifest::Normalisation;
use segicl::pack::EngineParts;
use segicl::{BackendChoice, Engine, EngineMetadata, EngineOptions, Error, MaskMut, OwnedImage, PixelFormat};
use segicl_eval::synthetic::Task;
use segicl_models::onnx::{Attr, GraphBuilder};
use segicl_models::prototype::{self, FEATURES, RESOLUTION, TOKENS};
use segicl_tests::{prototype_path, sample, set_shots};

/// A decoder of the prototype's contract whose logits are the sum of the features plus `tail`'s
/// scalar: `tail` adds nodes to the graph and returns the value added to every logit.
fn decoder_with(tail: impl FnOnce(&mut GraphBuilder) -> String) -> Vec<u8> {
    decoder_declaring(&[1, FEATURES, RESOLUTION, RESOLUTION], tail)
}

/// [`decoder_with`], its input `feat_0` declared with the shape `feat` (the manifest's or not).
fn decoder_declaring(feat: &[usize], tail: impl FnOnce(&mut GraphBuilder) -> String) -> Vec<u8> {
    let (r, n) = (RESOLUTION, 3 * TOKENS);
    let mut g = GraphBuilder::new("hostile-decoder");
    let feat = g.input("feat_0", feat);
    g.input("ctx", &[1, n, FEATURES]);
    g.input("ctx_valid", &[1, n]);
    let axis = g.ints(&[1]);
    let base = g.op("ReduceSum", &[&feat, &axis], vec![("keepdims", Attr::Int(1))]);
    let extra = tail(&mut g);
    let logits = g.op("Add", &[&base, &extra], vec![]);
    g.output(&logits, "logits", &[1, 1, r, r]);
    g.finish()
}

/// The sum of all elements of `value` (a scalar), so that any shape can feed the logits.
fn total(g: &mut GraphBuilder, value: &str) -> String {
    g.op("ReduceSum", &[value], vec![("keepdims", Attr::Int(0))])
}

/// The prototype engine with `decoder`, written to `dir/name`.
fn engine_with_decoder(dir: &Path, name: &str, decoder: Vec<u8>) -> PathBuf {
    let mut parts = prototype::engine_parts().unwrap();
    parts.decoder = decoder;
    let path = dir.join(name);
    parts.write(&path).unwrap();
    path
}

fn open(path: &Path) -> segicl::Result<Engine> {
    Engine::open(path, &EngineOptions::default())
}

#[test]
fn malformed_graphs_are_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    type Tail = Box<dyn Fn(&mut GraphBuilder) -> String>;
    let table: Vec<(&str, Tail, &[&str])> = vec![
        (
            "a shape of -1 for ConstantOfShape",
            Box::new(|g| {
                let shape = g.ints(&[-1, 4]);
                let v = g.op("ConstantOfShape", &[&shape], vec![]);
                total(g, &v)
            }),
            &["decoder:"],
        ),
        (
            "Expand to 2^40 elements",
            Box::new(|g| {
                let one = g.scalar(1.0);
                let shape = g.ints(&[1 << 20, 1 << 20]);
                let v = g.op("Expand", &[&one, &shape], vec![]);
                total(g, &v)
            }),
            &["decoder:"],
        ),
        (
            "ConstantOfShape to 2^40 elements",
            Box::new(|g| {
                let shape = g.ints(&[1 << 20, 1 << 20]);
                let v = g.op("ConstantOfShape", &[&shape], vec![]);
                total(g, &v)
            }),
            &["decoder:"],
        ),
        (
            "Range to 10^12 elements",
            Box::new(|g| {
                let (start, limit, delta) = (g.scalar(0.0), g.scalar(1e12), g.scalar(1.0));
                let v = g.op("Range", &[&start, &limit, &delta], vec![]);
                total(g, &v)
            }),
            &["decoder:"],
        ),
        (
            "Range with a step of 0",
            Box::new(|g| {
                let (start, limit, delta) = (g.scalar(0.0), g.scalar(10.0), g.scalar(0.0));
                let v = g.op("Range", &[&start, &limit, &delta], vec![]);
                total(g, &v)
            }),
            &["decoder:"],
        ),
        ("an input no node produces", Box::new(|g| g.op("Neg", &["nowhere"], vec![])), &["decoder:"]),
        (
            "a Transpose perm that is not a permutation",
            Box::new(|g| {
                let v = g.constant(&[1, 2, 2], vec![0.0; 4]);
                let t = g.op("Transpose", &[&v], vec![("perm", Attr::Ints(vec![0, 1, 1]))]);
                total(g, &t)
            }),
            &["decoder:", "perm", "[0, 1, 1]"],
        ),
        (
            // Found by the fuzzer in the native executor's lowering (it built a 2^43-entry index
            // list for edge padding before anything checked the size).
            "an edge Pad of 2^43 elements",
            Box::new(|g| {
                let v = g.constant(&[1, 4], vec![0.0; 4]);
                let pads = g.ints(&[0, 0, 0, 1 << 43]);
                let t = g.op("Pad", &[&v, &pads], vec![("mode", Attr::Str("edge"))]);
                total(g, &t)
            }),
            &["decoder:"],
        ),
        (
            "a Softmax axis of 2^40",
            Box::new(|g| {
                let v = g.constant(&[1, 4], vec![0.0; 4]);
                let t = g.op("Softmax", &[&v], vec![("axis", Attr::Int(1 << 40))]);
                total(g, &t)
            }),
            &["decoder:", "axis", "1099511627776"],
        ),
    ];
    for (i, (what, tail, words)) in table.into_iter().enumerate() {
        let path = engine_with_decoder(dir.path(), &format!("{i}.plan"), decoder_with(tail));
        let err = segicl::guard::no_panic(|| open(&path))
            .unwrap_or_else(|panic| panic!("{what}: Engine::open panicked: {panic}"))
            .expect_err(what)
            .to_string();
        for w in words {
            assert!(err.contains(w), "{what}: `{err}` lacks `{w}`");
        }
    }
}

#[test]
fn a_graph_over_the_node_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let chain = decoder_with(|g| {
        let mut v = g.scalar(0.0);
        for _ in 0..10_000 {
            v = g.op("Relu", &[&v], vec![]);
        }
        v
    });
    let path = engine_with_decoder(dir.path(), "chain.plan", chain);
    let err = open(&path).unwrap_err().to_string();
    assert!(err.starts_with("decoder:") && err.contains("nodes, over the limit"), "{err}");
}

/// Found by the fuzzer: tract's shape inference of a LayerNormalization over a rank-0 tensor
/// counts axes up to `usize::MAX` and never returns. The plan's lowering finds such a node
/// invalid, and tract is not given the graph, on `auto` (which falls back to tract when the native
/// executor refuses) and on `--backend tract` alike. Found again by the fuzzer: a graph input
/// declared with a shape the manifest contradicts stopped the lowering before it reached the
/// node, so tract was given the graph; such a graph is now invalid itself.
#[test]
fn a_graph_tract_would_loop_on_is_refused_before_tract() {
    let dir = tempfile::tempdir().unwrap();
    let layer_norm = |g: &mut GraphBuilder, x: &str| {
        let scale = g.scalar(1.0);
        let v = g.op("LayerNormalization", &[x, &scale], vec![("axis", Attr::Int(-1))]);
        total(g, &v)
    };
    let cases: [(&str, Vec<u8>, &[&str]); 2] = [
        (
            "a LayerNormalization of a rank-0 tensor",
            decoder_with(|g| {
                let scalar = total(g, "feat_0");
                layer_norm(g, &scalar)
            }),
            &["LayerNormalization", "is invalid", "axis -1 is out of range for rank 0"],
        ),
        (
            "the same, of a scalar constant, behind an input declared with batch 0",
            decoder_declaring(&[0, FEATURES, RESOLUTION, RESOLUTION], |g| {
                let scalar = g.scalar(2.0);
                layer_norm(g, &scalar)
            }),
            &["feat_0", "is invalid", "does not fit the declared"],
        ),
    ];
    for (i, (what, decoder, words)) in cases.into_iter().enumerate() {
        let path = engine_with_decoder(dir.path(), &format!("rank0-{i}.plan"), decoder);
        for backend in [BackendChoice::Auto, BackendChoice::Tract] {
            let (done, result) = std::sync::mpsc::channel();
            let engine = path.clone();
            // In a thread, so that a regression fails here instead of hanging the suite.
            std::thread::spawn(move || {
                let err = Engine::open(&engine, &EngineOptions { backend, threads: 1 }).err().map(|e| e.to_string());
                let _ = done.send(err);
            });
            let err = result
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("{what}, {backend:?}: Engine::open still running after 120 s"))
                .unwrap_or_else(|| panic!("{what}, {backend:?}: the engine opened"));
            for w in ["decoder:"].iter().chain(words) {
                assert!(err.contains(w), "{what}, {backend:?}: `{err}` lacks `{w}`");
            }
        }
    }
}

/// Engines whose graphs compute NaN or infinity: the frame or shot is an error of its own kind,
/// never a mask (an all-background mask from NaN logits looked like "nothing found").
#[test]
fn non_finite_outputs_are_an_error_not_a_mask() {
    let dir = tempfile::tempdir().unwrap();
    let table: Vec<(&str, f32)> =
        vec![("NaN", f32::NAN), ("infinity", f32::INFINITY), ("-infinity", f32::NEG_INFINITY)];
    let (frame, _) = sample(Task::UsLesion, 7);
    for (what, value) in table {
        let path = engine_with_decoder(dir.path(), &format!("{what}.plan"), decoder_with(|g| g.scalar(value)));
        let mut session = open(&path).unwrap().session().unwrap();
        set_shots(&mut session, Task::UsLesion, &[1]);
        let mut out = vec![7u8; frame.width * frame.height];
        let err = session
            .segment(&frame.view(), &mut MaskMut::packed(&mut out, frame.width, frame.height).unwrap())
            .unwrap_err();
        assert!(matches!(err, Error::NonFinite { graph: "decoder", .. }), "{what}: {err}");
        assert!(err.to_string().contains("NaN or infinite"), "{what}: {err}");
        assert!(out.iter().all(|&v| v == 7), "{what}: the mask was written");
    }
}

/// Manifests whose normalisation would turn pixels into infinities or huge values (NaN and
/// infinity cannot be written in JSON at all).
#[test]
fn unbounded_normalisation_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let table: Vec<(&str, Normalisation)> = vec![
        ("mean 1e38", Normalisation::MeanStd { mean: vec![1e38], std: vec![1.0] }),
        ("std 1e-45", Normalisation::MeanStd { mean: vec![0.5], std: vec![1e-45] }),
        ("std 0", Normalisation::MeanStd { mean: vec![0.5], std: vec![0.0] }),
        ("std 1e7", Normalisation::MeanStd { mean: vec![0.5], std: vec![1e7] }),
        ("two means for one channel", Normalisation::MeanStd { mean: vec![0.5, 0.5], std: vec![0.2] }),
    ];
    let parts = prototype::engine_parts().unwrap();
    for (what, normalisation) in table {
        let mut manifest = parts.manifest.clone();
        manifest.normalisation = normalisation;
        manifest.default_shot_tasks = parts.shots.names().map(str::to_string).collect();
        // Written past the writer's own check, as a damaged or hand-made file would be.
        let bytes = EngineWriter::new()
            .section(Tag::MANIFEST, manifest.to_json())
            .section(Tag::ENCODER, parts.encoder.clone())
            .section(Tag::DECODER, parts.decoder.clone())
            .section(Tag::SHOTS, parts.shots.to_bytes())
            .to_bytes();
        let path = dir.path().join("n.plan");
        std::fs::write(&path, bytes).unwrap();
        let err = EngineMetadata::open(&path).unwrap_err().to_string();
        assert!(err.starts_with("manifest:") && err.contains("mean_std normalisation"), "{what}: {err}");
    }
}

/// Sections whose counts would make opening slow: refused by a limit, in linear time.
#[test]
fn a_shots_section_over_the_task_limit_is_refused() {
    let mut bytes = 40_000u32.to_le_bytes().to_vec();
    for i in 0..40_000u32 {
        let name = format!("task{i}");
        bytes.extend((name.len() as u32).to_le_bytes());
        bytes.extend(name.as_bytes());
    }
    let err = segicl::shots::DefaultShots::from_bytes(&bytes).unwrap_err().to_string();
    assert!(err.contains("over the limit of 256"), "{err}");
}

/// Paths that are not regular files are refused at once: a FIFO used to block forever.
#[cfg(unix)]
#[test]
fn anything_but_a_regular_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.plan");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let table: Vec<(&str, PathBuf, &str)> = vec![
        ("a FIFO", fifo, "not a regular file"),
        ("a directory", dir.path().to_path_buf(), "is a directory"),
        ("a device", PathBuf::from("/dev/zero"), "not a regular file"),
    ];
    for (what, path, words) in table {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(EngineMetadata::open(&path).map(|_| ()).map_err(|e| e.to_string())));
        let err = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("{what}: open blocked"));
        let err = err.expect_err(what);
        assert!(err.contains(words), "{what}: {err}");
    }
}

/// An engine file changed in place after it was opened changes nothing for the reader: what was
/// verified is what is used (a memory map used to raise SIGBUS after a truncation).
#[test]
fn an_engine_truncated_or_rewritten_after_open_is_still_read_safely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.plan");
    std::fs::copy(prototype_path(), &path).unwrap();
    let meta = EngineMetadata::open(&path).unwrap();
    let engine = open(&path).unwrap();
    let card = meta.card().map(str::to_string);
    std::fs::write(&path, b"").unwrap();
    assert_eq!(meta.card().map(str::to_string), card);
    assert!(meta.file.section(Tag::DECODER).is_some_and(|d| d == prototype::decoder()));
    std::fs::write(&path, vec![0xAB; 1 << 20]).unwrap();
    let mut session = engine.session().unwrap();
    set_shots(&mut session, Task::UsLesion, &[1]);
    segicl_tests::segment(&mut session, &sample(Task::UsLesion, 2).0);
}

#[test]
fn thread_counts_are_bounded() {
    let max = segicl::engine::max_threads();
    assert!((4..=256).contains(&max) || max == 4 * std::thread::available_parallelism().unwrap().get());
    for threads in [0, max + 1, 100_000, u32::MAX as usize] {
        let err = Engine::open(prototype_path(), &EngineOptions { threads, ..Default::default() }).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("threads"), "{threads}: {err}");
    }
    assert!(Engine::open(prototype_path(), &EngineOptions { threads: max, ..Default::default() }).is_ok());
}

/// `use_default_shots` checks every stored shot before it changes any slot.
#[test]
fn default_shots_with_a_bad_shot_change_nothing() {
    let mut parts: EngineParts = prototype::engine_parts().unwrap();
    let (name, shots) = &mut parts.shots.tasks[0];
    let name = name.clone();
    assert!(shots.len() >= 2);
    shots[1].mask.data.fill(0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty-mask.plan");
    parts.write(&path).unwrap();
    let mut session = open(&path).unwrap().session().unwrap();
    set_shots(&mut session, Task::FundusDisc, &[3]);
    let (query, _) = sample(Task::FundusDisc, 4);
    let before = segicl_tests::segment(&mut session, &query);
    let generation = session.generation();
    let err = session.use_default_shots(&name).unwrap_err().to_string();
    assert!(err.contains("mask is empty"), "{err}");
    assert_eq!((session.generation(), session.shot_count()), (generation, 1));
    assert_eq!(segicl_tests::segment(&mut session, &query), before);
}

/// A frame must not be recognised as a cached shot by its hash alone.
#[test]
fn a_shot_is_unchanged_only_when_its_pixels_are() {
    let mut session = segicl_tests::prototype().session().unwrap();
    let (image, mask) = sample(Task::UsLesion, 11);
    assert_eq!(session.set_shot(0, &image.view(), &mask.view()).unwrap(), segicl::ShotUpdate::Encoded);
    assert_eq!(session.set_shot(0, &image.view(), &mask.view()).unwrap(), segicl::ShotUpdate::Unchanged);
    let mut other = image.clone();
    other.data[0] ^= 1;
    assert_eq!(session.set_shot(0, &other.view(), &mask.view()).unwrap(), segicl::ShotUpdate::Encoded);
    let odd = OwnedImage { data: vec![0; 4], width: 2, height: 2, format: PixelFormat::Gray8 };
    assert!(!odd.holds(&image.view()));
}
