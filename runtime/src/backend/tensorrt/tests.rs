//! The loader against fake `libnvinfer` builds (compiled here with `cc`), and everything above
//! the shim (errors, blobs, plan keys, the cache, baked plans) against a mock of its C API. With
//! the `tensorrt` feature and TensorRT-RTX's libraries (`SEGICL_TENSORRT_DIR`), the real shim
//! builds plans for every bundled engine on the CPU.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::api::{Blob, ContextHandle, EngineHandle, Factory, Handle, ParserFactory, PlanPrecision, ShimApi, Trt};
use super::library::{self, Libraries, Product, Version, TENSORRT};
use super::plans::{self, BuildOptions, DeviceId, Origin, PlanCache, PlanKey};
use crate::manifest::Graph;

/// A fake `libnvinfer.so.10` (and parser) in a temporary folder, built from C with `defines`.
fn fake_tensorrt(defines: &[&str]) -> tempfile::TempDir {
    const SOURCE: &str = r#"
#include <stddef.h>
#include <stdint.h>
int32_t getInferLibMajorVersion(void) { return MAJOR; }
int32_t getInferLibMinorVersion(void) { return MINOR; }
int32_t getInferLibPatchVersion(void) { return 1; }
int32_t getInferLibBuildVersion(void) { return 7; }
void* createInferBuilder_INTERNAL(void* logger, int32_t version) { (void)logger; (void)version; return NULL; }
#ifndef NO_RUNTIME
void* createInferRuntime_INTERNAL(void* logger, int32_t version) { (void)logger; (void)version; return NULL; }
#endif
void* createNvOnnxParser_INTERNAL(void* n, void* l, int32_t v) { (void)n; (void)l; (void)v; return NULL; }
"#;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("fake.c");
    std::fs::write(&source, SOURCE).unwrap();
    for (name, extra) in [("libnvinfer.so.10", None), ("libnvonnxparser.so.10", Some("-DNO_RUNTIME"))] {
        let mut cc = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
        cc.args(["-shared", "-fPIC", "-o"]).arg(dir.path().join(name)).arg(&source);
        cc.args(defines.iter().map(|d| format!("-D{d}"))).args(extra);
        let status = cc.status().expect("the tests need a C compiler (cc)");
        assert!(status.success(), "compiling the fake TensorRT");
    }
    dir
}

const TEN_THREE: Version = Version { major: 10, minor: 3, patch: 0, build: 0 };

fn load(dir: &Path) -> crate::Result<Libraries> {
    library::load(TENSORRT, TEN_THREE, &[dir.to_path_buf()])
}

#[test]
fn the_loader_checks_the_version_and_the_symbols_and_says_what_is_wrong() {
    let good = fake_tensorrt(&["MAJOR=10", "MINOR=3"]);
    let libraries = load(good.path()).unwrap();
    assert_eq!(libraries.version, Version { major: 10, minor: 3, patch: 1, build: 7 });
    assert_eq!(libraries.version.to_string(), "10.3.1.7");
    assert!(libraries.create_parser.is_ok());
    // A later minor of the same major is accepted.
    assert!(load(fake_tensorrt(&["MAJOR=10", "MINOR=8"]).path()).is_ok());

    let cases = [
        (&["MAJOR=9", "MINOR=9"][..], "is TensorRT 9.9.1.7; this build's shim was compiled for TensorRT 10.3"),
        (&["MAJOR=11", "MINOR=0"], "is TensorRT 11.0.1.7"),
        (&["MAJOR=10", "MINOR=2"], "is TensorRT 10.2.1.7"),
        (&["MAJOR=10", "MINOR=3", "NO_RUNTIME"], "has no `createInferRuntime_INTERNAL`: not TensorRT 10 or later"),
    ];
    for (defines, expected) in cases {
        let dir = fake_tensorrt(defines);
        let e = load(dir.path()).err().expect("refused").to_string();
        assert!(e.starts_with("backend tensorrt: ") && e.contains(expected), "{defines:?}: {e}");
    }

    let absent =
        Product { name: "TensorRT", runtime: "libsegicl-absent.so.10", parser: "libsegicl-absent-parser.so.10" };
    let e = library::load(absent, TEN_THREE, &[]).err().expect("absent").to_string();
    assert!(e.contains("TensorRT cannot be loaded (") && e.contains("SEGICL_TENSORRT_DIR"), "{e}");
}

