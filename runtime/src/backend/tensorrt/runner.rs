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
use crate::manifest::{DType, Direction, Graph, Manifest};

/// The builder's workspace limit: enough for these graphs' tactics, small for a Jetson.
const WORKSPACE: usize = 256 << 20;

/// TensorRT's `DataType::kFLOAT`.
const K_FLOAT: i32 = 0;

/// What the sessions of one engine share.
struct Shared {
    encoder: Arc<TrtEngine>,
    decoder: Arc<TrtEngine>,
    /// Every I/O tensor of both graphs (a feature once, shared by both) and its length.
    tensors: Vec<(String, usize)>,
    context: Arc<CudaContext>,
}

/// An engine's two plans on the GPU.
pub struct TensorRtBackend {
    shared: Arc<Shared>,
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

/// The key of `graph`'s plan for this engine, TensorRT and device.
fn key(file: &EngineFile, manifest: &Manifest, graph: Graph, trt: &Trt, device: &DeviceId) -> Result<PlanKey> {
    let tag = match graph {
        Graph::Encoder => Tag::ENCODER,
        Graph::Decoder => Tag::DECODER,
    };
    let section = file.layout().find(tag).ok_or_else(|| error(format!("the engine has no {} section", tag.name())))?;
    let dtype = match graph {
        Graph::Encoder => manifest.precision.encoder,
        Graph::Decoder => manifest.precision.decoder,
    };
    let libraries = trt.libraries();
    Ok(PlanKey {
        graph,
        graph_crc: section.crc32,
        precision: precision(dtype).name().into(),
        builder: BuildOptions { workspace: WORKSPACE }.describe(),
        tensorrt: format!("{} {}", libraries.product.name, libraries.version),
        device: device.clone(),
    })
}

/// Both graphs' plans for this device, obtained as [`plans::obtain`] says.
fn plans_for(
    file: &EngineFile,
    manifest: &Manifest,
    trt: &Arc<Trt>,
    device: &DeviceId,
) -> Result<Vec<(PlanKey, TrtEngine, Origin)>> {
    let cache = PlanCache::from_env();
    if cache.is_none() {
        log::warn!("tensorrt: no plan cache (set {}): plans are built at every open", plans::CACHE_VARIABLE);
    }
    [Graph::Encoder, Graph::Decoder]
        .into_iter()
        .map(|graph| {
            let key = key(file, manifest, graph, trt, device)?;
            let onnx = file.section(if graph == Graph::Encoder { Tag::ENCODER } else { Tag::DECODER });
            let onnx = onnx.expect("the key found the section");
            let baked = file.section(plans::baked_tag(graph));
            let precision = precision(if graph == Graph::Encoder {
                manifest.precision.encoder
            } else {
                manifest.precision.decoder
            });
            let options = BuildOptions { workspace: WORKSPACE };
            let (engine, origin) = plans::obtain(trt, &key, precision, onnx, baked, cache.as_ref(), &options)?;
            check_tensors(&engine, manifest, graph)?;
            Ok((key, engine, origin))
        })
        .collect()
}

/// Checks that `engine` has every tensor the manifest gives `graph`, as f32 of the same shape.
fn check_tensors(engine: &TrtEngine, manifest: &Manifest, graph: Graph) -> Result<()> {
    for direction in [Direction::Input, Direction::Output] {
        for spec in manifest.tensors(graph, direction) {
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

/// Prepares the engine in `file` on GPU 0 through TensorRT, or says why it cannot: the library
/// missing or of another version, no GPU, a graph TensorRT refuses (naming the node).
pub fn prepare(file: &EngineFile, manifest: &Manifest) -> Result<Box<dyn Backend>> {
    let trt = load_libraries()?;
    let (context, device) = device()?;
    let mut plans = plans_for(file, manifest, &trt, &device)?.into_iter();
    let (Some((_, encoder, from_enc)), Some((_, decoder, from_dec))) = (plans.next(), plans.next()) else {
        unreachable!("plans_for returns both graphs")
    };
    log::info!(
        "tensorrt: {} on {} (sm_{}{}); encoder plan {from_enc:?}, decoder plan {from_dec:?}",
        trt.libraries().product.name,
        device.name,
        device.compute_capability.0,
        device.compute_capability.1
    );
    let mut tensors: Vec<(String, usize)> = Vec::new();
    for spec in &manifest.tensors {
        if !tensors.iter().any(|(name, _)| *name == spec.name) {
            tensors.push((spec.name.clone(), spec.shape.iter().product()));
        }
    }
    // SAFETY: buffers are used on their session's stream only, in order.
    unsafe { context.disable_event_tracking() };
    let shared = Shared { encoder: Arc::new(encoder), decoder: Arc::new(decoder), tensors, context };
    Ok(Box::new(TensorRtBackend { shared: Arc::new(shared) }))
}

/// The `TRT_*` sections that bake this device's plans into `file`: each graph's plan (baked,
/// cached or built now) stored with its key.
pub fn bake(file: &EngineFile, manifest: &Manifest) -> Result<Vec<(Tag, Vec<u8>)>> {
    let trt = load_libraries()?;
    let (_context, device) = device()?;
    let options = BuildOptions { workspace: WORKSPACE };
    [Graph::Encoder, Graph::Decoder]
        .into_iter()
        .map(|graph| {
            let key = key(file, manifest, graph, &trt, &device)?;
            let onnx = file.section(if graph == Graph::Encoder { Tag::ENCODER } else { Tag::DECODER });
            let dtype = if graph == Graph::Encoder { manifest.precision.encoder } else { manifest.precision.decoder };
            let built =
                trt.build(onnx.expect("the key found the section"), precision(dtype), options.workspace, &[])?;
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
        probe::guarded("creating a session", || Ok(Box::new(TrtRunner::new(self.shared.clone())?) as Box<dyn Runner>))
    }
}

/// One session: a stream, a device buffer per tensor (features shared by both passes), and an
/// execution context per graph with those buffers bound.
struct TrtRunner {
    encoder: TrtContext,
    decoder: TrtContext,
    /// The buffers, in the order of `Shared::tensors`.
    buffers: Vec<CudaSlice<f32>>,
    stream: Arc<CudaStream>,
    encoded: bool,
    shared: Arc<Shared>,
}

impl TrtRunner {
    fn new(shared: Arc<Shared>) -> Result<TrtRunner> {
        shared.context.bind_to_thread().map_err(driver_failed("binding the context"))?;
        let stream = shared.context.new_stream().map_err(driver_failed("creating a stream"))?;
        let mut buffers = Vec::with_capacity(shared.tensors.len());
        for (_, len) in &shared.tensors {
            buffers.push(stream.alloc_zeros::<f32>((*len).max(1)).map_err(driver_failed("allocating device memory"))?);
        }
        let mut encoder = shared.encoder.context()?;
        let mut decoder = shared.decoder.context()?;
        for ((name, _), buffer) in shared.tensors.iter().zip(&mut buffers) {
            let (address, _) = buffer.device_ptr_mut(&stream);
            for (context, engine) in [(&mut encoder, &shared.encoder), (&mut decoder, &shared.decoder)] {
                if engine.tensor(name)?.is_some() {
                    // SAFETY: the buffer holds the tensor's elements (checked against the
                    // manifest at open) and lives as long as the runner, which owns both.
                    unsafe { context.bind(name, address as *mut c_void)? };
                }
            }
        }
        Ok(TrtRunner { encoder, decoder, buffers, stream, encoded: false, shared })
    }

    /// The buffer of tensor `name`.
    fn buffer(&mut self, name: &str) -> Result<&mut CudaSlice<f32>> {
        let index = self.shared.tensors.iter().position(|(n, _)| n == name);
        index.map(|i| &mut self.buffers[i]).ok_or_else(|| error(format!("the engine has no tensor `{name}`")))
    }

    /// Copies `inputs` in, runs the graph, copies `output` out.
    fn pass(&mut self, encoder: bool, inputs: [(&str, &[f32]); 2], output: (&str, &mut [f32])) -> Result<()> {
        let stream = self.stream.clone();
        for (name, data) in inputs {
            let buffer = self.buffer(name)?;
            if buffer.len() != data.len() {
                return Err(error(format!("`{name}` has {} values, the plan takes {}", data.len(), buffer.len())));
            }
            stream.memcpy_htod(data, buffer).map_err(driver_failed("copying an input to the device"))?;
        }
        let context = if encoder { &mut self.encoder } else { &mut self.decoder };
        // SAFETY: the stream is this runner's, on the plans' device; every tensor was bound.
        unsafe { context.enqueue(stream.cu_stream() as *mut c_void)? };
        let (name, out) = output;
        let buffer = self.buffer(name)?;
        if buffer.len() != out.len() {
            return Err(error(format!("`{name}` has room for {} values, the plan gives {}", out.len(), buffer.len())));
        }
        stream.memcpy_dtoh(&*buffer, out).map_err(driver_failed("copying an output from the device"))?;
        stream.synchronize().map_err(driver_failed("running the plan"))
    }
}

impl Runner for TrtRunner {
    fn encode(&mut self, image: &[f32], mask: &[f32], ctx: &mut [f32]) -> Result<()> {
        probe::guarded("encoder", || self.pass(true, [("image", image), ("mask", mask)], ("ctx", ctx)))?;
        self.encoded = true;
        Ok(())
    }

    fn decode(&mut self, ctx: &[f32], ctx_valid: &[f32], logits: &mut [f32]) -> Result<()> {
        if !self.encoded {
            return Err(error("decode called before encode"));
        }
        probe::guarded("decoder", || self.pass(false, [("ctx", ctx), ("ctx_valid", ctx_valid)], ("logits", logits)))
    }
}
