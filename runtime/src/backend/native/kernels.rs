//! Running a [`Program`]: one kernel per [`Op`], reading and writing the session's arena and the
//! program's constants. Nothing here allocates; every size was checked when the program was
//! compiled (`check.rs`), and slices keep every access bounds-checked.

use super::gemm::{self, Epilogue, Isa, Matrix, Panel};
use super::int8;
use super::pool::Threads;
use super::program::{Columns, ConvExtra, Extra, Place, Program, Slot, Step, MAX_AXES};
#[cfg(target_arch = "x86_64")]
use super::winograd;
use crate::backend::plan::{BinaryKind, Op, PoolKind, ReduceKind, UnaryKind, Window};

/// Runs every step of `program` in `arena` (at least `program.arena_end` floats, its inputs
/// written) with `scratch` (at least `program.scratch` floats), the convolutions and matrix
/// products split over `threads`; adds each step's time to `profile` (one entry per step) when
/// given.
pub fn run(
    program: &Program,
    arena: &mut [f32],
    scratch: &mut [f32],
    threads: &Threads,
    mut profile: Option<&mut [std::time::Duration]>,
) {
    assert!(arena.len() >= program.arena_end, "the arena holds the program");
    let (base, arena_len) = (arena.as_mut_ptr(), arena.len());
    let constants = &program.constants[..];
    let read = |s: &Slot| -> &[f32] {
        match s.place {
            Place::Constant(at) => &constants[at..at + s.len],
            Place::Arena(at) => {
                assert!(at + s.len <= arena_len, "slot inside the arena");
                // SAFETY: in bounds (checked above); no step writes a slot it reads (checked
                // when the program was compiled), so this never aliases the output below.
                unsafe { std::slice::from_raw_parts(base.add(at), s.len) }
            }
        }
    };
    for (i, step) in program.steps.iter().enumerate() {
        let Place::Arena(at) = step.output.place else { unreachable!("compile refuses steps that write constants") };
        assert!(at + step.output.len <= arena_len, "slot inside the arena");
        // SAFETY: in bounds (checked above) and disjoint from every slot the step reads.
        let out = unsafe { std::slice::from_raw_parts_mut(base.add(at), step.output.len) };
        let started = profile.is_some().then(std::time::Instant::now);
        execute(program.isa, program.int8, step, &read, out, scratch, threads);
        if let (Some(times), Some(started)) = (profile.as_deref_mut(), started) {
            times[i] += started.elapsed();
        }
    }
}

/// Floats of the scratch each thread needs in `program` (see [`Threads`]): its B panels and a
/// resize's rows resampled across.
pub fn panel_len(program: &Program) -> usize {
    let nr = program.isa.nr();
    let panel = |step: &Step| match (&step.op, &step.extra) {
        #[cfg(target_arch = "x86_64")]
        (&Op::Conv { c_in, c_out, .. }, Extra::Conv(ConvExtra { columns: Columns::Winograd, .. })) => {
            winograd::thread_len(c_in, c_out, program.isa)
        }
        (&Op::Conv { c_in, window, groups, .. }, Extra::Conv(extra)) if extra.packed.is_some() => {
            c_in / groups * window.kernel[0] * window.kernel[1] * nr
        }
        (&Op::MatMul { n, k, .. }, _) if n >= SMALL_N => k * nr,
        (&Op::Resize { in_h, out_w, .. }, _) => in_h * out_w,
        _ => 0,
    };
    program.steps.iter().map(panel).max().unwrap_or(0)
}

/// Floats of scratch the im2col convolutions of `program` need when they are split over
/// threads (their B panels built all at once): at least `program.scratch` with one thread.
pub fn im2col_len(program: &Program) -> usize {
    let nr = program.isa.nr();
    let built = |step: &Step| match (&step.op, &step.extra) {
        (&Op::Conv { c_in, window, groups, .. }, Extra::Conv(extra))
            if extra.packed.is_some() && extra.columns == Columns::Im2col =>
        {
            c_in / groups * window.kernel[0] * window.kernel[1] * (window.out_h * window.out_w).div_ceil(nr) * nr
        }
        _ => 0,
    };
    program.steps.iter().map(built).max().unwrap_or(0)
}