#[test]
fn a_missing_parser_fails_only_the_build_saying_what_to_install() {
    let dir = fake_tensorrt(&["MAJOR=10", "MINOR=3"]);
    std::fs::remove_file(dir.path().join("libnvonnxparser.so.10")).unwrap();
    let libraries = load(dir.path()).unwrap();
    let why = libraries.create_parser.as_ref().expect_err("no parser").clone();
    assert!(why.contains("building a plan needs TensorRT's ONNX parser"), "{why}");
    let trt = Trt::open(&MOCK, Arc::new(libraries)).unwrap();
    let e = trt.build(b"onnx", PlanPrecision::F32, 1 << 20, &[]).unwrap_err().to_string();
    assert!(e.contains("building a plan needs TensorRT's ONNX parser"), "{e}");
    assert_eq!(with_mock(|m| m.builds), 0, "the shim was not called");
}

// --- a mock of the shim's C API ---

/// What the mock shim did on this thread.
#[derive(Default)]
struct Mock {
    messages: String,
    builds: usize,
    deserialized: usize,
    timing_in: Vec<Vec<u8>>,
}

thread_local! {
    static MOCK_STATE: RefCell<Mock> = RefCell::new(Mock::default());
}

fn with_mock<T>(f: impl FnOnce(&mut Mock) -> T) -> T {
    MOCK_STATE.with(|m| f(&mut m.borrow_mut()))
}

unsafe extern "C" fn mock_version() -> i32 {
    100300
}
unsafe extern "C" fn mock_rtx() -> i32 {
    0
}
unsafe extern "C" fn mock_open(_: Factory, _: Factory, _: Option<ParserFactory>) -> *mut Handle {
    Box::into_raw(Box::new(0u64)).cast()
}
unsafe extern "C" fn mock_close(handle: *mut Handle) {
    drop(unsafe { Box::from_raw(handle.cast::<u64>()) });
}
unsafe extern "C" fn mock_take(_: *mut Handle, buffer: *mut c_char, capacity: usize) -> usize {
    with_mock(|m| {
        let len = m.messages.len();
        if !buffer.is_null() && capacity > 0 {
            let n = len.min(capacity - 1);
            unsafe {
                std::ptr::copy_nonoverlapping(m.messages.as_ptr(), buffer.cast(), n);
                *buffer.add(n) = 0;
            }
            m.messages.clear();
        }
        len
    })
}
fn fill(blob: *mut Blob, bytes: Vec<u8>) {
    let owned = Box::new(bytes);
    unsafe { *blob = Blob { data: owned.as_ptr(), len: owned.len(), owner: Box::into_raw(owned).cast() } };
}
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn mock_build(
    _: *mut Handle,
    onnx: *const c_void,
    len: usize,
    precision: i32,
    _: usize,
    timing: *const c_void,
    timing_len: usize,
    plan: *mut Blob,
    timing_out: *mut Blob,
) -> i32 {
    let onnx = unsafe { std::slice::from_raw_parts(onnx.cast::<u8>(), len) };
    let timing =
        if timing.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(timing.cast(), timing_len) } };
    with_mock(|m| {
        m.builds += 1;
        m.timing_in.push(timing.to_vec());
        if onnx.starts_with(b"REFUSE") {
            m.messages += "warning: ignored\nerror: node `conv_7` (Conv): kernel weights are not an initializer\n";
            return 2;
        }
        m.messages += "warning: a warning while building\n";
        fill(plan, [b"PLAN".as_slice(), &[precision as u8], onnx].concat());
        fill(timing_out, format!("TIMING{}", m.builds).into_bytes());
        0
    })
}
unsafe extern "C" fn mock_blob_free(blob: *mut Blob) {
    let blob = unsafe { &mut *blob };
    if !blob.owner.is_null() {
        drop(unsafe { Box::from_raw(blob.owner.cast::<Vec<u8>>()) });
    }
    *blob = Blob::EMPTY;
}
unsafe extern "C" fn mock_deserialize(_: *mut Handle, plan: *const c_void, len: usize) -> *mut EngineHandle {
    let plan = unsafe { std::slice::from_raw_parts(plan.cast::<u8>(), len) };
    with_mock(|m| {
        if plan.starts_with(b"PLAN") {
            m.deserialized += 1;
            Box::into_raw(Box::new(0u64)).cast()
        } else {
            m.messages += "error: IRuntime::deserializeCudaEngine: the plan's version tag does not match\n";
            std::ptr::null_mut()
        }
    })
}
unsafe extern "C" fn mock_engine_free(engine: *mut EngineHandle) {
    drop(unsafe { Box::from_raw(engine.cast::<u64>()) });
}
unsafe extern "C" fn mock_tensor(
    _: *mut EngineHandle,
    name: *const c_char,
    io: *mut i32,
    dims: *mut i64,
    rank: *mut i32,
    data_type: *mut i32,
) -> i32 {
    if unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes() != b"image" {
        return 2;
    }
    unsafe {
        (*io, *rank, *data_type) = (1, 4, 0);
        for (i, d) in [1, 3, 64, 64].into_iter().enumerate() {
            *dims.add(i) = d;
        }
    }
    0
}
unsafe extern "C" fn mock_context_new(_: *mut EngineHandle) -> *mut ContextHandle {
    std::ptr::null_mut()
}
unsafe extern "C" fn mock_context_free(_: *mut ContextHandle) {}
unsafe extern "C" fn mock_bind(_: *mut ContextHandle, _: *const c_char, _: *mut c_void) -> i32 {
    1
}
unsafe extern "C" fn mock_enqueue(_: *mut ContextHandle, _: *mut c_void) -> i32 {
    1
}

