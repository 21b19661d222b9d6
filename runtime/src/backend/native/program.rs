//! A lowered [`Plan`] compiled for the native executor: every value placed once, either in the
//! program's constants or at a fixed offset of the session's arena (offsets shared by values
//! whose lifetimes do not overlap), convolutions' weights packed for the tile kernel, Conv +
//! (Add of a residual) + Relu/Clip fused into one step, and every size checked so that running
//! it can only touch memory it owns.

use std::collections::HashMap;

use super::gemm::{self, Activation, Isa};
use super::int8::{self, Conv8};
use crate::backend::plan::{
    row_major_strides, BinaryKind, Op, Plan, UnaryKind, ValueId, ValueKind, WeightData, Window,
};

/// Arena offsets are multiples of this many floats (64 bytes, one cache line).
const ALIGN: usize = 16;

/// Most axes a strided step may have.
pub const MAX_AXES: usize = 8;

/// Most floats a program's arena may span (1 GiB).
const MAX_ARENA: usize = 1 << 28;

/// Where a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At this offset of the session's arena.
    Arena(usize),
    /// At this offset of the program's constants.
    Constant(usize),
}

/// A value's place and length, in floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Where it starts.
    pub place: Place,
    /// Floats.
    pub len: usize,
}

impl Slot {
    fn arena_range(&self) -> Option<std::ops::Range<usize>> {
        match self.place {
            Place::Arena(at) => Some(at..at + self.len),
            Place::Constant(_) => None,
        }
    }
}

/// How the tile kernel reads a convolution's im2col matrix (row (c, ky, kx), column = output
/// position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Columns {
    /// Built panel by panel into scratch.
    Im2col,
    /// A 1×1, stride-1, unpadded convolution: the input itself (row c at `offsets[c]`).
    Pointwise {
        /// c · positions.
        offsets: Vec<usize>,
    },
    /// Read in place from the input rearranged once into scratch: each plane padded and, for a
    /// stride s > 1, split into s_h × s_w phase planes (row ≡ a, column ≡ b mod s) of `ph` ×
    /// `pw`, so that output position (oy, ox) of im2col row r lies at `offsets[r] + oy · pw + ox`.
    /// When output rows are whole panels each row's panels are read there; otherwise the product
    /// runs over the `out_h` × `pw` grid (`pw - out_w` columns per row wasted) into scratch and
    /// the output rows are copied out of it.
    Padded {
        /// c · phases · ph · pw + phase · ph · pw + dy · pw + dx, per im2col row (c, ky, kx).
        offsets: Vec<usize>,
        /// Stride (h, w): the phase planes per input plane.
        stride: [usize; 2],
        /// Height of a phase plane.
        ph: usize,
        /// Width of a phase plane.
        pw: usize,
        /// Floats of the rearranged input: the planes, and room for the last grid panel's reads.
        len: usize,
        /// Columns of the grid product (`out_h` × `pw` rounded up to whole panels), or 0 when
        /// output rows are whole panels.
        grid: usize,
    },
    /// Winograd's F(2×2, 3×3) (see `winograd.rs`; AVX-512): the packed weights are its 16
    /// transformed matrices.
    #[cfg(target_arch = "x86_64")]
    Winograd,
}

impl Columns {
    /// Floats of scratch the convolution `op` needs with these columns on `isa`.
    fn scratch(&self, op: &Op, isa: Isa) -> usize {
        let &Op::Conv { c_in, c_out, window, groups, .. } = op else { unreachable!("a convolution") };
        let (out_group, k) = (c_out / groups, c_in / groups * window.kernel[0] * window.kernel[1]);
        match self {
            Columns::Im2col | Columns::Pointwise { .. } => k * isa.nr(),
            Columns::Padded { len, grid, .. } => len + out_group * grid,
            #[cfg(target_arch = "x86_64")]
            Columns::Winograd => super::winograd::shared_len(&window, c_in),
        }
    }
}