/// One step.
fn execute<'m>(
    isa: Isa,
    int8: int8::Kernel,
    step: &Step,
    read: &dyn Fn(&Slot) -> &'m [f32],
    out: &mut [f32],
    scratch: &mut [f32],
    threads: &Threads,
) {
    let x = |i: usize| read(&step.inputs[i]);
    let opt = |i: usize| step.inputs.get(i).map(read);
    match &step.op {
        &Op::Conv { n, c_in, c_out, window, .. } if matches!(step.extra, Extra::Int8Conv { .. }) => {
            let Extra::Int8Conv { conv, residual, activation } = &step.extra else { unreachable!("matched") };
            let (x, residual, bytes) = (x(0), residual.as_ref().map(read), bytemuck::cast_slice_mut(scratch));
            let (image, planes) = (c_in * window.h * window.w, c_out * window.out_h * window.out_w);
            for (b, out) in out.chunks_exact_mut(planes).take(n).enumerate() {
                let residual = residual.map(|r| &r[b * planes..][..planes]);
                conv.run(int8, &x[b * image..][..image], opt(2), residual, *activation, out, bytes, threads);
            }
        }
        Op::Conv { .. } => {
            let Extra::Conv(extra) = &step.extra else { unreachable!("compiled convolutions carry ConvExtra") };
            let packed = extra.packed.as_ref().map(read);
            let residual = extra.residual.as_ref().map(read);
            conv(isa, &step.op, extra, [x(0), x(1)], packed, opt(2), residual, out, scratch, threads)
        }
        &Op::MatMul { batch, m, n, k, a_batch_stride, b_batch_stride } => {
            let (a, b) = (x(0), x(1));
            for i in 0..batch {
                let (a, b) = (&a[i * a_batch_stride..][..m * k], &b[i * b_batch_stride..][..k * n]);
                matmul(isa, [m, n, k], a, b, &mut out[i * m * n..][..m * n], scratch, threads);
            }
        }
        Op::Binary { kind, shape, a_strides, b_strides } => {
            let (a, b) = (x(0), x(1));
            // One loop per function, so that each is compiled (and vectorised) on its own.
            match kind {
                BinaryKind::Add => binary(shape, [a_strides, b_strides], [a, b], out, |x, y| x + y),
                BinaryKind::Sub => binary(shape, [a_strides, b_strides], [a, b], out, |x, y| x - y),
                BinaryKind::Mul => binary(shape, [a_strides, b_strides], [a, b], out, |x, y| x * y),
                BinaryKind::Div => binary(shape, [a_strides, b_strides], [a, b], out, |x, y| x / y),
                BinaryKind::Max => binary(shape, [a_strides, b_strides], [a, b], out, f32::max),
                BinaryKind::Min => binary(shape, [a_strides, b_strides], [a, b], out, f32::min),
                BinaryKind::Pow => binary(shape, [a_strides, b_strides], [a, b], out, f32::powf),
            }
        }
        &Op::Unary { kind, .. } => {
            let x = x(0);
            match kind {
                UnaryKind::Tanh => each(out, x, tanh),
                UnaryKind::Relu => each(out, x, |v| UnaryKind::Relu.apply(v)),
                UnaryKind::Sign => each(out, x, |v| UnaryKind::Sign.apply(v)),
                UnaryKind::Neg => each(out, x, |v| -v),
                UnaryKind::Abs => each(out, x, f32::abs),
                UnaryKind::Sqrt => each(out, x, f32::sqrt),
                UnaryKind::Copy => out.copy_from_slice(x),
                UnaryKind::Clip { min, max } => each(out, x, |v| v.max(min).min(max)),
                UnaryKind::Quantize { scale, min, max } => {
                    let inv = scale.recip();
                    each(out, x, |v| int8::level(v, inv, min, max) * scale)
                }
                other => each(out, x, |v| other.apply(v)),
            }
        }
        Op::Broadcast { shape, strides } => {
            let mut signed = [0isize; MAX_AXES];
            for (s, &v) in signed.iter_mut().zip(strides) {
                *s = v as isize;
            }
            gather_strided(shape, &signed[..shape.len()], 0, x(0), out)
        }
        &Op::Reduce { kind, outer, len, inner } => reduce(kind, [outer, len, inner], x(0), out),
        &Op::Softmax { outer, len, inner: 1 } => {
            // Rows split over the threads; an element costs about 16 multiply-adds (exp's
            // polynomial, the max, the sum and the scaling).
            let x = x(0);
            threads.split(out, len, outer, outer * len * 16, |_, rows, out| {
                softmax([rows.len(), len, 1], &x[rows.start * len..], out)
            });
        }
        &Op::Softmax { outer, len, inner } => softmax([outer, len, inner], x(0), out),
        &Op::LayerNorm { rows, cols, eps } => layer_norm([rows, cols], eps, x(0), x(1), opt(2), out),
        &Op::Pool { kind, planes, window } => pool(kind, planes, &window, x(0), out),
        &Op::Resize { planes, in_h, in_w, out_h, out_w, .. } => {
            let Extra::Resize { rows, cols, doubled } = &step.extra else {
                unreachable!("compiled resizes carry taps")
            };
            let x = x(0);
            // Separable: every input row resampled across (into the thread's panel), then each
            // output row blended from two of those; the same arithmetic as tap by tap. Planes
            // are split over the threads (two multiply-adds an output, in each pass).
            let cost = planes * (in_h + out_h) * out_w * 2;
            threads.split(out, out_h * out_w, planes, cost, |index, ps, out| {
                let mut panel = threads.panel(index);
                let across = &mut panel[..in_h * out_w];
                for (p, plane) in ps.zip(out.chunks_exact_mut(out_h * out_w)) {
                    let src = &x[p * in_h * in_w..][..in_h * in_w];
                    for (row, line) in src.chunks_exact(in_w).zip(across.chunks_exact_mut(out_w)) {
                        let tap = |&(x0, x1, fx): &(usize, usize, f32)| row[x0] * (1.0 - fx) + row[x1] * fx;
                        match *doubled {
                            // Columns 2i + 1 and 2i + 2 from inputs i and i + 1: no gathers.
                            Some([f, g]) => {
                                let pairs = line[1..out_w - 1].chunks_exact_mut(2);
                                for ((o, &a), &b) in pairs.zip(row).zip(&row[1..]) {
                                    o[0] = a * (1.0 - f) + b * f;
                                    o[1] = a * (1.0 - g) + b * g;
                                }
                                line[0] = tap(&cols[0]);
                                line[out_w - 1] = tap(&cols[out_w - 1]);
                            }
                            None => line.iter_mut().zip(cols).for_each(|(o, t)| *o = tap(t)),
                        }
                    }
                    for (line, &(y0, y1, fy)) in plane.chunks_exact_mut(out_w).zip(rows) {
                        let (top, bottom) = (&across[y0 * out_w..][..out_w], &across[y1 * out_w..][..out_w]);
                        zip(line, top, bottom, |t, b| t * (1.0 - fy) + b * fy);
                    }
                }
            });
        }
        Op::Transpose { in_shape, perm } => {
            let (mut shape, mut strides) = ([0usize; MAX_AXES], [0isize; MAX_AXES]);
            let mut stride = 1;
            let mut dense = [0usize; MAX_AXES];
            for a in (0..in_shape.len()).rev() {
                dense[a] = stride;
                stride *= in_shape[a];
            }
            for (i, &p) in perm.iter().enumerate() {
                shape[i] = in_shape[p];
                strides[i] = dense[p] as isize;
            }
            let rank = perm.len();
            gather_strided(&shape[..rank], &strides[..rank], 0, x(0), out)
        }
        Op::Concat { outer, widths } => {
            let total: usize = widths.iter().sum();
            let mut at = 0;
            for (i, &w) in widths.iter().enumerate() {
                let part = x(i);
                for o in 0..*outer {
                    out[o * total + at..][..w].copy_from_slice(&part[o * w..][..w]);
                }
                at += w;
            }
        }
        Op::Slice { shape, starts, steps, in_strides } => {
            let mut strides = [0isize; MAX_AXES];
            let mut base = 0isize;
            for a in 0..shape.len() {
                strides[a] = steps[a] * in_strides[a] as isize;
                base += (starts[a] * in_strides[a]) as isize;
            }
            gather_strided(shape, &strides[..shape.len()], base, x(0), out)
        }
        Op::Gather { outer, axis_len, inner, indices } => {
            let x = x(0);
            let mut at = 0;
            for o in 0..*outer {
                for &j in indices {
                    out[at..][..*inner].copy_from_slice(&x[(o * axis_len + j) * inner..][..*inner]);
                    at += inner;
                }
            }
        }
        Op::Pad { in_shape, before, after, value } => {
            let rank = in_shape.len();
            out.fill(*value);
            if rank == 0 {
                out.copy_from_slice(x(0));
            }
            if rank == 0 || in_shape.contains(&0) {
                return;
            }
            let mut out_strides = [0usize; MAX_AXES];
            let mut stride = 1;
            for a in (0..rank).rev() {
                out_strides[a] = stride;
                stride *= before[a] + in_shape[a] + after[a];
            }
            let x = x(0);
            let width = in_shape[rank - 1];
            rows(in_shape, |i, index| {
                let o: usize = (0..rank).map(|a| (index[a] + before[a]) * out_strides[a]).sum();
                out[o..][..width].copy_from_slice(&x[i..][..width]);
            });
        }
    }
}