static MOCK: ShimApi = ShimApi {
    compiled_version: mock_version,
    compiled_for_rtx: mock_rtx,
    open: mock_open,
    close: mock_close,
    take_messages: mock_take,
    build: mock_build,
    blob_free: mock_blob_free,
    deserialize: mock_deserialize,
    engine_free: mock_engine_free,
    engine_tensor: mock_tensor,
    context_new: mock_context_new,
    context_free: mock_context_free,
    context_bind: mock_bind,
    context_enqueue: mock_enqueue,
};

/// A mock shim over fake TensorRT 10.3 libraries (kept in `dir`).
fn mock_trt() -> (Arc<Trt>, tempfile::TempDir) {
    let dir = fake_tensorrt(&["MAJOR=10", "MINOR=3"]);
    let trt = Trt::open(&MOCK, Arc::new(load(dir.path()).unwrap())).unwrap();
    assert_eq!(MOCK.compiled(), (TEN_THREE, false));
    (trt, dir)
}

fn key(device: &str) -> PlanKey {
    PlanKey {
        graph: Graph::Encoder,
        graph_crc: 0x1234_abcd,
        precision: "f16".into(),
        builder: BuildOptions { workspace: 256 << 20 }.describe(),
        tensorrt: "TensorRT 10.3.0.26".into(),
        device: DeviceId { name: device.into(), compute_capability: (8, 7), sms: 16, driver: 12060 },
    }
}

const OPTIONS: BuildOptions = BuildOptions { workspace: 1 << 20 };

#[test]
fn plans_are_built_once_then_cached_and_rebuilt_when_the_key_or_tensorrt_disagrees() {
    let (trt, _libs) = mock_trt();
    let dir = tempfile::tempdir().unwrap();
    let cache = PlanCache::new(dir.path().join("plans"));
    let orin = key("Orin");
    let obtain = |key: &PlanKey, baked: Option<&[u8]>| {
        plans::obtain(&trt, key, PlanPrecision::F16, b"onnx", baked, Some(&cache), &OPTIONS).map(|(_, origin)| origin)
    };

    assert_eq!(obtain(&orin, None).unwrap(), Origin::Built);
    let stored = std::fs::read(cache.plan_path(&orin)).unwrap();
    let (stored_key, plan) = plans::decode_record(&stored).unwrap();
    assert_eq!((stored_key, plan), (orin.clone(), &b"PLAN\x01onnx"[..]));
    assert_eq!(std::fs::read(cache.timing_path(&orin)).unwrap(), b"TIMING1");
    assert_eq!(obtain(&orin, None).unwrap(), Origin::Cached);
    assert_eq!(with_mock(|m| m.builds), 1);

    // Another GPU: another file, and the timing cache is not shared.
    let nano = key("Orin Nano");
    assert_ne!(cache.plan_path(&nano), cache.plan_path(&orin));
    assert_eq!(obtain(&nano, None).unwrap(), Origin::Built);
    assert_eq!(with_mock(|m| m.timing_in.clone()), [Vec::<u8>::new(), Vec::new()]);

    // A plan file copied from another device under this key's name is rebuilt, as is a plan
    // TensorRT refuses (a driver update); the rebuild starts from the device's timing cache.
    std::fs::copy(cache.plan_path(&nano), cache.plan_path(&orin)).unwrap();
    assert_eq!(obtain(&orin, None).unwrap(), Origin::Built);
    std::fs::write(cache.plan_path(&orin), plans::encode_record(&orin, b"STALE")).unwrap();
    assert_eq!(obtain(&orin, None).unwrap(), Origin::Built);
    assert_eq!(with_mock(|m| m.timing_in.last().cloned()), Some(b"TIMING3".to_vec()));
    std::fs::write(cache.plan_path(&orin), b"garbage").unwrap();
    assert_eq!(obtain(&orin, None).unwrap(), Origin::Built);
    assert_eq!(obtain(&orin, None).unwrap(), Origin::Cached);

    // A baked plan is used when its key matches, and passed over when it does not.
    let baked = plans::encode_record(&orin, b"PLAN-baked");
    assert_eq!(obtain(&orin, Some(&baked)).unwrap(), Origin::Baked);
    assert_eq!(obtain(&nano, Some(&baked)).unwrap(), Origin::Cached);
    let builds = with_mock(|m| m.builds);
    assert_eq!(obtain(&key("Thor"), Some(&baked)).unwrap(), Origin::Built);
    assert_eq!(with_mock(|m| m.builds), builds + 1);
}