/// A convolution's packed weights and what is fused into its store.
#[derive(Debug, Clone)]
pub struct ConvExtra {
    /// Weights packed per group for the tile kernel ([`gemm::pack_a`]), in the constants; `None`
    /// for groups too narrow for the kernel (they run as a direct loop on the plain weights).
    pub packed: Option<Slot>,
    /// How the kernel reads the input (with packed weights).
    pub columns: Columns,
    /// A residual added before the activation (an `Add` fused into the step).
    pub residual: Option<Slot>,
    /// Relu or Clip fused into the step.
    pub activation: Activation,
}

/// Precomputed data of one step.
#[derive(Debug, Clone)]
pub enum Extra {
    /// Nothing.
    None,
    /// Of a convolution.
    Conv(ConvExtra),
    /// Of an int8 convolution (it reads the float input of its Quantize step, which it quantises
    /// itself), with a fused residual and activation.
    Int8Conv {
        /// The compiled convolution.
        conv: Box<Conv8>,
        /// A residual added before the activation.
        residual: Option<Slot>,
        /// Relu or Clip.
        activation: Activation,
    },
    /// Of a resize: per output row and per output column, the two input positions and the
    /// weight of the second.
    Resize {
        /// Per output row.
        rows: Vec<(usize, usize, f32)>,
        /// Per output column.
        cols: Vec<(usize, usize, f32)>,
        /// When `cols` doubles the width with two fractions taking turns (a 2× bilinear
        /// upsample): output columns 2i + 1 and 2i + 2 blend inputs i and i + 1 by these.
        doubled: Option<[f32; 2]>,
    },
}

impl Extra {
    /// Whether this is a convolution run by Winograd's F(2×2, 3×3).
    pub fn is_winograd(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Extra::Conv(ConvExtra { columns: Columns::Winograd, .. }) = self {
            return true;
        }
        false
    }
}

/// One step, ready to run.
#[derive(Debug, Clone)]
pub struct Step {
    /// The ONNX node's name, for errors.
    pub node: String,
    /// What to compute (as the plan says).
    pub op: Op,
    /// Operands, in [`Op`]'s order.
    pub inputs: Vec<Slot>,
    /// The result.
    pub output: Slot,
    /// Precomputed data.
    pub extra: Extra,
}

/// A compiled graph.
#[derive(Debug)]
pub struct Program {
    /// The tile kernel the packed weights are laid out for.
    pub isa: Isa,
    /// The int8 convolutions' tile kernel (unused when `compile` was given none: then no step
    /// is an int8 convolution).
    pub int8: int8::Kernel,
    /// The work, in order.
    pub steps: Vec<Step>,
    /// Weights and folded constants, f32 (an fp16 engine's are converted at open), packed
    /// weights among them.
    pub constants: Vec<f32>,
    /// The end of this program's part of the arena (it starts at the `base` it was compiled at).
    pub arena_end: usize,
    /// Floats of scratch the largest step needs (packed panels).
    pub scratch: usize,
    /// Graph inputs, in graph order.
    pub inputs: Vec<(String, Slot)>,
    /// Graph outputs, in graph order.
    pub outputs: Vec<(String, Slot)>,
}

