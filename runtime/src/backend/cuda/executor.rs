//! Runs one lowered graph on a session's stream. At creation every value gets a device address
//! (a buffer of its own, a shared weight, its alias target's, or another graph's output) and
//! every step becomes device operations on those addresses, so a run is a loop of launches that
//! can be captured as a CUDA graph as it is.
//!
//! Graph inputs and outputs named by the caller cross to the host through f32 staging buffers,
//! converted to and from the storage type by the first and last operations.

use std::ffi::{c_int, c_void};
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::cudnn::{sys as dnn_sys, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig, PushKernelArg, SyncOnDrop,
};

use super::copies::strided_copies;
use super::graph::{address, DeviceGraph};
use super::kernels::{self, Kernel, Kernels, Strided};
use super::{error, Element, ErrorContext};
use crate::backend::plan::{Op, Step, ValueKind, Window};
use crate::error::{Error, Result};

/// A tensor another graph left on the device, as an input of this one.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    /// Its name (the producing graph's output, the consuming graph's input).
    pub name: String,
    /// Its address.
    pub address: CUdeviceptr,
    /// Its element count.
    pub len: usize,
}

/// One graph, ready to run on one stream.
pub struct Executor<T> {
    /// The device operations, in order, with the node each comes from.
    ops: Vec<(String, DeviceOp<T>)>,
    /// f32 staging buffers of the host inputs, in the order `new` was given their names, with
    /// their lengths.
    inputs: Vec<(CudaSlice<f32>, usize)>,
    /// f32 staging buffers of the host outputs, likewise.
    outputs: Vec<(CudaSlice<f32>, usize)>,
    /// The outputs that stay on the device.
    device_outputs: Vec<DeviceTensor>,
    /// The largest cuDNN workspace an op needs, in bytes.
    workspace: usize,
    /// The buffers of the graph's own values, held for their addresses.
    _buffers: Vec<CudaSlice<T>>,
}