#[test]
fn a_refused_graph_names_the_node_and_a_refused_plan_says_why() {
    let (trt, _libs) = mock_trt();
    let e = trt.build(b"REFUSE", PlanPrecision::Int8, 1 << 20, &[]).unwrap_err().to_string();
    assert_eq!(
        e,
        "backend tensorrt: TensorRT refused the graph: node `conv_7` (Conv): kernel weights are not an initializer"
    );
    let built = trt.build(b"graph", PlanPrecision::F32, 1 << 20, &[]).unwrap();
    assert_eq!(built.warnings, ["a warning while building"]);
    let e = trt.deserialize(b"not a plan").err().expect("refused").to_string();
    assert!(
        e.ends_with(
            "TensorRT refused the plan: IRuntime::deserializeCudaEngine: the plan's version tag does not match"
        ),
        "{e}"
    );

    let engine = trt.deserialize(&built.plan).unwrap();
    let image = engine.tensor("image").unwrap().unwrap();
    assert!(image.input && image.shape == [1, 3, 64, 64] && image.data_type == 0);
    assert_eq!(engine.tensor("logits").unwrap(), None);
    assert!(engine.tensor("a\0b").is_err());
    let e = Arc::new(engine).context().err().expect("the mock has no contexts").to_string();
    assert_eq!(e, "backend tensorrt: creating an execution context");
    // No cache: a build error reaches the caller.
    let e = plans::obtain(&trt, &key("Orin"), PlanPrecision::F32, b"REFUSE", None, None, &OPTIONS);
    assert!(e.err().expect("refused").to_string().contains("node `conv_7`"));
}

#[test]
fn stored_plans_that_are_damaged_say_what_is_wrong() {
    let record = plans::encode_record(&key("Orin"), b"PLAN");
    assert_eq!(plans::record_key(&record).unwrap(), key("Orin"));
    for (bytes, expected) in [
        (&b"SEGTRTP"[..], "no SEGTRTP1 header"),
        (&record[..20], "its key runs past the end"),
        (&[&record[..12], &vec![b'{'; record.len() - 12][..]].concat()[..], "its key is unreadable"),
    ] {
        let e = plans::record_key(bytes).unwrap_err().to_string();
        assert!(e.contains(expected), "{e}");
    }
    assert!(key("Orin").summary().contains(
        "encoder crc 1234abcd, f16, workspace 256 MiB, TensorRT 10.3.0.26 on Orin (sm_87, 16 SMs, driver 12.6)"
    ));
}

fn bundled(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(name)
}

/// Both graphs of a bundled engine.
fn graphs(name: &str) -> Vec<(Graph, Vec<u8>)> {
    let file = crate::format::EngineFile::open(&bundled(name)).unwrap();
    [(Graph::Encoder, crate::format::Tag::ENCODER), (Graph::Decoder, crate::format::Tag::DECODER)]
        .map(|(graph, tag)| (graph, file.section(tag).unwrap().to_vec()))
        .to_vec()
}

