//! A device-independent execution plan of one ONNX graph with static shapes: what a GPU backend
//! runs. [`lower`] folds everything that does not depend on the graph inputs (shape arithmetic,
//! constants, casts of weights), resolves reshapes to aliases and gives every remaining node
//! concrete sizes, so an executor is a loop over [`Step`]s with one kernel per [`Op`].
//!
//! All tensors are dense, row-major (NCHW for images) and f32 in the plan's arithmetic; weights
//! keep the precision they were stored in ([`WeightData`]) so an fp16 engine uploads f16.

mod lower;
#[cfg(test)]
pub(crate) mod reference;

pub use lower::{lower, row_major_strides, Unsupported};

use crate::error::{Error, Result};
use crate::format::{EngineFile, Tag};
use crate::manifest::{Direction, Graph, Manifest};

/// Floating-point operations of one run of `plan`'s convolutions and matrix products (a
/// multiply-add counts two): the work that the other ops are small beside.
pub fn flops(plan: &Plan) -> u64 {
    plan.steps
        .iter()
        .map(|step| match step.op {
            Op::Conv { n, c_in, c_out, window, groups, .. } => {
                2 * n
                    * c_out
                    * (c_in / groups.max(1))
                    * window.kernel[0]
                    * window.kernel[1]
                    * window.out_h
                    * window.out_w
            }
            Op::MatMul { batch, m, n, k, .. } => 2 * batch * m * n * k,
            _ => 0,
        } as u64)
        .sum()
}

/// Lowers one graph of the engine for the manifest's input shapes and checks its inputs and
/// outputs against the manifest's tensor table; errors are `backend`'s.
pub fn lower_engine(file: &EngineFile, manifest: &Manifest, graph: Graph, backend: &'static str) -> Result<Plan> {
    let (name, tag) = match graph {
        Graph::Encoder => ("encoder", Tag::ENCODER),
        Graph::Decoder => ("decoder", Tag::DECODER),
    };
    let bytes = file.section(tag).expect("verified engines have both graphs");
    let inputs: Vec<(&str, &[usize])> =
        manifest.tensors(graph, Direction::Input).map(|t| (t.name.as_str(), &t.shape[..])).collect();
    let plan = lower(bytes, &inputs).map_err(|e| Error::Backend { backend, what: format!("{name} graph: {e}") })?;
    for (direction, values) in [(Direction::Input, &plan.inputs), (Direction::Output, &plan.outputs)] {
        let specs: Vec<_> = manifest.tensors(graph, direction).collect();
        if specs.len() != values.len() {
            return Err(Error::contract(
                name,
                format!("the graph has {} {direction:?}s, the manifest lists {}", values.len(), specs.len()),
            ));
        }
        for (tensor, id) in values {
            let shape = &plan.values[*id].shape;
            if !specs.iter().any(|s| &s.name == tensor && &s.shape == shape) {
                return Err(Error::contract(
                    name,
                    format!("{direction:?} `{tensor}` of shape {shape:?} is not in the manifest's tensor table"),
                ));
            }
        }
    }
    Ok(plan)
}

/// Index of a value (tensor) in [`Plan::values`].
pub type ValueId = usize;

/// One graph, lowered.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every tensor the steps read or write.
    pub values: Vec<Value>,
    /// The graph inputs, in graph order: (ONNX name, value).
    pub inputs: Vec<(String, ValueId)>,
    /// The graph outputs, in graph order: (ONNX name, value).
    pub outputs: Vec<(String, ValueId)>,
    /// The work, in execution order.
    pub steps: Vec<Step>,
}

/// A tensor of the plan.
#[derive(Debug, Clone)]
pub struct Value {
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Where its contents come from.
    pub kind: ValueKind,
}