impl<T: Element> Executor<T> {
    /// Gives every value of `graph` an address and turns its steps into device operations.
    /// `host_inputs` and `host_outputs` name the graph inputs the caller uploads and the outputs
    /// it downloads; the other inputs come from `device_inputs`, by name.
    pub fn new(
        graph: &DeviceGraph<T>,
        kernels: &Kernels,
        stream: &Arc<CudaStream>,
        cudnn: &Arc<Cudnn>,
        host_inputs: &[&str],
        host_outputs: &[&str],
        device_inputs: &[DeviceTensor],
    ) -> Result<Self> {
        let plan = &graph.plan;
        let (addresses, buffers) = addresses(graph, stream, host_inputs, device_inputs)?;
        let staging = |len: usize| stream.alloc_zeros::<f32>(len.max(1)).context("allocating device memory");
        let build = Build { graph, kernels, stream, cudnn, addresses };
        let mut ops = Vec::new();
        let mut inputs = Vec::new();
        for name in host_inputs {
            let (id, len) = build.io(&plan.inputs, name)?;
            let staging = staging(len)?;
            let op = build.kernel(Kernel::CastIn, per_element(len)).address(address(&staging, stream));
            ops.push((format!("input {name}"), op.address(build.addresses[id]).size(len).into()));
            inputs.push((staging, len));
        }
        for (index, step) in plan.steps.iter().enumerate() {
            ops.extend(build.step(index, step)?.into_iter().map(|op| (step.node.clone(), op)));
        }
        let mut outputs = Vec::new();
        for name in host_outputs {
            let (id, len) = build.io(&plan.outputs, name)?;
            let staging = staging(len)?;
            let op = build.kernel(Kernel::CastOut, per_element(len)).address(build.addresses[id]);
            ops.push((format!("output {name}"), op.address(address(&staging, stream)).size(len).into()));
            outputs.push((staging, len));
        }
        let device_outputs = plan
            .outputs
            .iter()
            .filter(|(name, _)| !host_outputs.contains(&name.as_str()))
            .map(|(name, id)| DeviceTensor {
                name: name.clone(),
                address: build.addresses[*id],
                len: plan.values[*id].len(),
            })
            .collect();
        let workspace = ops
            .iter()
            .filter_map(|(_, op)| match op {
                DeviceOp::Conv(conv) => Some(conv.workspace),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        Ok(Executor { ops, inputs, outputs, device_outputs, workspace, _buffers: buffers })
    }

    /// The outputs that stay on the device (the encoder's features).
    pub fn device_outputs(&self) -> &[DeviceTensor] {
        &self.device_outputs
    }

    /// The cuDNN workspace [`Executor::launch`] needs, in bytes.
    pub fn workspace(&self) -> usize {
        self.workspace
    }

    /// Copies the host inputs, in the order given to [`Executor::new`], to their staging buffers.
    pub fn upload(&mut self, stream: &Arc<CudaStream>, data: &[&[f32]]) -> Result<()> {
        for ((staging, len), data) in self.inputs.iter_mut().zip(data) {
            check_len(data.len(), *len)?;
            stream.memcpy_htod(*data, staging).context("copying an input to the device")?;
        }
        Ok(())
    }

    /// Queues every operation on `stream`; `workspace` must hold [`Executor::workspace`] bytes.
    /// With `sync`, waits for each and names the node of the first that fails.
    pub fn launch(
        &mut self,
        stream: &Arc<CudaStream>,
        blas: &CudaBlas,
        workspace: &mut CudaSlice<u8>,
        sync: bool,
    ) -> Result<()> {
        for (node, op) in &mut self.ops {
            let launched = match op {
                DeviceOp::Kernel(kernel) => kernel.launch(stream).map_err(|e| e.to_string()),
                DeviceOp::MatMul(matmul) => matmul.launch::<T>(blas).map_err(|e| e.to_string()),
                DeviceOp::Conv(conv) => conv.launch(workspace).map_err(|e| e.to_string()),
            };
            launched.context(format_args!("node `{node}`"))?;
            if sync {
                stream.synchronize().context(format_args!("node `{node}`"))?;
            }
        }
        Ok(())
    }

    /// Copies the host outputs, in the order given to [`Executor::new`], from their staging
    /// buffers (waiting for the stream).
    pub fn download(&self, stream: &Arc<CudaStream>, out: &mut [&mut [f32]]) -> Result<()> {
        for ((staging, len), out) in self.outputs.iter().zip(out) {
            check_len(out.len(), *len)?;
            stream.memcpy_dtoh(&staging.slice(..*len), *out).context("copying an output from the device")?;
        }
        Ok(())
    }
}

/// The device address of every value of `graph`, and the buffers allocated on `stream` for its
/// inputs (the `host_inputs`; the others are `device_inputs`) and computed values.
fn addresses<T: Element>(
    graph: &DeviceGraph<T>,
    stream: &Arc<CudaStream>,
    host_inputs: &[&str],
    device_inputs: &[DeviceTensor],
) -> Result<(Vec<CUdeviceptr>, Vec<CudaSlice<T>>)> {
    let plan = &graph.plan;
    let input_name = |id| plan.inputs.iter().find(|(_, v)| *v == id).map(|(name, _)| name.as_str());
    let mut addresses = vec![0; plan.values.len()];
    let mut buffers = Vec::new();
    for (id, value) in plan.values.iter().enumerate() {
        addresses[id] = match (&value.kind, input_name(id)) {
            (ValueKind::Alias(_), _) => continue,
            (ValueKind::Weight(_), _) => graph.weight(id, stream).expect("uploaded with the graph"),
            (ValueKind::Input, Some(name)) if !host_inputs.contains(&name) => {
                let source = device_inputs.iter().find(|t| t.name == name).ok_or_else(|| {
                    Error::contract(graph.name, format!("input `{name}` is not an output of the encoder"))
                })?;
                if source.len != value.len() {
                    return Err(Error::contract(
                        graph.name,
                        format!("input `{name}` holds {} numbers, the encoder makes {}", value.len(), source.len),
                    ));
                }
                source.address
            }
            (ValueKind::Input | ValueKind::Computed, _) => {
                let buffer = stream.alloc_zeros::<T>(value.len().max(1)).context("allocating device memory")?;
                buffers.push(buffer);
                address(buffers.last().expect("just pushed"), stream)
            }
        };
    }
    for (id, value) in plan.values.iter().enumerate() {
        if let ValueKind::Alias(target) = value.kind {
            addresses[id] = addresses[target];
        }
    }
    Ok((addresses, buffers))
}

fn check_len(given: usize, expected: usize) -> Result<()> {
    if given != expected {
        return Err(Error::invalid(format!("a graph tensor of {expected} numbers was given {given}")));
    }
    Ok(())
}

/// Threads per block of every kernel.
const BLOCK: u32 = 256;

/// One thread per element, grid-striding past 65535 blocks.
fn per_element(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per row.
fn per_row(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(BLOCK as usize / 32).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// A device operation.
enum DeviceOp<T> {
    Kernel(KernelLaunch),
    MatMul(MatMul),
    Conv(Box<Conv<T>>),
}

impl<T> From<KernelLaunch> for DeviceOp<T> {
    fn from(kernel: KernelLaunch) -> Self {
        DeviceOp::Kernel(kernel)
    }
}

/// A kernel parameter: `long long`, `float`, a pointer or a `Strided`.
enum Arg {
    Address(CUdeviceptr),
    Int(i64),
    Float(f32),
    Strided(Strided),
}

/// A kernel with its launch shape and parameters, in the order of its signature in `kernels.cu`.
struct KernelLaunch {
    function: CudaFunction,
    config: LaunchConfig,
    args: Vec<Arg>,
}

impl KernelLaunch {
    fn address(mut self, address: CUdeviceptr) -> Self {
        self.args.push(Arg::Address(address));
        self
    }

    fn size(mut self, size: usize) -> Self {
        self.args.push(Arg::Int(size as i64));
        self
    }

    fn int(mut self, value: i64) -> Self {
        self.args.push(Arg::Int(value));
        self
    }

    fn float(mut self, value: f32) -> Self {
        self.args.push(Arg::Float(value));
        self
    }

    fn strided(mut self, strided: Strided) -> Self {
        self.args.push(Arg::Strided(strided));
        self
    }

    fn launch(&self, stream: &CudaStream) -> Result<(), cudarc::driver::DriverError> {
        let mut builder = stream.launch_builder(&self.function);
        for arg in &self.args {
            match arg {
                Arg::Address(a) => builder.arg(a),
                Arg::Int(i) => builder.arg(i),
                Arg::Float(f) => builder.arg(f),
                Arg::Strided(s) => builder.arg(s),
            };
        }
        // SAFETY: `Build` pushes the parameters in the order and with the types of the kernel's
        // signature, and every address points into a live buffer at least as long as the kernel
        // reads or writes (the plan's shapes size both).
        unsafe { builder.launch(self.config) }.map(drop)
    }
}

/// A batched row-major product on cuBLAS: c[i] (m×n) = a[i] (m×k) · b[i] (k×n).
struct MatMul {
    a: CUdeviceptr,
    b: CUdeviceptr,
    c: CUdeviceptr,
    batch: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    a_stride: i64,
    b_stride: i64,
}

impl MatMul {
    /// Queues the product, in f32 arithmetic on elements `T`. cuBLAS is column-major, so it
    /// computes cᵀ = bᵀ · aᵀ: the same memory.
    fn launch<T: Element>(&self, blas: &CudaBlas) -> Result<(), blas::CublasError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the addresses hold batch matrices of the given sizes (or one, with stride 0),
        // alpha and beta are f32 as CUBLAS_COMPUTE_32F requires, and the handle's stream is the
        // session's.
        unsafe {
            blas::gemm_strided_batched_ex(
                *blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                self.n,
                self.m,
                self.k,
                (&alpha as *const f32).cast(),
                self.b as *const c_void,
                T::BLAS,
                self.n,
                self.b_stride,
                self.a as *const c_void,
                T::BLAS,
                self.k,
                self.a_stride,
                (&beta as *const f32).cast(),
                self.c as *mut c_void,
                T::BLAS,
                self.n,
                i64::from(self.m) * i64::from(self.n),
                self.batch,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
    }
}

/// A cuDNN convolution (NCHW, symmetric padding) with its algorithm chosen at creation.
struct Conv<T> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    algorithm: dnn_sys::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
    src: DeviceRef<T>,
    filter: DeviceRef<T>,
    dst: DeviceRef<T>,
}

impl<T: Element> Conv<T> {
    fn launch(&mut self, workspace: &mut CudaSlice<u8>) -> Result<(), cudarc::cudnn::CudnnError> {
        let forward = ConvForward { conv: &self.conv, x: &self.x, w: &self.w, y: &self.y };
        let (one, zero) = (T::from_f32(1.0), T::from_f32(0.0));
        // SAFETY: the descriptors were made for these buffers' shapes and element type, and the
        // workspace holds at least the bytes this algorithm asked for.
        unsafe { forward.launch(self.algorithm, Some(workspace), (one, zero), &self.src, &self.filter, &mut self.dst) }
    }
}

/// A device buffer by address, for cuDNN's launch, which takes cudarc's buffer traits. Event
/// tracking is off in this backend, so taking its pointer records nothing.
struct DeviceRef<T> {
    address: CUdeviceptr,
    len: usize,
    stream: Arc<CudaStream>,
    marker: PhantomData<T>,
}

impl<T> DeviceSlice<T> for DeviceRef<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl<T> DevicePtr<T> for DeviceRef<T> {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.address, SyncOnDrop::Record(None))
    }
}

impl<T> DevicePtrMut<T> for DeviceRef<T> {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.address, SyncOnDrop::Record(None))
    }
}