#[test]
fn int8_graphs_that_tensorrt_would_clip_are_named() {
    for (_, onnx) in graphs("segicl-ref-int8.plan") {
        assert_eq!(plans::clipping_warnings(&onnx), Vec::<String>::new());
    }
    use crate::backend::onnx::{ModelProto, NodeProto, TensorProto};
    use prost::Message;
    let zero = |name: &str, data_type, byte| TensorProto {
        name: name.into(),
        data_type,
        raw_data: vec![byte],
        ..Default::default()
    };
    let quantize = |name: &str, z: &str| NodeProto {
        name: name.into(),
        op_type: "QuantizeLinear".into(),
        input: vec!["x".into(), "s".into(), z.into()],
        output: vec![format!("{name}:q")],
        ..Default::default()
    };
    let mut model = ModelProto::default();
    let graph = model.graph.get_or_insert_with(Default::default);
    graph.initializer = vec![zero("u", 2, 0), zero("i", 3, 0), zero("shifted", 3, 5)];
    graph.node = vec![quantize("a", "u"), quantize("b", "i"), quantize("c", "shifted"), quantize("d", "computed")];
    let warnings = plans::clipping_warnings(&model.encode_to_vec());
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].starts_with("QuantizeLinear `a` is uint8: TensorRT reads it as symmetric int8"));
    assert!(warnings[1].contains("`c` has a nonzero zero point"));
    assert!(warnings[2].contains("`d` has a zero point computed at run time"));
    assert!(plans::clipping_warnings(b"not onnx").is_empty());
}

/// The real shim on TensorRT-RTX's libraries (`SEGICL_TENSORRT_DIR`, installed by `.ci/run`):
/// every bundled engine's graphs parse and build on the CPU, and deserializing without a GPU is a
/// clean error.
#[cfg(feature = "tensorrt")]
#[test]
fn the_shim_builds_plans_for_every_bundled_engine() {
    let api = ShimApi::linked();
    let (compiled, rtx) = api.compiled();
    let product = if rtx { library::TENSORRT_RTX } else { TENSORRT };
    let libraries = library::load(product, compiled, &library::dirs_from_env())
        .unwrap_or_else(|e| panic!("{e} (CI installs TensorRT-RTX: see .ci/run)"));
    let trt = Trt::open(api, Arc::new(libraries)).unwrap();
    let engines = [
        ("segicl-ref.plan", PlanPrecision::F32),
        ("segicl-ref-fp16.plan", PlanPrecision::F16),
        ("segicl-ref-int8.plan", PlanPrecision::Int8),
        ("prototype.plan", PlanPrecision::F32),
    ];
    for (name, precision) in engines {
        for (graph, onnx) in graphs(name) {
            let built = trt.build(&onnx, precision, 256 << 20, &[]).unwrap_or_else(|e| panic!("{name} {graph:?}: {e}"));
            assert!(built.plan.len() > 1000, "{name} {graph:?}: a {}-byte plan", built.plan.len());
            let clipping: Vec<_> = built.warnings.iter().filter(|w| w.to_lowercase().contains("clip")).collect();
            assert!(clipping.is_empty(), "{name} {graph:?}: {clipping:?}");
            println!("{name} {graph:?}: {} KiB plan, warnings {:?}", built.plan.len() >> 10, built.warnings);
        }
    }
    // The refiner's graphs (LiteMedSAM, int8 weights) parse and build too: what a refiner path
    // through TensorRT would run.
    for (graph, onnx) in graphs("litemedsam-int8.refiner") {
        let built =
            trt.build(&onnx, PlanPrecision::Int8, 256 << 20, &[]).unwrap_or_else(|e| panic!("refiner {graph:?}: {e}"));
        println!(
            "litemedsam-int8.refiner {graph:?}: {} KiB plan, warnings {:?}",
            built.plan.len() >> 10,
            built.warnings
        );
    }
    // A graph TensorRT refuses: the error names the node.
    let e = trt.build(b"\x0a\x03abc", PlanPrecision::F32, 1 << 20, &[]).unwrap_err().to_string();
    assert!(e.starts_with("backend tensorrt: TensorRT "), "{e}");
}

/// The real shim on a fake TensorRT whose factories return null: an error, not a crash.
#[cfg(feature = "tensorrt")]
#[test]
fn the_shim_turns_null_factories_into_errors() {
    let dir = fake_tensorrt(&["MAJOR=10", "MINOR=3"]);
    let trt = Trt::open(ShimApi::linked(), Arc::new(load(dir.path()).unwrap())).unwrap();
    let e = trt.build(b"onnx", PlanPrecision::F32, 1 << 20, &[]).unwrap_err().to_string();
    assert!(e.contains("TensorRT could not create a builder"), "{e}");
    let e = trt.deserialize(b"plan").err().expect("null runtime").to_string();
    assert!(e.contains("TensorRT could not create a runtime"), "{e}");
}
