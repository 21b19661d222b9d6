//! The backend on a GPU: the libraries and device found, both plans obtained and checked against
//! the manifest, and one runner per session (its stream, its buffers bound once, `enqueueV3`).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut};

use super::api::{PlanPrecision, ShimApi, Trt, TrtContext, TrtEngine};
use super::library::{self, TENSORRT, TENSORRT_RTX};
use super::plans::{self, BuildOptions, DeviceId, Origin, PlanCache, PlanKey};
use super::tensorrt_error as error;
use crate::backend::cuda::probe;
use crate::backend::{Backend, Runner};
use crate::error::Result;
use crate::format::{EngineFile, Tag};
use crate::manifest::{DType, Direction, Graph, Manifest, Precision, TensorSpec};

/// The builder's workspace limit: enough for these graphs' tactics, small for a Jetson.
const WORKSPACE: usize = 256 << 20;

/// TensorRT's `DataType::kFLOAT`.
const K_FLOAT: i32 = 0;

/// Plans of both graphs of a file (an engine or a refiner) on GPU 0, with every tensor they read
/// or write; shared by the sessions.
pub struct DevicePlans {
    encoder: Arc<TrtEngine>,
    decoder: Arc<TrtEngine>,
    /// Every I/O tensor of both graphs (a feature once, shared by both) and its length.
    tensors: Vec<(String, usize)>,
    context: Arc<CudaContext>,
}

/// An engine's two plans on the GPU.
pub struct TensorRtBackend {
    plans: Arc<DevicePlans>,
}

/// TensorRT's libraries (the parser too), checked against the shim's headers.
fn load_libraries() -> Result<Arc<Trt>> {
    let api = ShimApi::linked();
    let (compiled, rtx) = api.compiled();
    let product = if rtx { TENSORRT_RTX } else { TENSORRT };
    let libraries = library::load(product, compiled, &library::dirs_from_env())?;
    Trt::open(api, Arc::new(libraries))
}

/// Device 0 and what identifies it in a plan key.
fn device() -> Result<(Arc<CudaContext>, DeviceId)> {
    // SAFETY: only tries to load the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(error("the NVIDIA driver cannot be loaded (libcuda.so.1 not found): run where a GPU is visible"));
    }
    probe::guarded("opening the device", || {
        let context = probe::device().map_err(retag)?;
        let mut driver = 0;
        // SAFETY: writes one int.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }
            .result()
            .map_err(driver_failed("cuDriverGetVersion"))?;
        let id = DeviceId {
            name: context.name().map_err(driver_failed("reading the device name"))?,
            compute_capability: context
                .compute_capability()
                .map_err(driver_failed("reading the compute capability"))?,
            sms: context
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver_failed("reading the SM count"))?,
            driver,
        };
        Ok((context, id))
    })
}