/// out[idx] = f(a[idx · strides_a], b[idx · strides_b]) over `shape`, row by row, with the last
/// axis' common stride patterns (both dense, one broadcast) as plain loops.
fn binary(shape: &[usize], [sa, sb]: [&[usize]; 2], [a, b]: [&[f32]; 2], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    let last = shape.len() - 1;
    let (la, lb, width) = (sa[last], sb[last], shape[last]);
    rows(shape, |o, index| {
        let (ia, ib) = (offset(index, sa), offset(index, sb));
        let out = &mut out[o..][..width];
        match (la, lb) {
            (1, 1) => zip(out, &a[ia..][..width], &b[ib..][..width], &f),
            (1, 0) => {
                let y = b[ib];
                each(out, &a[ia..][..width], |x| f(x, y))
            }
            (0, 1) => {
                let x = a[ia];
                each(out, &b[ib..][..width], |y| f(x, y))
            }
            _ => {
                for (t, o) in out.iter_mut().enumerate() {
                    *o = f(a[ia + t * la], b[ib + t * lb]);
                }
            }
        }
    });
}

/// Matrix products with fewer columns than this run as dot products.
pub const SMALL_N: usize = 8;

/// Calls `f(flat offset of the row, index)` for every row (all axes but the last) of a dense
/// tensor of `shape`; the index' last axis is 0.
fn rows(shape: &[usize], mut f: impl FnMut(usize, &[usize; MAX_AXES])) {
    let rank = shape.len();
    if rank == 0 {
        f(0, &[0; MAX_AXES]);
        return;
    }
    if shape.contains(&0) {
        return;
    }
    let width = shape[rank - 1];
    let mut index = [0usize; MAX_AXES];
    let mut flat = 0;
    loop {
        f(flat, &index);
        flat += width;
        let mut a = rank - 1;
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            index[a] += 1;
            if index[a] < shape[a] {
                break;
            }
            index[a] = 0;
        }
    }
}