/// What turning steps into device operations needs.
struct Build<'a, T> {
    graph: &'a DeviceGraph<T>,
    kernels: &'a Kernels,
    stream: &'a Arc<CudaStream>,
    cudnn: &'a Arc<Cudnn>,
    /// Device address of every value.
    addresses: Vec<CUdeviceptr>,
}

impl<T: Element> Build<'_, T> {
    /// The value and element count of the graph input or output `name` among `values`.
    fn io(&self, values: &[(String, usize)], name: &str) -> Result<(usize, usize)> {
        let (_, id) = values
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::contract(self.graph.name, format!("the graph has no input or output `{name}`")))?;
        Ok((*id, self.graph.plan.values[*id].len()))
    }

    fn kernel(&self, kernel: Kernel, config: LaunchConfig) -> KernelLaunch {
        KernelLaunch { function: self.kernels.get(kernel).clone(), config, args: Vec::new() }
    }

    /// The error for a step this backend cannot run.
    fn refuse(&self, step: &Step, why: &str) -> Error {
        error(format!(
            "{} graph: node `{}` (op {}): {why}, which the cuda backend does not support",
            self.graph.name,
            step.node,
            op_name(&step.op)
        ))
    }

    /// The data-movement `step` (writing `len` numbers at `y`) as strided copies, after a fill
    /// with the pad value for a Pad.
    fn copies(&self, step: &Step, y: CUdeviceptr, len: usize) -> Result<Vec<DeviceOp<T>>> {
        let mut ops = Vec::new();
        if let Op::Pad { value, .. } = step.op {
            ops.push(self.kernel(Kernel::Fill, per_element(len)).address(y).size(len).float(value).into());
        }
        for copy in strided_copies(&step.op).expect("called for data-movement steps") {
            let n = copy.shape.iter().product();
            let strided = Strided::new(&copy.shape, &copy.x_strides, &copy.y_strides).expect("axes checked");
            let op = self.kernel(Kernel::CopyStrided, per_element(n)).address(self.addresses[step.inputs[copy.input]]);
            ops.push(op.address(y).size(n).strided(strided).int(copy.bases[0]).int(copy.bases[1]).into());
        }
        Ok(ops)
    }

    /// `values` as C ints, or the step's error if one does not fit.
    fn ints<const N: usize>(&self, step: &Step, values: [usize; N]) -> Result<[c_int; N]> {
        let mut ints = [0; N];
        for (int, value) in ints.iter_mut().zip(values) {
            *int = c_int::try_from(value).map_err(|_| self.refuse(step, "a size past 2³¹"))?;
        }
        Ok(ints)
    }

    /// The convolution `step` (writing `len` numbers at `y`) on cuDNN, with its bias added by a
    /// kernel.
    fn conv(&self, step: &Step, y: CUdeviceptr, len: usize) -> Result<Vec<DeviceOp<T>>> {
        let Op::Conv { n, c_in, c_out, window, dilation, groups } = step.op else {
            unreachable!("called for Conv steps")
        };
        let Window { h, w, kernel, stride, pad, out_h, out_w } = window;
        let [n, c_in, h, w, c_out, group_in, out_h, out_w, groups] =
            self.ints(step, [n, c_in, h, w, c_out, c_in / groups, out_h, out_w, groups])?;
        let [kh, kw, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w] =
            self.ints(step, [kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1], dilation[0], dilation[1]])?;
        let nchw = dnn_sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let cudnn = self.cudnn;
        let x_desc = cudnn.create_4d_tensor::<T>(nchw, [n, c_in, h, w]).context("cuDNN")?;
        let w_desc = cudnn.create_4d_filter::<T>(nchw, [c_out, group_in, kh, kw]).context("cuDNN")?;
        let y_desc = cudnn.create_4d_tensor::<T>(nchw, [n, c_out, out_h, out_w]).context("cuDNN")?;
        let mode = dnn_sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        let mut conv = cudnn
            .create_conv2d::<f32>([pad_h, pad_w], [stride_h, stride_w], [dilation_h, dilation_w], mode)
            .context("cuDNN")?;
        conv.set_group_count(groups).context("cuDNN group count")?;
        conv.set_math_type(T::CONV_MATH).context("cuDNN math type")?;
        let forward = ConvForward { conv: &conv, x: &x_desc, w: &w_desc, y: &y_desc };
        let algorithm = forward.pick_algorithm().context(format_args!("node `{}`: cuDNN", step.node))?;
        let workspace = forward.get_workspace_size(algorithm).context("cuDNN workspace")?;
        let device = |value: usize| DeviceRef {
            address: self.addresses[value],
            len: self.graph.plan.values[value].len(),
            stream: self.stream.clone(),
            marker: PhantomData,
        };
        let (src, filter, dst) = (device(step.inputs[0]), device(step.inputs[1]), device(step.output));
        let conv = Conv { conv, x: x_desc, w: w_desc, y: y_desc, algorithm, workspace, src, filter, dst };
        let mut ops = vec![DeviceOp::Conv(Box::new(conv))];
        if let Some(&bias) = step.inputs.get(2) {
            let (channels, plane) = (c_out as usize, len / (n as usize * c_out as usize));
            let op = self.kernel(Kernel::BiasAdd, per_element(len)).address(y).address(self.addresses[bias]);
            ops.push(op.size(len).size(channels).size(plane).into());
        }
        Ok(ops)
    }

    /// The device operations of step `index`.
    fn step(&self, index: usize, step: &Step) -> Result<Vec<DeviceOp<T>>> {
        let x = |i: usize| self.addresses[step.inputs[i]];
        let y = self.addresses[step.output];
        let len = self.graph.plan.values[step.output].len();
        if let Some(why) = unsupported(&step.op) {
            return Err(self.refuse(step, &why));
        }
        if len == 0 {
            return Ok(vec![]);
        }
        let op = match &step.op {
            Op::Conv { .. } => return self.conv(step, y, len),
            Op::Broadcast { .. } | Op::Transpose { .. } | Op::Concat { .. } | Op::Slice { .. } | Op::Pad { .. } => {
                return self.copies(step, y, len)
            }
            Op::MatMul { batch, m, n, k, a_batch_stride, b_batch_stride } => {
                let [batch, m, n, k] = self.ints(step, [*batch, *m, *n, *k])?;
                let (a_stride, b_stride) = (*a_batch_stride as i64, *b_batch_stride as i64);
                DeviceOp::MatMul(MatMul { a: x(0), b: x(1), c: y, batch, m, n, k, a_stride, b_stride })
            }
            Op::Binary { kind, shape, a_strides, b_strides } => {
                let to_i64 = |strides: &[usize]| strides.iter().map(|&s| s as i64).collect::<Vec<_>>();
                let strided = Strided::new(shape, &to_i64(a_strides), &to_i64(b_strides)).expect("axes checked");
                let op = self.kernel(Kernel::Binary, per_element(len)).address(x(0)).address(x(1)).address(y);
                op.size(len).strided(strided).int(kernels::binary_code(*kind)).into()
            }
            Op::Unary { kind, len } => {
                let (code, lo, hi, scale) = kernels::unary_code(*kind);
                let op = self.kernel(Kernel::Unary, per_element(*len)).address(x(0)).address(y).size(*len);
                op.int(code).float(lo).float(hi).float(scale).into()
            }
            Op::Reduce { kind, outer, len, inner } => {
                let op = self.kernel(Kernel::Reduce, per_row(outer * inner)).address(x(0)).address(y);
                op.size(*outer).size(*len).size(*inner).int(kernels::reduce_code(*kind)).into()
            }
            Op::Softmax { outer, len, inner } => {
                let op = self.kernel(Kernel::Softmax, per_row(outer * inner)).address(x(0)).address(y);
                op.size(*outer).size(*len).size(*inner).into()
            }
            Op::LayerNorm { rows, cols, eps } => {
                let bias = step.inputs.get(2).map_or(0, |&b| self.addresses[b]);
                let op = self.kernel(Kernel::LayerNorm, per_row(*rows)).address(x(0)).address(x(1)).address(bias);
                op.address(y).size(*rows).size(*cols).float(*eps).into()
            }
            Op::Pool { kind, planes, window: Window { h, w, kernel, stride, pad, out_h, out_w } } => {
                let op = self.kernel(Kernel::Pool, per_element(len)).address(x(0)).address(y);
                let op = op.size(*planes).size(*h).size(*w).size(*out_h).size(*out_w);
                let op = op.size(kernel[0]).size(kernel[1]).size(stride[0]).size(stride[1]);
                op.size(pad[0]).size(pad[1]).size(pad[2]).size(pad[3]).int(kernels::pool_code(*kind)).into()
            }
            Op::Resize { mode, coordinates, planes, in_h, in_w, out_h, out_w } => {
                let (linear, coordinates) = kernels::resize_codes(*mode, *coordinates);
                let op = self.kernel(Kernel::Resize, per_element(len)).address(x(0)).address(y).size(*planes);
                op.size(*in_h).size(*in_w).size(*out_h).size(*out_w).int(linear).int(coordinates).into()
            }
            Op::Gather { outer, axis_len, inner, indices } => {
                let at = self.graph.indices(index, self.stream).expect("uploaded with the graph");
                let op = self.kernel(Kernel::Gather, per_element(len)).address(x(0)).address(at).address(y);
                op.size(*outer).size(*axis_len).size(*inner).size(indices.len()).into()
            }
        };
        Ok(vec![op])
    }
}