impl Program {
    /// Compiles `plan` for `isa` (its int8 convolutions for `int8`, or in f32 when none), placing
    /// its arena values from offset `base` on; `bound` gives
    /// inputs a place fixed elsewhere (the decoder reads the encoder's features where the
    /// encoder wrote them). An inconsistent plan (sizes that do not match) is refused with the
    /// node's name.
    pub fn compile(
        plan: &Plan,
        isa: Isa,
        int8: Option<int8::Kernel>,
        base: usize,
        bound: &[(&str, Slot)],
    ) -> Result<Program, String> {
        let steps = match int8 {
            Some(_) => quantised_convolutions(plan, fuse(plan)),
            None => fuse(plan),
        };
        let mut constants = Vec::new();
        let mut constant_slots: HashMap<ValueId, Slot> = HashMap::new();
        let root = |v: ValueId| match plan.values[v].kind {
            ValueKind::Alias(target) => target,
            _ => v,
        };
        // Lifetimes (first and last step, inclusive) of the values the arena holds.
        let end = steps.len();
        let mut life: HashMap<ValueId, (usize, usize)> = HashMap::new();
        for (_, v) in &plan.inputs {
            life.insert(root(*v), (0, end));
        }
        for (i, step) in steps.iter().enumerate() {
            for &v in step.inputs.iter().chain(step.extra_inputs.iter()) {
                if let Some(l) = life.get_mut(&root(v)) {
                    l.1 = l.1.max(i);
                }
            }
            life.entry(root(step.output)).or_insert((i, i));
        }
        for (_, v) in &plan.outputs {
            if let Some(l) = life.get_mut(&root(*v)) {
                l.1 = end;
            }
        }
        let mut fixed: HashMap<ValueId, Slot> = HashMap::new();
        for (name, v) in &plan.inputs {
            if let Some((_, s)) = bound.iter().find(|(n, _)| n == name) {
                if s.len != plan.values[*v].len() {
                    return Err(format!(
                        "input `{name}` takes {} values, its source holds {}",
                        plan.values[*v].len(),
                        s.len
                    ));
                }
                fixed.insert(root(*v), *s);
            }
        }
        let bound = fixed;
        let mut order: Vec<(ValueId, (usize, usize))> =
            life.iter().filter(|(v, _)| !bound.contains_key(v)).map(|(&v, &l)| (v, l)).collect();
        order.sort_by_key(|&(v, (first, _))| (first, v));
        let mut placed: Vec<(usize, usize, (usize, usize))> = Vec::new();
        let mut arena: HashMap<ValueId, Slot> = bound;
        let mut arena_end = base;
        for (v, l) in order {
            let len = plan.values[v].len();
            let at = first_fit(&placed, base, len, l);
            if at + len > MAX_ARENA {
                return Err(format!("the graph needs over {MAX_ARENA} floats of working memory"));
            }
            placed.push((at, len, l));
            arena_end = arena_end.max(at + len);
            arena.insert(v, Slot { place: Place::Arena(at), len });
        }
        let mut slot = |v: ValueId, constants: &mut Vec<f32>| -> Result<Slot, String> {
            let r = root(v);
            if let Some(s) = arena.get(&r) {
                return Ok(*s);
            }
            if let Some(s) = constant_slots.get(&r) {
                return Ok(*s);
            }
            match &plan.values[r].kind {
                ValueKind::Weight(data) => {
                    let (at, len) = (constants.len(), plan.values[r].len());
                    match data {
                        WeightData::F32(d) => constants.extend_from_slice(d),
                        data => constants.extend(data.to_f32()),
                    }
                    if constants.len() - at != len {
                        let shape = &plan.values[r].shape;
                        return Err(format!("a constant of shape {shape:?} holds {} values", constants.len() - at));
                    }
                    let s = Slot { place: Place::Constant(at), len };
                    constant_slots.insert(r, s);
                    Ok(s)
                }
                _ => Err(format!("value {v} is read but never written")),
            }
        };
        let mut compiled = Vec::with_capacity(steps.len());
        let mut scratch = 0;
        for step in &steps {
            let fail = |why: String| format!("node `{}`: {why}", step.node);
            let inputs: Vec<Slot> =
                step.inputs.iter().map(|&v| slot(v, &mut constants)).collect::<Result<_, _>>().map_err(fail)?;
            let output = slot(step.output, &mut constants).map_err(fail)?;
            let extra = match &step.op {
                Op::Conv { .. } if step.int8.is_some() => {
                    let residual =
                        step.extra_inputs.first().map(|&v| slot(v, &mut constants)).transpose().map_err(fail)?;
                    let conv = step.int8.clone().expect("checked");
                    scratch = scratch.max(conv.scratch_bytes().div_ceil(4));
                    Extra::Int8Conv { conv, residual, activation: step.activation }
                }
                &Op::Conv { c_in, c_out, window, groups, .. } => {
                    let residual =
                        step.extra_inputs.first().map(|&v| slot(v, &mut constants)).transpose().map_err(fail)?;
                    let (out_group, k) = (c_out / groups, c_in / groups * window.kernel[0] * window.kernel[1]);
                    let columns = columns(&step.op, isa);
                    let packed = if out_group >= isa.mr() / 2 {
                        let weights = constant_data(&constants, inputs[1])
                            .ok_or_else(|| fail("convolution weights must be constant".into()))?;
                        if weights.len() != c_out * k {
                            return Err(fail(format!("the weights hold {} values, not {}", weights.len(), c_out * k)));
                        }
                        let packed = match columns {
                            #[cfg(target_arch = "x86_64")]
                            Columns::Winograd => super::winograd::pack_weights(weights, c_out, c_in, isa),
                            _ => {
                                let per_group = gemm::packed_len(out_group, k, isa.mr());
                                let mut packed = vec![0.0; per_group * groups];
                                for g in 0..groups {
                                    let w = &weights[g * out_group * k..][..out_group * k];
                                    let dst = &mut packed[g * per_group..];
                                    gemm::pack_a(gemm::Matrix::dense(w, out_group, k), isa.mr(), dst);
                                }
                                packed
                            }
                        };
                        let s = Slot { place: Place::Constant(constants.len()), len: packed.len() };
                        constants.extend_from_slice(&packed);
                        Some(s)
                    } else {
                        None
                    };
                    scratch = scratch.max(columns.scratch(&step.op, isa));
                    Extra::Conv(ConvExtra { packed, columns, residual, activation: step.activation })
                }
                Op::MatMul { m, n, k, .. } => {
                    scratch = scratch.max(gemm::packed_len(*m, *k, isa.mr()) + k * isa.nr()).max(n * k);
                    Extra::None
                }
                &Op::Resize { mode, coordinates, in_h, in_w, out_h, out_w, .. } => {
                    if in_h == 0 || in_w == 0 {
                        return Err(fail("resize of an empty image".into()));
                    }
                    let taps = |i, o| crate::backend::plan::resize_taps(mode, coordinates, i, o);
                    let cols = taps(in_w, out_w);
                    Extra::Resize { rows: taps(in_h, out_h), doubled: doubled(&cols), cols }
                }
                _ => Extra::None,
            };
            let compiled_step = Step { node: step.node.clone(), op: coalesced(&step.op), inputs, output, extra };
            super::check::step(&compiled_step).map_err(fail)?;
            compiled.push(compiled_step);
        }
        let mut io = |list: &[(String, ValueId)], constants: &mut Vec<f32>| -> Result<Vec<(String, Slot)>, String> {
            list.iter().map(|(name, v)| Ok((name.clone(), slot(*v, constants)?))).collect()
        };
        let inputs = io(&plan.inputs, &mut constants)?;
        let outputs = io(&plan.outputs, &mut constants)?;
        for step in &compiled {
            let out = step.output.arena_range().ok_or_else(|| format!("node `{}` writes a constant", step.node))?;
            let clash = step.inputs.iter().chain(conv_residual(step)).filter_map(Slot::arena_range);
            if clash.into_iter().any(|r| r.start < out.end && out.start < r.end) {
                return Err(format!("node `{}` would overwrite its own input", step.node));
            }
        }
        let int8 = int8.unwrap_or(int8::Kernel::Portable);
        Ok(Program { isa, int8, steps: compiled, constants, arena_end, scratch, inputs, outputs })
    }
}

