//! One session on the GPU: its stream, cuBLAS and cuDNN handles, both graphs' buffers, the
//! events that time each pass, and the CUDA graphs its passes are replayed as.

use std::sync::Arc;
use std::time::Duration;

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::cudnn::Cudnn;
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, CudaStream, DevicePtrMut};

use super::executor::Executor;
use super::probe::guarded;
use super::{error, Element, ErrorContext, Launching, Shared};
use crate::backend::{DeviceTimings, Runner};
use crate::error::Result;

/// cuBLAS workspace of a session (NVIDIA's recommendation for Hopper; enough for the others).
const BLAS_WORKSPACE: usize = 32 << 20;

/// A session's GPU state.
pub struct CudaRunner<T> {
    encoder: Pass<T>,
    decoder: Pass<T>,
    /// Whether the encoder has run, so the decoder has features to read.
    encoded: bool,
    blas: CudaBlas,
    _blas_workspace: CudaSlice<u8>,
    /// cuDNN's workspace, the larger of the two graphs' needs.
    workspace: CudaSlice<u8>,
    _cudnn: Arc<Cudnn>,
    stream: Arc<CudaStream>,
    shared: Arc<Shared<T>>,
}

// SAFETY: a runner is used by one thread at a time (`Runner` is `Send`, not `Sync`, and takes
// `&mut self`), and every handle it holds (cuDNN's, the CUDA graphs, the events) is its own:
// nothing is shared with another runner. CUDA allows such handles to move between threads as long
// as they are not used concurrently; each call binds the context to the calling thread first.
unsafe impl<T: Element> Send for CudaRunner<T> {}

impl<T: Element> CudaRunner<T> {
    /// A session of the backend `shared`: a stream, handles and both graphs' buffers.
    pub fn new(shared: Arc<Shared<T>>) -> Result<Self> {
        let context = &shared.context;
        context.bind_to_thread().context("binding the context")?;
        let stream = context.new_stream().context("creating a stream")?;
        let blas = CudaBlas::new(stream.clone()).context("creating a cuBLAS handle")?;
        let mut blas_workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE).context("allocating device memory")?;
        let (address, _) = blas_workspace.device_ptr_mut(&stream);
        // SAFETY: the workspace lives as long as the handle (both fields of the runner, the
        // handle dropped first) and is used on the handle's stream only. A fixed workspace keeps
        // cuBLAS from allocating while a CUDA graph is captured.
        unsafe { blas_sys::cublasSetWorkspace_v2(*blas.handle(), address as *mut _, BLAS_WORKSPACE) }
            .result()
            .context("setting the cuBLAS workspace")?;
        let cudnn = Cudnn::new(stream.clone()).context("creating a cuDNN handle")?;
        let encoder =
            Executor::new(&shared.encoder, &shared.kernels, &stream, &cudnn, &["image", "mask"], &["ctx"], &[])?;
        let features = encoder.device_outputs().to_vec();
        let decoder = Executor::new(
            &shared.decoder,
            &shared.kernels,
            &stream,
            &cudnn,
            &["ctx", "ctx_valid"],
            &["logits"],
            &features,
        )?;
        let bytes = encoder.workspace().max(decoder.workspace()).max(1);
        let workspace = stream.alloc_zeros::<u8>(bytes).context("allocating device memory")?;
        let encoder = Pass::new("encoder", encoder, &stream)?;
        let decoder = Pass::new("decoder", decoder, &stream)?;
        stream.synchronize().context("preparing the session")?;
        Ok(CudaRunner {
            encoder,
            decoder,
            encoded: false,
            blas,
            _blas_workspace: blas_workspace,
            workspace,
            _cudnn: cudnn,
            stream,
            shared,
        })
    }
}

impl<T: Element> Runner for CudaRunner<T> {
    fn encode(&mut self, image: &[f32], mask: &[f32], ctx: &mut [f32]) -> Result<()> {
        guarded("encoder", || {
            let device = Device { stream: &self.stream, blas: &self.blas, workspace: &mut self.workspace };
            self.encoder.run(device, self.shared.launching, &[image, mask], &mut [ctx])?;
            self.encoded = true;
            Ok(())
        })
    }

    fn decode(&mut self, ctx: &[f32], ctx_valid: &[f32], logits: &mut [f32]) -> Result<()> {
        if !self.encoded {
            return Err(error("decode called before encode"));
        }
        guarded("decoder", || {
            let device = Device { stream: &self.stream, blas: &self.blas, workspace: &mut self.workspace };
            self.decoder.run(device, self.shared.launching, &[ctx, ctx_valid], &mut [logits])
        })
    }