/// Turns a driver error into one saying `what` failed.
fn driver_failed(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> crate::error::Error {
    move |e| error(format!("{what}: {e}"))
}

/// An error of the CUDA backend's probe as one of this backend.
fn retag(e: crate::error::Error) -> crate::error::Error {
    match e {
        crate::error::Error::Backend { what, .. } => error(what),
        other => other,
    }
}

/// The plan precision an engine's graph asks for.
fn precision(dtype: DType) -> PlanPrecision {
    match dtype {
        DType::F32 => PlanPrecision::F32,
        DType::F16 => PlanPrecision::F16,
        DType::I8 => PlanPrecision::Int8,
    }
}

/// The section holding `graph`'s ONNX bytes.
fn source_tag(graph: Graph) -> Tag {
    match graph {
        Graph::Encoder => Tag::ENCODER,
        Graph::Decoder => Tag::DECODER,
    }
}

/// The precision of `graph`'s weights.
fn dtype(precisions: &Precision, graph: Graph) -> DType {
    match graph {
        Graph::Encoder => precisions.encoder,
        Graph::Decoder => precisions.decoder,
    }
}

/// The key of `graph`'s plan for this file, TensorRT and device.
fn key(file: &EngineFile, precisions: &Precision, graph: Graph, trt: &Trt, device: &DeviceId) -> Result<PlanKey> {
    let tag = source_tag(graph);
    let section = file.layout().find(tag).ok_or_else(|| error(format!("the file has no {} section", tag.name())))?;
    let libraries = trt.libraries();
    Ok(PlanKey {
        graph,
        graph_crc: section.crc32,
        precision: precision(dtype(precisions, graph)).name().into(),
        builder: BuildOptions { workspace: WORKSPACE }.describe(),
        tensorrt: format!("{} {}", libraries.product.name, libraries.version),
        device: device.clone(),
    })
}

/// Both graphs' plans for this device, obtained as [`plans::obtain`] says and checked against
/// `tensors`.
fn plans_for(
    file: &EngineFile,
    precisions: &Precision,
    tensors: &[TensorSpec],
    trt: &Arc<Trt>,
    device: &DeviceId,
) -> Result<[(TrtEngine, Origin); 2]> {
    let cache = PlanCache::from_env();
    if cache.is_none() {
        log::warn!("tensorrt: no plan cache (set {}): plans are built at every open", plans::CACHE_VARIABLE);
    }
    let plan = |graph| -> Result<(TrtEngine, Origin)> {
        let key = key(file, precisions, graph, trt, device)?;
        let onnx = file.section(source_tag(graph)).expect("the key found the section");
        let baked = file.section(plans::baked_tag(graph));
        let options = BuildOptions { workspace: WORKSPACE };
        let precision = precision(dtype(precisions, graph));
        let (engine, origin) = plans::obtain(trt, &key, precision, onnx, baked, cache.as_ref(), &options)?;
        check_tensors(&engine, tensors, graph)?;
        Ok((engine, origin))
    };
    Ok([plan(Graph::Encoder)?, plan(Graph::Decoder)?])
}

/// Checks that `engine` has every tensor `tensors` gives `graph`, as f32 of the same shape.
fn check_tensors(engine: &TrtEngine, tensors: &[TensorSpec], graph: Graph) -> Result<()> {
    for direction in [Direction::Input, Direction::Output] {
        for spec in tensors.iter().filter(|t| t.graph == graph && t.direction == direction) {
            let info = engine
                .tensor(&spec.name)?
                .ok_or_else(|| error(format!("the {} plan has no tensor `{}`", plans::graph_name(graph), spec.name)))?;
            let shape: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
            if info.input != (direction == Direction::Input) || info.shape != shape || info.data_type != K_FLOAT {
                return Err(error(format!(
                    "the {} plan's tensor `{}` is {} {:?} of TensorRT type {}, the manifest says {direction:?} {shape:?} f32",
                    plans::graph_name(graph),
                    spec.name,
                    if info.input { "input" } else { "output" },
                    info.shape,
                    info.data_type
                )));
            }
        }
    }
    Ok(())
}

impl DevicePlans {
    /// Opens TensorRT and GPU 0 and obtains the plans of both graphs of `file` (an engine or a
    /// refiner, `what` in messages), or says why it cannot: the library missing or of another
    /// version, no GPU, a graph TensorRT refuses (naming the node).
    pub fn open(file: &EngineFile, precisions: &Precision, tensors: &[TensorSpec], what: &str) -> Result<DevicePlans> {
        let trt = load_libraries()?;
        let (context, device) = device()?;
        // TensorRT deserializes into the current context: cudarc's (the device's primary one).
        context.bind_to_thread().map_err(driver_failed("binding the context"))?;
        let [(encoder, from_enc), (decoder, from_dec)] = plans_for(file, precisions, tensors, &trt, &device)?;
        log::info!(
            "tensorrt: {what} on {} with {} (sm_{}{}); encoder plan {from_enc:?}, decoder plan {from_dec:?}",
            device.name,
            trt.libraries().product.name,
            device.compute_capability.0,
            device.compute_capability.1
        );
        let mut all: Vec<(String, usize)> = Vec::new();
        for spec in tensors {
            if !all.iter().any(|(name, _)| *name == spec.name) {
                all.push((spec.name.clone(), spec.shape.iter().product()));
            }
        }
        // SAFETY: buffers are used on their session's stream only, in order.
        unsafe { context.disable_event_tracking() };
        Ok(DevicePlans { encoder: Arc::new(encoder), decoder: Arc::new(decoder), tensors: all, context })
    }

    /// A session: its own stream, buffers and execution contexts.
    pub fn session(self: &Arc<Self>) -> Result<PlanSession> {
        probe::guarded("creating a session", || PlanSession::new(self.clone())).map_err(retag)
    }
}

/// Prepares the engine in `file` on GPU 0 through TensorRT (see [`DevicePlans::open`]).
pub fn prepare(file: &EngineFile, manifest: &Manifest) -> Result<Box<dyn Backend>> {
    let plans = DevicePlans::open(file, &manifest.precision, &manifest.tensors, "engine")?;
    Ok(Box::new(TensorRtBackend { plans: Arc::new(plans) }))
}

/// The `TRT_*` sections that bake this device's plans into `file`: each graph's plan, built now,
/// stored with its key.
pub fn bake(file: &EngineFile, manifest: &Manifest) -> Result<Vec<(Tag, Vec<u8>)>> {
    let trt = load_libraries()?;
    let (_context, device) = device()?;
    [Graph::Encoder, Graph::Decoder]
        .into_iter()
        .map(|graph| {
            let key = key(file, &manifest.precision, graph, &trt, &device)?;
            let onnx = file.section(source_tag(graph)).expect("the key found the section");
            for warning in plans::clipping_warnings(onnx) {
                log::warn!("tensorrt: {}: {warning}", plans::graph_name(graph));
            }
            let built = trt.build(onnx, precision(dtype(&manifest.precision, graph)), WORKSPACE, &[])?;
            trt.deserialize(&built.plan)?;
            Ok((plans::baked_tag(graph), plans::encode_record(&key, &built.plan)))
        })
        .collect()
}

impl Backend for TensorRtBackend {
    fn name(&self) -> &'static str {
        "tensorrt"
    }

    fn runner(&self) -> Result<Box<dyn Runner>> {
        Ok(Box::new(TrtRunner { session: self.plans.session()?, encoded: false }))
    }
}