impl Value {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a value's contents come from.
#[derive(Debug, Clone)]
pub enum ValueKind {
    /// A graph input, written by the caller before a run.
    Input,
    /// Constant data (an initializer, or folded at lowering), uploaded once.
    Weight(WeightData),
    /// Written by one step.
    Computed,
    /// The same memory as another value under another shape (Reshape, Flatten, Squeeze,
    /// Unsqueeze, Identity, a Cast to f32 of an f32 tensor, and ops that turn out to be
    /// identities, such as a Transpose that only moves axes of length 1): no step, no copy. The
    /// target is never itself an alias; it may be an input, a weight or a computed value.
    Alias(ValueId),
}

/// Constant tensor data in the precision the engine stored it.
#[derive(Debug, Clone)]
pub enum WeightData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 16-bit floats (an fp16 engine's weights); run as f32 or f16 as the executor chooses.
    F16(Vec<half::f16>),
    /// int8 values and their scales (an int8 engine's weights); run as int8 where the executor has
    /// an int8 kernel for the op, else dequantised.
    I8(Int8),
}

impl WeightData {
    /// The values as f32 (int8 dequantised).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            WeightData::F32(data) => data.clone(),
            WeightData::F16(data) => data.iter().map(|x| x.to_f32()).collect(),
            WeightData::I8(data) => data.to_f32(),
        }
    }
}

/// Symmetric int8 values with one scale per channel (an ONNX DequantizeLinear of int8 data with
/// zero point 0): element `i` stands for `values[i] · scales[(i / inner) % scales.len()]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8 {
    /// The quantised values, row-major.
    pub values: Vec<i8>,
    /// One scale per channel (one in all for a per-tensor scale).
    pub scales: Vec<f32>,
    /// Elements per channel step: the product of the dimensions after the channel axis.
    pub inner: usize,
}

impl Int8 {
    /// The scale of element `i`.
    pub fn scale_of(&self, i: usize) -> f32 {
        self.scales[(i / self.inner) % self.scales.len()]
    }

    /// The values dequantised.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().enumerate().map(|(i, &q)| f32::from(q) * self.scale_of(i)).collect()
    }
}

/// One node's work.
#[derive(Debug, Clone)]
pub struct Step {
    /// The ONNX node's name (or `op_type#index` when it has none), for errors and profiles.
    pub node: String,
    /// What to compute.
    pub op: Op,
    /// Operands, in the order each [`Op`] variant documents.
    pub inputs: Vec<ValueId>,
    /// The one result (a `Computed` value).
    pub output: ValueId,
}

/// Element-wise functions of two operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// a ^ b
    Pow,
}

impl BinaryKind {
    /// The function on one pair of elements.
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
            BinaryKind::Max => a.max(b),
            BinaryKind::Min => a.min(b),
            BinaryKind::Pow => a.powf(b),
        }
    }
}

/// Element-wise functions of one operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryKind {
    /// max(x, 0)
    Relu,
    /// tanh(x)
    Tanh,
    /// sqrt(x)
    Sqrt,
    /// -1, 0 or 1
    Sign,
    /// min(max(x, min), max)
    Clip {
        /// Lower bound (-inf when absent).
        min: f32,
        /// Upper bound (+inf when absent).
        max: f32,
    },
    /// 1 / (1 + exp(-x))
    Sigmoid,
    /// exp(x)
    Exp,
    /// -x
    Neg,
    /// |x|
    Abs,
    /// x (a copy into a new buffer)
    Copy,
    /// The value an int8 tensor holds for x (an ONNX QuantizeLinear → DequantizeLinear pair, the
    /// zero point folded into the bounds): round(x · (1 / scale)) to even, clamped to
    /// [min, max], times scale.
    Quantize {
        /// Quantisation step.
        scale: f32,
        /// Lowest quantised level (the integer type's minimum minus the zero point).
        min: f32,
        /// Highest quantised level.
        max: f32,
    },
}

impl UnaryKind {
    /// The function on one element (inlined, so that a kernel's loop over one kind compiles to
    /// that kind's code alone).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryKind::Relu => x.max(0.0),
            UnaryKind::Tanh => x.tanh(),
            UnaryKind::Sqrt => x.sqrt(),
            UnaryKind::Sign if x > 0.0 => 1.0,
            UnaryKind::Sign if x < 0.0 => -1.0,
            UnaryKind::Sign => 0.0,
            UnaryKind::Clip { min, max } => x.max(min).min(max),
            UnaryKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryKind::Exp => x.exp(),
            UnaryKind::Neg => -x,
            UnaryKind::Abs => x.abs(),
            UnaryKind::Copy => x,
            UnaryKind::Quantize { scale, min, max } => (x * scale.recip()).round_ties_even().clamp(min, max) * scale,
        }
    }
}

/// Reductions over one run of consecutive axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceKind {
    /// Σ x
    Sum,
    /// Σ x / n
    Mean,
    /// max x
    Max,
    /// sqrt(Σ x²)
    L2,
}