/// Σ index · strides over the axes `strides` has.
fn offset(index: &[usize; MAX_AXES], strides: &[usize]) -> usize {
    index.iter().zip(strides).map(|(i, s)| i * s).sum()
}

/// out[idx] = x[base + Σ idx · strides] over `shape` (strides may be negative).
fn gather_strided(shape: &[usize], strides: &[isize], base: isize, x: &[f32], out: &mut [f32]) {
    if shape.is_empty() {
        out[0] = x[base as usize];
        return;
    }
    let last = shape.len() - 1;
    let step = strides[last];
    rows(shape, |o, index| {
        let start = base + index.iter().zip(strides).map(|(&i, &s)| i as isize * s).sum::<isize>();
        let out = &mut out[o..][..shape[last]];
        if step == 1 {
            out.copy_from_slice(&x[start as usize..][..out.len()]);
        } else {
            for (t, v) in out.iter_mut().enumerate() {
                *v = x[(start + t as isize * step) as usize];
            }
        }
    });
}

fn zip(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

fn each(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

/// Σ x with sixteen partial sums.
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest of `x` (NaNs skipped, as `f32::max` skips them) with sixteen partial maxima.
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..16 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Σ a·b with sixteen partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// out (m×n) = a (m×k) · b (k×n), all dense; rows split over `threads`.
fn matmul(
    isa: Isa,
    [m, n, k]: [usize; 3],
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    threads: &Threads,
) {
    let cost = m * n * k;
    if n < SMALL_N {
        // Few columns: each one a dot product of a row of a with a column of b (copied out
        // contiguous when there are several).
        let columns: &[f32] = if n == 1 {
            &b[..k]
        } else {
            let t = &mut scratch[..n * k];
            for (j, row) in b.chunks_exact(n).take(k).enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    t[c * k + j] = v;
                }
            }
            t
        };
        threads.split(out, n, m, cost, |_, rows, out| {
            for (r, line) in rows.zip(out.chunks_exact_mut(n)) {
                let row = &a[r * k..][..k];
                for (c, o) in line.iter_mut().enumerate() {
                    *o = dot(row, &columns[c * k..][..k]);
                }
            }
        });
        return;
    }
    let mr = isa.mr();
    let packed_a = &mut scratch[..gemm::packed_len(m, k, mr)];
    gemm::pack_a(Matrix::dense(a, m, k), mr, packed_a);
    let packed_a = &*packed_a;
    threads.split(out, mr * n, m.div_ceil(mr), cost, |part, panels, out| {
        let rows = (panels.end * mr).min(m) - panels.start * mr;
        let a = &packed_a[panels.start * k * mr..panels.end * k * mr];
        let mut panel = threads.panel(part);
        let panel = &mut panel[..k * isa.nr()];
        for c0 in (0..n).step_by(isa.nr()) {
            gemm::pack_b_panel(Matrix::dense(b, k, n), c0, isa.nr(), panel);
            gemm::panel_product(isa, rows, n, k, a, Panel::Packed(panel), out, n, c0, Epilogue::NONE);
        }
    });
}