/// One session of [`DevicePlans`]: a stream, a device buffer per tensor (a tensor both graphs
/// name is one buffer, so the encoder's features stay on the device), and an execution context per
/// plan with those buffers bound once.
pub struct PlanSession {
    encoder: TrtContext,
    decoder: TrtContext,
    /// The buffers, in the order of `DevicePlans::tensors`.
    buffers: Vec<CudaSlice<f32>>,
    stream: Arc<CudaStream>,
    plans: Arc<DevicePlans>,
}

impl PlanSession {
    fn new(plans: Arc<DevicePlans>) -> Result<PlanSession> {
        plans.context.bind_to_thread().map_err(driver_failed("binding the context"))?;
        let stream = plans.context.new_stream().map_err(driver_failed("creating a stream"))?;
        let mut buffers = Vec::with_capacity(plans.tensors.len());
        for (_, len) in &plans.tensors {
            buffers.push(stream.alloc_zeros::<f32>((*len).max(1)).map_err(driver_failed("allocating device memory"))?);
        }
        let mut encoder = plans.encoder.context()?;
        let mut decoder = plans.decoder.context()?;
        for ((name, _), buffer) in plans.tensors.iter().zip(&mut buffers) {
            let (address, _) = buffer.device_ptr_mut(&stream);
            for (context, engine) in [(&mut encoder, &plans.encoder), (&mut decoder, &plans.decoder)] {
                if engine.tensor(name)?.is_some() {
                    // SAFETY: the buffer holds the tensor's elements (checked against the
                    // manifest at open) and lives as long as the session, which owns both.
                    unsafe { context.bind(name, address as *mut c_void)? };
                }
            }
        }
        Ok(PlanSession { encoder, decoder, buffers, stream, plans })
    }

    /// The buffer of tensor `name`.
    fn buffer(&mut self, name: &str) -> Result<&mut CudaSlice<f32>> {
        let index = self.plans.tensors.iter().position(|(n, _)| n == name);
        index.map(|i| &mut self.buffers[i]).ok_or_else(|| error(format!("the plans have no tensor `{name}`")))
    }

    /// Copies `inputs` in, runs `graph`'s plan, copies `outputs` out.
    pub fn run(&mut self, graph: Graph, inputs: &[(&str, &[f32])], outputs: &mut [(&str, &mut [f32])]) -> Result<()> {
        probe::guarded(plans::graph_name(graph), || self.run_unguarded(graph, inputs, outputs)).map_err(retag)
    }

    fn run_unguarded(
        &mut self,
        graph: Graph,
        inputs: &[(&str, &[f32])],
        outputs: &mut [(&str, &mut [f32])],
    ) -> Result<()> {
        // A session may move between threads: TensorRT enqueues on the current context.
        self.plans.context.bind_to_thread().map_err(driver_failed("binding the context"))?;
        let stream = self.stream.clone();
        for &(name, data) in inputs {
            let buffer = self.buffer(name)?;
            if buffer.len() != data.len() {
                return Err(error(format!("`{name}` has {} values, the plan takes {}", data.len(), buffer.len())));
            }
            stream.memcpy_htod(data, buffer).map_err(driver_failed("copying an input to the device"))?;
        }
        let context = if graph == Graph::Encoder { &mut self.encoder } else { &mut self.decoder };
        // SAFETY: the stream is this session's, on the plans' device; every tensor was bound.
        unsafe { context.enqueue(stream.cu_stream() as *mut c_void)? };
        for (name, out) in outputs.iter_mut() {
            let buffer = self.buffer(name)?;
            if buffer.len() != out.len() {
                return Err(error(format!(
                    "`{name}` has room for {} values, the plan gives {}",
                    out.len(),
                    buffer.len()
                )));
            }
            stream.memcpy_dtoh(&*buffer, &mut **out).map_err(driver_failed("copying an output from the device"))?;
        }
        stream.synchronize().map_err(driver_failed("running the plan"))
    }
}

/// An engine's session.
struct TrtRunner {
    session: PlanSession,
    /// Whether the encoder has run, so the decoder has features to read.
    encoded: bool,
}

impl Runner for TrtRunner {
    fn encode(&mut self, image: &[f32], mask: &[f32], ctx: &mut [f32]) -> Result<()> {
        self.session.run(Graph::Encoder, &[("image", image), ("mask", mask)], &mut [("ctx", ctx)])?;
        self.encoded = true;
        Ok(())
    }

    fn decode(&mut self, ctx: &[f32], ctx_valid: &[f32], logits: &mut [f32]) -> Result<()> {
        if !self.encoded {
            return Err(error("decode called before encode"));
        }
        self.session.run(Graph::Decoder, &[("ctx", ctx), ("ctx_valid", ctx_valid)], &mut [("logits", logits)])
    }
}