/// Pooling windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Mean over the window; `count_include_pad` says whether padding counts in the divisor.
    Average {
        /// ONNX `count_include_pad`.
        count_include_pad: bool,
    },
    /// Max over the window (padding never wins).
    Max,
}

/// How Resize maps an output coordinate to an input coordinate (ONNX
/// `coordinate_transformation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeCoordinates {
    /// (x + 0.5) / scale - 0.5
    HalfPixel,
    /// As HalfPixel, but 0 when the output length is 1.
    PytorchHalfPixel,
    /// x · (in - 1) / (out - 1)
    AlignCorners,
    /// x / scale
    Asymmetric,
}

/// Resize interpolation (ONNX `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Nearest neighbour (ONNX default `nearest_mode` round_prefer_floor).
    Nearest,
    /// Bilinear on the last two axes.
    Linear,
}

/// A 2-D window sliding over the last two axes of an input: a convolution's or a pooling's
/// geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window height and width, in taps.
    pub kernel: [usize; 2],
    /// Stride (h, w).
    pub stride: [usize; 2],
    /// Padding (top, left, bottom, right).
    pub pad: [usize; 4],
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

/// The kernels a plan needs. Sizes are final; all buffers are dense row-major f32 (in the
/// plan's arithmetic).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// 2-D convolution. Inputs: x [n, c_in, h, w], weight [c_out, c_in / groups, kh, kw],
    /// optional bias [c_out]. Output [n, c_out, out_h, out_w].
    Conv {
        /// Batch.
        n: usize,
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// The sliding window (kh × kw taps, each `dilation` apart).
        window: Window,
        /// Dilation (h, w).
        dilation: [usize; 2],
        /// Groups.
        groups: usize,
    },
    /// Batched matrix product: out[i] = a[i] (m×k) · b[i] (k×n) for i in 0..batch. Inputs: a, b.
    /// `a_batch_stride` / `b_batch_stride` are the element strides between batches (0 when an
    /// operand is broadcast over the batch). Output [.., m, n], dense.
    MatMul {
        /// Number of products.
        batch: usize,
        /// Rows of a and out.
        m: usize,
        /// Columns of b and out.
        n: usize,
        /// Inner dimension.
        k: usize,
        /// Elements between consecutive a matrices (m·k or 0).
        a_batch_stride: usize,
        /// Elements between consecutive b matrices (k·n or 0).
        b_batch_stride: usize,
    },
    /// out[idx] = f(a[idx · a_strides], b[idx · b_strides]) with numpy broadcasting: the strides
    /// are in elements, one per output axis, 0 on broadcast axes. Inputs: a, b.
    Binary {
        /// The function.
        kind: BinaryKind,
        /// Output shape.
        shape: Vec<usize>,
        /// Strides of a, per output axis.
        a_strides: Vec<usize>,
        /// Strides of b, per output axis.
        b_strides: Vec<usize>,
    },
    /// out[i] = f(x[i]) for `len` elements. Input: x.
    Unary {
        /// The function.
        kind: UnaryKind,
        /// Elements.
        len: usize,
    },
    /// Broadcast copy (Expand): out[idx] = x[idx · strides], strides 0 on broadcast axes.
    /// Input: x.
    Broadcast {
        /// Output shape.
        shape: Vec<usize>,
        /// Strides of x, per output axis.
        strides: Vec<usize>,
    },
    /// Reduction of x viewed as [outer, len, inner] over the middle axis; output [outer, inner].
    /// Input: x.
    Reduce {
        /// The function.
        kind: ReduceKind,
        /// Product of the axes before the reduced ones.
        outer: usize,
        /// Product of the reduced axes.
        len: usize,
        /// Product of the axes after them.
        inner: usize,
    },
    /// Softmax of x viewed as [outer, len, inner] over the middle axis. Input: x.
    Softmax {
        /// Product of the axes before the axis.
        outer: usize,
        /// Length of the axis.
        len: usize,
        /// Product of the axes after it.
        inner: usize,
    },
    /// Layer normalisation of x viewed as [rows, cols] over cols:
    /// (x - mean) / sqrt(var + eps) · scale + bias. Inputs: x, scale [cols], optional bias [cols].
    LayerNorm {
        /// Rows.
        rows: usize,
        /// Normalised length.
        cols: usize,
        /// Epsilon.
        eps: f32,
    },
    /// 2-D pooling of x [planes, h, w] (planes = n·c). Input: x. Output [planes, out_h, out_w].
    Pool {
        /// Average or max.
        kind: PoolKind,
        /// n·c.
        planes: usize,
        /// The pooling window (adjacent taps).
        window: Window,
    },
    /// Resize of the last two axes of x [planes, in_h, in_w]. Input: x.
    Resize {
        /// Interpolation.
        mode: ResizeMode,
        /// Coordinate mapping.
        coordinates: ResizeCoordinates,
        /// Product of the leading axes.
        planes: usize,
        /// Input height.
        in_h: usize,
        /// Input width.
        in_w: usize,
        /// Output height.
        out_h: usize,
        /// Output width.
        out_w: usize,
    },
    /// Axis permutation: out axis i is input axis perm[i]. Input: x of shape `in_shape`.
    Transpose {
        /// Input shape.
        in_shape: Vec<usize>,
        /// Permutation.
        perm: Vec<usize>,
    },
    /// Concatenation along one axis, with every input viewed as [outer, widths[i]] (widths[i] =
    /// input axis length × product of the later axes). Inputs: the parts, in order.
    Concat {
        /// Product of the axes before the concatenation axis.
        outer: usize,
        /// Per input, its contiguous run per outer index.
        widths: Vec<usize>,
    },
    /// Strided window: out[idx] = x[Σ (starts[a] + idx[a] · steps[a]) · in_strides[a]] (steps
    /// may be negative). Input: x.
    Slice {
        /// Output shape.
        shape: Vec<usize>,
        /// First index per axis.
        starts: Vec<usize>,
        /// Step per axis.
        steps: Vec<isize>,
        /// Element strides of x per axis.
        in_strides: Vec<usize>,
    },
    /// Gather with constant indices along one axis of x viewed as [outer, axis_len, inner]:
    /// out[o, j, i] = x[o, indices[j], i]. Input: x.
    Gather {
        /// Product of the axes before the axis.
        outer: usize,
        /// Length of the gathered axis in x.
        axis_len: usize,
        /// Product of the axes after it.
        inner: usize,
        /// Indices into the axis (already wrapped to non-negative).
        indices: Vec<usize>,
    },
    /// Constant padding of x (`in_shape`) with `value`: `before[a]` / `after[a]` elements per
    /// axis (non-negative). Input: x.
    Pad {
        /// Input shape.
        in_shape: Vec<usize>,
        /// Padding before each axis.
        before: Vec<usize>,
        /// Padding after each axis.
        after: Vec<usize>,
        /// Fill value.
        value: f32,
    },
}