/// Why this backend cannot run `op`, if it cannot: asymmetric convolution padding (cuDNN pads
/// both sides alike) or more axes than the kernels index. (Sizes past cuDNN's and cuBLAS's C
/// ints are found when the step is built.)
pub fn unsupported(op: &Op) -> Option<String> {
    if let Op::Conv { window: Window { pad, .. }, .. } = op {
        if pad[0] != pad[2] || pad[1] != pad[3] {
            return Some("asymmetric padding".into());
        }
    }
    let axes = match op {
        Op::Binary { shape, .. } => shape.len(),
        _ => strided_copies(op).map_or(0, |copies| copies.iter().map(|c| c.shape.len()).max().unwrap_or(0)),
    };
    (axes > kernels::MAX_RANK).then(|| format!("{axes} axes (the kernels take at most {})", kernels::MAX_RANK))
}

/// The name of an op, for errors.
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Conv { .. } => "Conv",
        Op::MatMul { .. } => "MatMul",
        Op::Binary { .. } => "Binary",
        Op::Unary { .. } => "Unary",
        Op::Broadcast { .. } => "Broadcast",
        Op::Reduce { .. } => "Reduce",
        Op::Softmax { .. } => "Softmax",
        Op::LayerNorm { .. } => "LayerNorm",
        Op::Pool { .. } => "Pool",
        Op::Resize { .. } => "Resize",
        Op::Transpose { .. } => "Transpose",
        Op::Concat { .. } => "Concat",
        Op::Slice { .. } => "Slice",
        Op::Gather { .. } => "Gather",
        Op::Pad { .. } => "Pad",
    }
}