/// `op` with the axes of a strided element-wise op or broadcast merged wherever every operand
/// walks them as one (a dense `Add` of two [1, 64, 32, 32] tensors becomes one run of 65,536),
/// so that the kernels' inner loops are long. Other ops are returned as they are.
fn coalesced(op: &Op) -> Op {
    match op {
        Op::Binary { kind, shape, a_strides, b_strides } => {
            let (shape, mut strides) = merge_axes(shape, &[a_strides, b_strides]);
            let b_strides = strides.pop().expect("two operands");
            let a_strides = strides.pop().expect("two operands");
            Op::Binary { kind: *kind, shape, a_strides, b_strides }
        }
        Op::Broadcast { shape, strides } => {
            let (shape, mut strides) = merge_axes(shape, &[strides]);
            Op::Broadcast { shape, strides: strides.pop().expect("one operand") }
        }
        other => other.clone(),
    }
}

/// `shape` with its axes of length 1 dropped and each axis merged into the next one wherever
/// every stride list steps across both as across one axis; the stride lists to match.
fn merge_axes(shape: &[usize], strides: &[&Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let keep: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] != 1).collect();
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for &a in &keep {
        let merges = !out_shape.is_empty()
            && strides.iter().zip(&out).all(|(s, o)| *o.last().expect("same length") == s[a] * shape[a]);
        if merges {
            *out_shape.last_mut().expect("not empty") *= shape[a];
            for (o, s) in out.iter_mut().zip(strides) {
                *o.last_mut().expect("not empty") = s[a];
            }
        } else {
            out_shape.push(shape[a]);
            for (o, s) in out.iter_mut().zip(strides) {
                o.push(s[a]);
            }
        }
    }
    if shape.contains(&0) {
        return (shape.to_vec(), strides.iter().map(|s| s.to_vec()).collect());
    }
    if out_shape.is_empty() {
        // One element (or a scalar): one axis of length 1.
        return (vec![1], strides.iter().map(|_| vec![0]).collect());
    }
    (out_shape, out)
}