    fn device_timings(&self) -> Option<DeviceTimings> {
        let [encoder_upload, encoder, encoder_download] = self.encoder.times()?;
        let [decoder_upload, decoder, decoder_download] = self.decoder.times()?;
        Some(DeviceTimings {
            upload: encoder_upload + decoder_upload,
            encoder,
            decoder,
            download: encoder_download + decoder_download,
        })
    }
}

/// What running a pass needs besides the pass.
struct Device<'a> {
    stream: &'a Arc<CudaStream>,
    blas: &'a CudaBlas,
    workspace: &'a mut CudaSlice<u8>,
}

/// How a pass's operations are queued next.
enum Mode {
    /// One by one, the first time (every kernel loaded, every library warmed up).
    First,
    /// Captured into a CUDA graph, which is then launched.
    Capture,
    /// Replaying the captured graph.
    Graph(CudaGraph),
    /// One by one, always.
    Eager,
}

/// One graph of a session: its executor, how it is launched, and the events timing its last
/// run (before the upload, after it, after the compute, after the download).
struct Pass<T> {
    name: &'static str,
    executor: Executor<T>,
    mode: Mode,
    events: [CudaEvent; 4],
    ran: bool,
}

impl<T: Element> Pass<T> {
    fn new(name: &'static str, executor: Executor<T>, stream: &Arc<CudaStream>) -> Result<Self> {
        let event = || stream.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).context("creating an event");
        let events = [event()?, event()?, event()?, event()?];
        Ok(Pass { name, executor, mode: Mode::First, events, ran: false })
    }

    /// Uploads `inputs`, runs the graph and downloads `outputs`, recording the events between.
    fn run(
        &mut self,
        device: Device,
        launching: Launching,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<()> {
        let stream = device.stream;
        stream.context().bind_to_thread().context("binding the context")?;
        self.events[0].record(stream).context("recording an event")?;
        self.executor.upload(stream, inputs)?;
        self.events[1].record(stream).context("recording an event")?;
        self.compute(device, launching)?;
        self.events[2].record(stream).context("recording an event")?;
        self.executor.download(stream, outputs)?;
        self.events[3].record(stream).context("recording an event")?;
        stream.synchronize().context(format_args!("{} (SEGICL_CUDA_DEBUG=1 names the failing node)", self.name))?;
        self.ran = true;
        Ok(())
    }

    /// Queues the graph's operations: one by one the first time, then as a CUDA graph captured
    /// on the second run (one by one for good if capture fails, or as `launching` says).
    fn compute(&mut self, device: Device, launching: Launching) -> Result<()> {
        let Device { stream, blas, workspace } = device;
        let sync = launching == Launching::Debug;
        match &self.mode {
            Mode::Graph(graph) => return graph.launch().context(format_args!("launching the {} graph", self.name)),
            Mode::First | Mode::Eager => {
                self.executor.launch(stream, blas, workspace, sync)?;
                if matches!(self.mode, Mode::First) {
                    self.mode = if launching == Launching::Graphs { Mode::Capture } else { Mode::Eager };
                }
                return Ok(());
            }
            Mode::Capture => {}
        }
        match self.capture(stream, blas, workspace) {
            Ok(graph) => {
                graph.launch().context(format_args!("launching the {} graph", self.name))?;
                self.mode = Mode::Graph(graph);
            }
            Err(e) => {
                log::warn!("cuda: the {} runs without a CUDA graph: {e}", self.name);
                self.mode = Mode::Eager;
                self.executor.launch(stream, blas, workspace, false)?;
            }
        }
        Ok(())
    }

    /// Captures the graph's operations on `stream` (nothing runs) into an instantiated graph.
    fn capture(
        &mut self,
        stream: &Arc<CudaStream>,
        blas: &CudaBlas,
        workspace: &mut CudaSlice<u8>,
    ) -> Result<CudaGraph> {
        let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        stream.begin_capture(mode).context("starting a stream capture")?;
        let queued = self.executor.launch(stream, blas, workspace, false);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        queued?;
        graph.context("capturing a CUDA graph")?.ok_or_else(|| error("the capture holds no work"))
    }

    /// Device time of the last run's upload, compute and download, if it ran.
    fn times(&self) -> Option<[Duration; 3]> {
        if !self.ran {
            return None;
        }
        let between = |a: usize| {
            let ms = self.events[a].elapsed_ms(&self.events[a + 1]).ok()?;
            Some(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
        };
        Some([between(0)?, between(1)?, between(2)?])
    }
}