/// A convolution: through the tile kernel on packed weights (output channels split over
/// `threads`), or (narrow groups) a direct loop (groups split over `threads`).
#[allow(clippy::too_many_arguments)]
fn conv(
    isa: Isa,
    op: &Op,
    extra: &ConvExtra,
    [x, weights]: [&[f32]; 2],
    packed: Option<&[f32]>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
    threads: &Threads,
) {
    let &Op::Conv { n, c_in, c_out, window, dilation, groups } = op else { unreachable!("a convolution") };
    let Window { h, w, kernel: [kh, kw], out_h, out_w, .. } = window;
    let (ig, og, p) = (c_in / groups, c_out / groups, out_h * out_w);
    let k = ig * kh * kw;
    let cost = c_out * p * k;
    for b in 0..n {
        let epilogue = |g: usize, channels: std::ops::Range<usize>| {
            let at = (b * c_out + g * og) * p;
            Epilogue {
                bias: bias.map(|b| &b[g * og + channels.start..g * og + channels.end]),
                residual: residual.map(|r| &r[at + channels.start * p..at + channels.end * p]),
                activation: extra.activation,
            }
        };
        let out = &mut out[b * c_out * p..][..c_out * p];
        let Some(packed) = packed else {
            threads.split(out, og * p, groups, cost, |_, gs, out| {
                for (g, out) in gs.zip(out.chunks_exact_mut(og * p)) {
                    let x = &x[(b * c_in + g * ig) * h * w..][..ig * h * w];
                    let weights = &weights[g * og * k..][..og * k];
                    direct_conv(x, weights, &window, dilation, epilogue(g, 0..og), out);
                }
            });
            continue;
        };
        #[cfg(target_arch = "x86_64")]
        if extra.columns == Columns::Winograd {
            let x = &x[b * c_in * h * w..][..c_in * h * w];
            winograd::run(isa, &window, [c_in, c_out], x, packed, epilogue(0, 0..c_out), out, scratch, threads);
            continue;
        }
        for (g, out) in out.chunks_exact_mut(og * p).enumerate() {
            let x = &x[(b * c_in + g * ig) * h * w..][..ig * h * w];
            let (mr, nr) = (isa.mr(), isa.nr());
            let per_group = gemm::packed_len(og, k, mr);
            let a = &packed[g * per_group..][..per_group];
            // Output channels in whole panels of mr: part `panels` computes channels
            // panels.start · mr up to the group's end or panels.end · mr.
            let part = |panels: &std::ops::Range<usize>| {
                let channels = panels.start * mr..(panels.end * mr).min(og);
                (&a[panels.start * k * mr..panels.end * k * mr], epilogue(g, channels.clone()), channels.len())
            };
            match &extra.columns {
                &Columns::Padded { ref offsets, stride, ph, pw, len, grid } => {
                    let (padded, rest) = scratch.split_at_mut(len);
                    // The input planes rearranged once, split over the threads as the product is.
                    let plane = stride[0] * stride[1] * ph * pw;
                    threads.split(padded, plane, ig, cost, |_, cs, dst| {
                        phase_planes(&x[cs.start * h * w..], cs.len(), &window, [ph, pw], dst);
                    });
                    let padded = &*padded;
                    if grid == 0 {
                        // Whole panels per output row: stored in place, the epilogue fused.
                        threads.split(out, mr * p, og.div_ceil(mr), cost, |_, panels, out| {
                            let (a, epilogue, rows) = part(&panels);
                            for oy in 0..out_h {
                                for ox in (0..out_w).step_by(nr) {
                                    let b = Panel::Rows { data: padded, offsets, start: oy * pw + ox };
                                    gemm::panel_product(isa, rows, p, k, a, b, out, p, oy * out_w + ox, epilogue);
                                }
                            }
                        });
                        continue;
                    }
                    // Over the out_h × pw grid, then each output row copied out with the epilogue.
                    let grid_out = &mut rest[..og * grid];
                    threads.split(grid_out, mr * grid, og.div_ceil(mr), cost, |_, panels, grid_out| {
                        let (a, _, rows) = part(&panels);
                        for q in (0..grid).step_by(nr) {
                            let b = Panel::Rows { data: padded, offsets, start: q };
                            gemm::panel_product(isa, rows, grid, k, a, b, grid_out, grid, q, Epilogue::NONE);
                        }
                    });
                    let grid_out = &*grid_out;
                    threads.split(out, p, og, cost, |_, channels, out| {
                        for (c, out) in channels.zip(out.chunks_exact_mut(p)) {
                            let Epilogue { bias, residual, activation } = epilogue(g, c..c + 1);
                            let bias = bias.map_or(0.0, |b| b[0]);
                            let rows = grid_out[c * grid..].chunks(pw).zip(out.chunks_exact_mut(out_w));
                            for (oy, (row, out)) in rows.enumerate() {
                                let row = row[..out_w].iter().map(|v| v + bias);
                                match residual {
                                    Some(r) => out
                                        .iter_mut()
                                        .zip(row.zip(&r[oy * out_w..]))
                                        .for_each(|(o, (v, r))| *o = activation.apply(v + r)),
                                    None => out.iter_mut().zip(row).for_each(|(o, v)| *o = activation.apply(v)),
                                }
                            }
                        }
                    });
                }
                Columns::Im2col if threads.splits(cost) => {
                    // Split: every thread needs every B panel, so they are built once, in
                    // parallel, into scratch (`im2col_len` floats), then shared.
                    let columns = p.div_ceil(nr);
                    let built = &mut scratch[..columns * k * nr];
                    threads.split(built, k * nr, columns, cost, |_, js, built| {
                        for (j, panel) in js.zip(built.chunks_exact_mut(k * nr)) {
                            im2col_panel(x, ig, &window, dilation, j * nr, nr, panel);
                        }
                    });
                    let built = &*built;
                    threads.split(out, mr * p, og.div_ceil(mr), cost, |_, panels, out| {
                        let (a, epilogue, rows) = part(&panels);
                        for (j, panel) in built.chunks_exact(k * nr).enumerate() {
                            gemm::panel_product(isa, rows, p, k, a, Panel::Packed(panel), out, p, j * nr, epilogue);
                        }
                    });
                }
                columns => threads.split(out, mr * p, og.div_ceil(mr), cost, |index, panels, out| {
                    let (a, epilogue, rows) = part(&panels);
                    let mut panel = threads.panel(index);
                    let panel = &mut panel[..k * nr];
                    for c0 in (0..p).step_by(nr) {
                        let b = match columns {
                            Columns::Pointwise { offsets } if c0 + nr <= p => {
                                Panel::Rows { data: x, offsets, start: c0 }
                            }
                            Columns::Pointwise { .. } => {
                                gemm::pack_b_panel(Matrix::dense(x, k, p), c0, nr, panel);
                                Panel::Packed(panel)
                            }
                            _ => {
                                im2col_panel(x, ig, &window, dilation, c0, nr, panel);
                                Panel::Packed(panel)
                            }
                        };
                        gemm::panel_product(isa, rows, p, k, a, b, out, p, c0, epilogue);
                    }
                }),
            }
        }
    }
}