/// The two fractions of `cols` (output column → (left input, right input, fraction)) when they
/// double the width: columns 2i + 1 and 2i + 2 blend inputs i and i + 1, by the first and the
/// second fraction (the first and last columns may be anything).
fn doubled(cols: &[(usize, usize, f32)]) -> Option<[f32; 2]> {
    let n = cols.len();
    if n < 4 || !n.is_multiple_of(2) {
        return None;
    }
    let f = [cols[1].2, cols[2].2];
    (1..n - 1).all(|o| cols[o] == ((o - 1) / 2, (o - 1) / 2 + 1, f[(o - 1) % 2])).then_some(f)
}

/// How the tile kernel should read the input of the convolution `op`.
fn columns(op: &Op, isa: Isa) -> Columns {
    let &Op::Conv { c_in, window, dilation, groups, .. } = op else { unreachable!("a convolution") };
    let Window { h, w, kernel: [kh, kw], stride: [sh, sw], pad, out_h, out_w } = window;
    let channels = c_in / groups.max(1);
    #[cfg(target_arch = "x86_64")]
    if super::winograd::fits(op, isa) {
        return Columns::Winograd;
    }
    if [kh, kw, sh, sw] == [1; 4] && pad == [0; 4] {
        return Columns::Pointwise { offsets: (0..channels).map(|c| c * out_h * out_w).collect() };
    }
    // Every phase plane must be read, or rearranging costs more than im2col saves (a 1×1
    // convolution of stride 2 reads one phase in four).
    // Taps t · d (t < taps) meet every residue mod s when gcd(d, s) = 1 and taps ≥ s.
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let every_phase = |taps: usize, d: usize, s: usize| taps >= s && gcd(d, s) == 1;
    if sh == 0 || sw == 0 || !every_phase(kh, dilation[0], sh) || !every_phase(kw, dilation[1], sw) {
        return Columns::Im2col;
    }
    let (ph, pw) = ((h + pad[0] + pad[2]).div_ceil(sh), (w + pad[1] + pad[3]).div_ceil(sw));
    let plane = ph * pw;
    let mut offsets = Vec::with_capacity(channels * kh * kw);
    for c in 0..channels {
        for ky in 0..kh {
            for kx in 0..kw {
                let ([y, x], [sh, sw]) = ([ky * dilation[0], kx * dilation[1]], [sh, sw]);
                let phase = (y % sh) * sw + x % sw;
                offsets.push((c * sh * sw + phase) * plane + y / sh * pw + x / sw);
            }
        }
    }
    let nr = isa.nr();
    let grid = if out_w % nr == 0 { 0 } else { (out_h * pw).div_ceil(nr) * nr };
    // The grid's last panel reads up to `grid` columns past an offset.
    let reach = offsets.iter().max().map_or(0, |&o| o + grid);
    let len = (channels * sh * sw * plane).max(reach);
    Columns::Padded { offsets, stride: [sh, sw], ph, pw, len, grid }
}