/// For every output position along one axis: the two input positions it interpolates and the
/// weight of the second (nearest: the same position twice). `len_in` is at least 1.
pub fn resize_taps(
    mode: ResizeMode,
    coordinates: ResizeCoordinates,
    len_in: usize,
    len_out: usize,
) -> Vec<(usize, usize, f32)> {
    let scale = len_out as f32 / len_in as f32;
    let last = len_in as isize - 1;
    let clamp = |i: f32| (i as isize).clamp(0, last) as usize;
    (0..len_out)
        .map(|o| {
            let o = o as f32;
            let x = match coordinates {
                ResizeCoordinates::HalfPixel => (o + 0.5) / scale - 0.5,
                ResizeCoordinates::PytorchHalfPixel if len_out > 1 => (o + 0.5) / scale - 0.5,
                ResizeCoordinates::AlignCorners if len_out > 1 => o * (len_in - 1) as f32 / (len_out - 1) as f32,
                ResizeCoordinates::PytorchHalfPixel | ResizeCoordinates::AlignCorners => 0.0,
                ResizeCoordinates::Asymmetric => o / scale,
            };
            match mode {
                // round_prefer_floor: halves go down.
                ResizeMode::Nearest if x - x.floor() == 0.5 => (clamp(x.floor()), clamp(x.floor()), 0.0),
                ResizeMode::Nearest => (clamp(x.round()), clamp(x.round()), 0.0),
                ResizeMode::Linear => (clamp(x.floor()), clamp(x.floor() + 1.0), x - x.floor()),
            }
        })
        .collect()
}