/// Copies the `channels` h × w planes of `x` into `dst`, each as the window's stride s_h × s_w
/// phase planes of `ph` × `pw` ([`Columns::Padded`]): phase (a, b) holds the padded plane's rows
/// ≡ a and columns ≡ b (mod s), zeros where they fall in the padding.
pub(super) fn phase_planes(x: &[f32], channels: usize, window: &Window, [ph, pw]: [usize; 2], dst: &mut [f32]) {
    let Window { h, w, stride: [sh, sw], pad, .. } = *window;
    let phases = dst.chunks_exact_mut(ph * pw);
    for (i, out) in phases.take(channels * sh * sw).enumerate() {
        let (plane, a, b) = (&x[i / (sh * sw) * h * w..][..h * w], i % (sh * sw) / sw, i % sw);
        let x0 = b as isize - pad[1] as isize;
        for (r, line) in out.chunks_exact_mut(pw).enumerate() {
            let y = (r * sh + a) as isize - pad[0] as isize;
            let taps = if (0..h as isize).contains(&y) { valid_taps(x0, sw, w, pw) } else { None };
            let Some((first, end)) = taps else {
                line.fill(0.0);
                continue;
            };
            let row = &plane[y as usize * w..][..w];
            let start = (x0 + (first * sw) as isize) as usize;
            line[..first].fill(0.0);
            line[end..].fill(0.0);
            if sw == 1 {
                line[first..end].copy_from_slice(&row[start..start + end - first]);
            } else {
                line[first..end].iter_mut().zip(row[start..].iter().step_by(sw)).for_each(|(v, &x)| *v = x);
            }
        }
    }
}

/// Columns `c0..c0 + nr` of the im2col matrix of `x` (`channels` planes), packed as one B panel:
/// row (c, ky, kx), column p = the input under tap (ky, kx) of output position p (0 in the
/// padding and past the last position).
fn im2col_panel(
    x: &[f32],
    channels: usize,
    window: &Window,
    dilation: [usize; 2],
    c0: usize,
    nr: usize,
    dst: &mut [f32],
) {
    let Window { h, w, kernel: [kh, kw], stride: [sh, sw], pad, out_h, out_w } = *window;
    let positions = out_h * out_w;
    let mut rows = dst.chunks_exact_mut(nr);
    for c in 0..channels {
        let plane = &x[c * h * w..][..h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = rows.next().expect("the panel has k rows");
                let mut j = 0;
                while j < nr {
                    let p = c0 + j;
                    if p >= positions {
                        row[j..].fill(0.0);
                        break;
                    }
                    let (oy, ox) = (p / out_w, p % out_w);
                    let run = (out_w - ox).min(nr - j);
                    let seg = &mut row[j..j + run];
                    let iy = (oy * sh + ky * dilation[0]) as isize - pad[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        seg.fill(0.0);
                    } else {
                        let line = &plane[iy as usize * w..][..w];
                        let x0 = (ox * sw + kx * dilation[1]) as isize - pad[1] as isize;
                        match valid_taps(x0, sw, w, run) {
                            None => seg.fill(0.0),
                            Some((first, end)) => {
                                seg[..first].fill(0.0);
                                seg[end..].fill(0.0);
                                let start = (x0 + (first * sw) as isize) as usize;
                                if sw == 1 {
                                    seg[first..end].copy_from_slice(&line[start..start + end - first]);
                                } else {
                                    for (v, &x) in seg[first..end].iter_mut().zip(line[start..].iter().step_by(sw)) {
                                        *v = x;
                                    }
                                }
                            }
                        }
                    }
                    j += run;
                }
            }
        }
    }
}