/// `steps` with every convolution that reads a Quantize step's output and has int8 weights
/// compiled to its int8 form (reading the Quantize step's input), and the Quantize steps that
/// only such convolutions read left out.
fn quantised_convolutions(plan: &Plan, mut steps: Vec<Fused>) -> Vec<Fused> {
    let root = |v: ValueId| match plan.values[v].kind {
        ValueKind::Alias(target) => target,
        _ => v,
    };
    let mut readers: HashMap<ValueId, usize> = HashMap::new();
    for v in steps.iter().flat_map(|s| s.inputs.iter().chain(&s.extra_inputs)) {
        *readers.entry(root(*v)).or_default() += 1;
    }
    for (_, v) in &plan.outputs {
        *readers.entry(root(*v)).or_default() += 1;
    }
    let quantize: HashMap<ValueId, (usize, [f32; 3])> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s.op {
            Op::Unary { kind: UnaryKind::Quantize { scale, min, max }, .. } => Some((s.output, (i, [scale, min, max]))),
            _ => None,
        })
        .collect();
    let mut converted = vec![0; steps.len()];
    for i in 0..steps.len() {
        let step = &steps[i];
        let (Op::Conv { .. }, Some(&x), Some(&w)) = (&step.op, step.inputs.first(), step.inputs.get(1)) else {
            continue;
        };
        let (Some(&(q, quantisation)), ValueKind::Weight(WeightData::I8(weights))) =
            (quantize.get(&root(x)), &plan.values[root(w)].kind)
        else {
            continue;
        };
        if let Some(conv) = Conv8::new(&step.op, weights, quantisation) {
            let source = steps[q].inputs[0];
            steps[i].int8 = Some(Box::new(conv));
            steps[i].inputs[0] = source;
            converted[q] += 1;
        }
    }
    steps
        .into_iter()
        .enumerate()
        .filter(|(i, s)| converted[*i] == 0 || readers.get(&root(s.output)) != Some(&converted[*i]))
        .map(|(_, s)| s)
        .collect()
}

/// The residual a convolution reads, if one is fused into it.
fn conv_residual(step: &Step) -> Option<&Slot> {
    match &step.extra {
        Extra::Conv(ConvExtra { residual: Some(r), .. }) | Extra::Int8Conv { residual: Some(r), .. } => Some(r),
        _ => None,
    }
}

/// The contents of a constant slot.
fn constant_data(constants: &[f32], slot: Slot) -> Option<&[f32]> {
    match slot.place {
        Place::Constant(at) => constants.get(at..at + slot.len),
        Place::Arena(_) => None,
    }
}

/// The lowest aligned offset from `base` where `len` floats overlap no placed value whose
/// lifetime overlaps `life`.
fn first_fit(placed: &[(usize, usize, (usize, usize))], base: usize, len: usize, life: (usize, usize)) -> usize {
    let mut busy: Vec<(usize, usize)> =
        placed.iter().filter(|(_, _, l)| l.0 <= life.1 && life.0 <= l.1).map(|&(at, n, _)| (at, at + n)).collect();
    busy.sort_unstable();
    let mut at = base;
    for (start, end) in busy {
        if at + len <= start {
            break;
        }
        at = at.max(end.next_multiple_of(ALIGN));
    }
    at
}

/// A plan step after fusion: its output may be a later step's, and a convolution may carry a
/// residual and an activation.
struct Fused {
    node: String,
    op: Op,
    inputs: Vec<ValueId>,
    /// A fused residual (convolutions only).
    extra_inputs: Vec<ValueId>,
    output: ValueId,
    activation: Activation,
    /// The int8 form of a convolution (its input is then its Quantize step's input).
    int8: Option<Box<Conv8>>,
}

/// The plan's steps with each Conv followed by its only reader, a dense `Add` (a residual) and/or
/// a Relu or Clip, merged into the Conv.
fn fuse(plan: &Plan) -> Vec<Fused> {
    let mut readers: HashMap<ValueId, usize> = HashMap::new();
    let root = |v: ValueId| match plan.values[v].kind {
        ValueKind::Alias(target) => target,
        _ => v,
    };
    for step in &plan.steps {
        for &v in &step.inputs {
            *readers.entry(root(v)).or_default() += 1;
        }
    }
    for (_, v) in &plan.outputs {
        *readers.entry(root(*v)).or_default() += 2;
    }
    let has_alias: Vec<bool> = {
        let mut a = vec![false; plan.values.len()];
        for v in &plan.values {
            if let ValueKind::Alias(t) = v.kind {
                a[t] = true;
            }
        }
        a
    };
    let defined_at: HashMap<ValueId, usize> = plan.steps.iter().enumerate().map(|(i, s)| (s.output, i)).collect();
    let mut out = Vec::new();
    let mut skip = vec![false; plan.steps.len()];
    for (i, step) in plan.steps.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let mut fused = Fused {
            node: step.node.clone(),
            op: step.op.clone(),
            inputs: step.inputs.clone(),
            extra_inputs: Vec::new(),
            output: step.output,
            activation: Activation::Identity,
            int8: None,
        };
        if matches!(step.op, Op::Conv { .. }) {
            let mut next = i + 1;
            let sole_reader = |v: ValueId, j: usize| {
                j < plan.steps.len()
                    && readers.get(&v) == Some(&1)
                    && !has_alias[v]
                    && plan.steps[j].inputs.contains(&v)
            };
            // A residual: out + r, both dense and of one shape, r ready before the Conv runs.
            if sole_reader(fused.output, next) {
                let add = &plan.steps[next];
                if let Op::Binary { kind: BinaryKind::Add, shape, a_strides, b_strides } = &add.op {
                    let dense = row_major_strides(shape);
                    let other = if add.inputs[0] == fused.output { add.inputs[1] } else { add.inputs[0] };
                    let ready = defined_at.get(&root(other)).is_none_or(|&d| d < i);
                    let same_len = plan.values[other].len() == plan.values[fused.output].len();
                    if *a_strides == dense && *b_strides == dense && ready && same_len && other != fused.output {
                        fused.extra_inputs.push(other);
                        fused.output = add.output;
                        skip[next] = true;
                        next += 1;
                    }
                }
            }
            if sole_reader(fused.output, next) {
                let activation = match plan.steps[next].op {
                    Op::Unary { kind: UnaryKind::Relu, .. } => Some(Activation::Relu),
                    Op::Unary { kind: UnaryKind::Clip { min, max }, .. } => Some(Activation::Clip(min, max)),
                    _ => None,
                };
                if let Some(activation) = activation {
                    fused.activation = activation;
                    fused.output = plan.steps[next].output;
                    skip[next] = true;
                }
            }
        }
        out.push(fused);
    }
    out
}