/// A convolution of one group as row-wise multiply-adds (groups too narrow for the tile
/// kernel, such as depthwise ones, or a 1×1 head with one output channel): for every output
/// channel, input channel and tap, each output row gains the tap's weight times the input row
/// under it.
fn direct_conv(x: &[f32], weights: &[f32], window: &Window, dilation: [usize; 2], epilogue: Epilogue, out: &mut [f32]) {
    let Window { h, w, kernel: [kh, kw], stride: [sh, sw], pad, out_h, out_w } = *window;
    let channels = x.len() / (h * w);
    for (co, plane_out) in out.chunks_exact_mut(out_h * out_w).enumerate() {
        plane_out.fill(0.0);
        for ci in 0..channels {
            let plane = &x[ci * h * w..][..h * w];
            let taps = &weights[(co * channels + ci) * kh * kw..][..kh * kw];
            for ky in 0..kh {
                for kx in 0..kw {
                    let weight = taps[ky * kw + kx];
                    let x0 = (kx * dilation[1]) as isize - pad[1] as isize;
                    let Some((first, end)) = valid_taps(x0, sw, w, out_w) else { continue };
                    for (oy, row_out) in plane_out.chunks_exact_mut(out_w).enumerate() {
                        let iy = (oy * sh + ky * dilation[0]) as isize - pad[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let line = &plane[iy as usize * w..][..w];
                        let start = (x0 + (first * sw) as isize) as usize;
                        let row = &mut row_out[first..end];
                        if sw == 1 {
                            for (o, &v) in row.iter_mut().zip(&line[start..]) {
                                *o += weight * v;
                            }
                        } else {
                            for (o, &v) in row.iter_mut().zip(line[start..].iter().step_by(sw)) {
                                *o += weight * v;
                            }
                        }
                    }
                }
            }
        }
        let bias = epilogue.bias.map_or(0.0, |b| b[co]);
        match epilogue.residual {
            Some(r) => {
                let r = &r[co * out_h * out_w..][..out_h * out_w];
                for (o, &s) in plane_out.iter_mut().zip(r) {
                    *o = epilogue.activation.apply(*o + bias + s);
                }
            }
            None => plane_out.iter_mut().for_each(|o| *o = epilogue.activation.apply(*o + bias)),
        }
    }
}

/// For output columns t in 0..len reading input column x0 + t·stride of a w-wide row: the range
/// first..end of those inside the row, or `None` when none is.
fn valid_taps(x0: isize, stride: usize, w: usize, len: usize) -> Option<(usize, usize)> {
    let first = if x0 < 0 { (-x0 as usize).div_ceil(stride).min(len) } else { 0 };
    let end = if x0 >= w as isize { 0 } else { (w as isize - x0) as usize }.div_ceil(stride).clamp(first, len);
    (first < end).then_some((first, end))
}

fn reduce(kind: ReduceKind, [outer, len, inner]: [usize; 3], x: &[f32], out: &mut [f32]) {
    if inner == 1 {
        for (row, o) in x.chunks_exact(len.max(1)).zip(out.iter_mut()).take(outer) {
            *o = match kind {
                ReduceKind::Sum => sum(row),
                ReduceKind::Mean => sum(row) / len as f32,
                ReduceKind::Max => max_of(row),
                ReduceKind::L2 => dot(row, row).sqrt(),
            };
        }
        if len == 0 {
            out.fill(if kind == ReduceKind::Max { f32::NEG_INFINITY } else { 0.0 });
        }
        return;
    }
    for o in 0..outer {
        let dst = &mut out[o * inner..][..inner];
        let first = match kind {
            ReduceKind::Max => f32::NEG_INFINITY,
            _ => 0.0,
        };
        dst.fill(first);
        for j in 0..len {
            let src = &x[(o * len + j) * inner..][..inner];
            match kind {
                ReduceKind::Sum | ReduceKind::Mean => zip_in_place(dst, src, |d, s| d + s),
                ReduceKind::Max => zip_in_place(dst, src, f32::max),
                ReduceKind::L2 => zip_in_place(dst, src, |d, s| d + s * s),
            }
        }
        match kind {
            ReduceKind::Mean => dst.iter_mut().for_each(|d| *d /= len as f32),
            ReduceKind::L2 => dst.iter_mut().for_each(|d| *d = d.sqrt()),
            ReduceKind::Sum | ReduceKind::Max => {}
        }
    }
}

fn zip_in_place(dst: &mut [f32], src: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(*d, s);
    }
}

fn softmax([outer, len, inner]: [usize; 3], x: &[f32], out: &mut [f32]) {
    if inner == 1 {
        for (row, dst) in x.chunks_exact(len).zip(out.chunks_exact_mut(len)).take(outer) {
            let max = max_of(row);
            each(dst, row, |v| exp(v - max));
            let inv = 1.0 / sum(dst);
            dst.iter_mut().for_each(|d| *d *= inv);
        }
        return;
    }
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let max = (0..len).map(|j| x[at(j)]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for j in 0..len {
                let e = (x[at(j)] - max).exp();
                out[at(j)] = e;
                sum += e;
            }
            for j in 0..len {
                out[at(j)] /= sum;
            }
        }
    }
}

/// tanh(x) as a rational function (the minimax one Eigen and XLA use for f32), within 2e-7 of
/// libm's on the whole line, without branches so that loops of it vectorise.
pub fn tanh(x: f32) -> f32 {
    const ALPHA: [f32; 7] =
        [-2.760_768_5e-16, 2.000_188e-13, -8.604_672e-11, 5.122_297e-8, 1.485_722_4e-5, 6.372_619_3e-4, 4.893_524_6e-3];
    const BETA: [f32; 4] = [1.198_258_4e-6, 1.185_347e-4, 2.268_434_6e-3, 4.893_525e-3];
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let p = ALPHA.iter().fold(0.0, |acc, &a| acc * x2 + a) * x;
    let q = BETA.iter().fold(0.0, |acc, &b| acc * x2 + b);
    p / q
}

/// e^x by range reduction to [-ln 2 / 2, ln 2 / 2] and a degree-6 polynomial (Cephes' expf),
/// within a few ulp of libm's on [-87.3, 88.3]; no branches, so that loops of it vectorise. x is
/// clamped to that range (below it the result is about 1e-38, above it about 2e38): meant for
/// softmax, where x ≤ 0.
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2²³: adding it rounds to an integer, which lands in the low bits of the sum.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.3);
    let k = x * LOG2E + MAGIC;
    // n = round(x · log2 e), as a float and as an integer (no float-to-int conversion, so that
    // loops of it vectorise).
    let (n, bits) = (k - MAGIC, k.to_bits().wrapping_sub(MAGIC.to_bits()) as i32);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5]
        .iter()
        .fold(0.0, |acc, &c| acc * r + c);
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((bits + 127).max(0) as u32) << 23)
}

fn layer_norm([rows, cols]: [usize; 2], eps: f32, x: &[f32], scale: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    for (row, dst) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).take(rows) {
        let mean = row.iter().sum::<f32>() / cols as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (c, (d, &v)) in dst.iter_mut().zip(row).enumerate() {
            *d = (v - mean) * inv * scale[c] + bias.map_or(0.0, |b| b[c]);
        }
    }
}

fn pool(kind: PoolKind, planes: usize, window: &Window, x: &[f32], out: &mut [f32]) {
    let Window { h, w, kernel: [kh, kw], stride: [sh, sw], pad, out_h, out_w } = *window;
    for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(out_h * out_w)).take(planes) {
        // Tap by tap, each output row takes the input row under it (as the direct convolution).
        dst.fill(match kind {
            PoolKind::Max => f32::NEG_INFINITY,
            PoolKind::Average { .. } => 0.0,
        });
        for ky in 0..kh {
            for kx in 0..kw {
                let x0 = kx as isize - pad[1] as isize;
                let Some((first, end)) = valid_taps(x0, sw, w, out_w) else { continue };
                for (oy, row_out) in dst.chunks_exact_mut(out_w).enumerate() {
                    let iy = (oy * sh + ky) as isize - pad[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let line = &plane[iy as usize * w..][..w];
                    let start = (x0 + (first * sw) as isize) as usize;
                    let taps = line[start..].iter().step_by(sw);
                    match kind {
                        PoolKind::Max => row_out[first..end].iter_mut().zip(taps).for_each(|(o, &v)| *o = o.max(v)),
                        PoolKind::Average { .. } => {
                            row_out[first..end].iter_mut().zip(taps).for_each(|(o, &v)| *o += v)
                        }
                    }
                }
            }
        }
        if let PoolKind::Average { count_include_pad } = kind {
            // The divisor: the whole window, or the taps inside the image (rows × columns).
            let inside = |o: usize, s: usize, k: usize, p: usize, n: usize| {
                let start = (o * s) as isize - p as isize;
                let (lo, hi) = (start.max(0), (start + k as isize).min(n as isize));
                (hi - lo).max(0) as usize
            };
            for (oy, row_out) in dst.chunks_exact_mut(out_w).enumerate() {
                let rows = inside(oy, sh, kh, pad[0], h);
                for (ox, o) in row_out.iter_mut().enumerate() {
                    let count = if count_include_pad { kh * kw } else { rows * inside(ox, sw, kw, pad[1], w) };
                    *o /= count as f32;
                }
            }
        }
    }
}
