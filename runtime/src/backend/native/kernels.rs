//! Running a [`Program`]: one kernel per [`Op`], reading and writing the session's arena and the
//! program's constants. Nothing here allocates; every size was checked when the program was
//! compiled (`check.rs`), and slices keep every access bounds-checked.

use super::gemm::{self, Epilogue, Isa, Matrix};
use super::program::{ConvExtra, Extra, Place, Program, Slot, Step, MAX_AXES};
use crate::backend::plan::{Op, PoolKind, ReduceKind, Window};

/// Runs every step of `program` in `arena` (at least `program.arena_end` floats, its inputs
/// written) with `scratch` (at least `program.scratch` floats); adds each step's time to
/// `profile` (one entry per step) when given.
pub fn run(program: &Program, arena: &mut [f32], scratch: &mut [f32], mut profile: Option<&mut [std::time::Duration]>) {
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
        execute(program.isa, step, &read, out, scratch);
        if let (Some(times), Some(started)) = (profile.as_deref_mut(), started) {
            times[i] += started.elapsed();
        }
    }
}

/// One step.
fn execute<'m>(isa: Isa, step: &Step, read: &dyn Fn(&Slot) -> &'m [f32], out: &mut [f32], scratch: &mut [f32]) {
    let x = |i: usize| read(&step.inputs[i]);
    let opt = |i: usize| step.inputs.get(i).map(read);
    match &step.op {
        Op::Conv { .. } => {
            let Extra::Conv(extra) = &step.extra else { unreachable!("compiled convolutions carry ConvExtra") };
            let packed = extra.packed.as_ref().map(read);
            let residual = extra.residual.as_ref().map(read);
            conv(isa, &step.op, extra, [x(0), x(1)], packed, opt(2), residual, out, scratch)
        }
        &Op::MatMul { batch, m, n, k, a_batch_stride, b_batch_stride } => {
            let (a, b) = (x(0), x(1));
            for i in 0..batch {
                let (a, b) = (&a[i * a_batch_stride..][..m * k], &b[i * b_batch_stride..][..k * n]);
                matmul(isa, [m, n, k], a, b, &mut out[i * m * n..][..m * n], scratch);
            }
        }
        Op::Binary { kind, shape, a_strides, b_strides } => {
            let (a, b, kind) = (x(0), x(1), *kind);
            rows(shape, |o, index| {
                let (ia, ib) = (offset(index, a_strides), offset(index, b_strides));
                let (sa, sb) = (a_strides[shape.len() - 1], b_strides[shape.len() - 1]);
                let out = &mut out[o..][..shape[shape.len() - 1]];
                match (sa, sb) {
                    (1, 1) => zip(out, &a[ia..][..out.len()], &b[ib..][..out.len()], |x, y| kind.apply(x, y)),
                    (1, 0) => each(out, &a[ia..][..out.len()], |x| kind.apply(x, b[ib])),
                    (0, 1) => each(out, &b[ib..][..out.len()], |y| kind.apply(a[ia], y)),
                    _ => {
                        for (t, o) in out.iter_mut().enumerate() {
                            *o = kind.apply(a[ia + t * sa], b[ib + t * sb]);
                        }
                    }
                }
            });
        }
        &Op::Unary { kind, .. } => each(out, x(0), |v| kind.apply(v)),
        Op::Broadcast { shape, strides } => {
            let mut signed = [0isize; MAX_AXES];
            for (s, &v) in signed.iter_mut().zip(strides) {
                *s = v as isize;
            }
            gather_strided(shape, &signed[..shape.len()], 0, x(0), out)
        }
        &Op::Reduce { kind, outer, len, inner } => reduce(kind, [outer, len, inner], x(0), out),
        &Op::Softmax { outer, len, inner } => softmax([outer, len, inner], x(0), out),
        &Op::LayerNorm { rows, cols, eps } => layer_norm([rows, cols], eps, x(0), x(1), opt(2), out),
        &Op::Pool { kind, planes, window } => pool(kind, planes, &window, x(0), out),
        &Op::Resize { planes, in_h, in_w, out_h, out_w, .. } => {
            let Extra::Resize { rows, cols } = &step.extra else { unreachable!("compiled resizes carry taps") };
            let x = x(0);
            for (p, plane) in out.chunks_exact_mut(out_h * out_w).take(planes).enumerate() {
                let src = &x[p * in_h * in_w..][..in_h * in_w];
                for (line, &(y0, y1, fy)) in plane.chunks_exact_mut(out_w).zip(rows) {
                    let (r0, r1) = (&src[y0 * in_w..][..in_w], &src[y1 * in_w..][..in_w]);
                    for (o, &(x0, x1, fx)) in line.iter_mut().zip(cols) {
                        let top = r0[x0] * (1.0 - fx) + r0[x1] * fx;
                        let bottom = r1[x0] * (1.0 - fx) + r1[x1] * fx;
                        *o = top * (1.0 - fy) + bottom * fy;
                    }
                }
            }
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

/// out (m×n) = a (m×k) · b (k×n), all dense.
fn matmul(isa: Isa, [m, n, k]: [usize; 3], a: &[f32], b: &[f32], out: &mut [f32], scratch: &mut [f32]) {
    if n == 1 {
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot(&a[r * k..][..k], &b[..k]);
        }
        return;
    }
    let (packed_a, panel) = scratch.split_at_mut(gemm::packed_len(m, k, isa.mr()));
    gemm::pack_a(Matrix::dense(a, m, k), isa.mr(), packed_a);
    for c0 in (0..n).step_by(isa.nr()) {
        gemm::pack_b_panel(Matrix::dense(b, k, n), c0, isa.nr(), panel);
        gemm::panel_product(isa, m, n, k, packed_a, panel, out, n, c0, Epilogue::NONE);
    }
}

/// A convolution: through the tile kernel on packed weights, or (narrow groups) a direct loop.
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
) {
    let &Op::Conv { n, c_in, c_out, window, dilation, groups } = op else { unreachable!("a convolution") };
    let Window { h, w, kernel: [kh, kw], out_h, out_w, .. } = window;
    let (ig, og, p) = (c_in / groups, c_out / groups, out_h * out_w);
    let k = ig * kh * kw;
    for b in 0..n {
        for g in 0..groups {
            let x = &x[(b * c_in + g * ig) * h * w..][..ig * h * w];
            let at = (b * c_out + g * og) * p;
            let out = &mut out[at..][..og * p];
            let epilogue = Epilogue {
                bias: bias.map(|b| &b[g * og..][..og]),
                residual: residual.map(|r| &r[at..][..og * p]),
                activation: extra.activation,
            };
            match packed {
                Some(packed) => {
                    let per_group = gemm::packed_len(og, k, isa.mr());
                    let a = &packed[g * per_group..][..per_group];
                    let panel = &mut scratch[..k * isa.nr()];
                    let pointwise = kh == 1 && kw == 1 && window.stride == [1, 1] && window.pad == [0; 4];
                    for c0 in (0..p).step_by(isa.nr()) {
                        if pointwise {
                            gemm::pack_b_panel(Matrix::dense(x, k, p), c0, isa.nr(), panel);
                        } else {
                            im2col_panel(x, ig, &window, dilation, c0, isa.nr(), panel);
                        }
                        gemm::panel_product(isa, og, p, k, a, panel, out, p, c0, epilogue);
                    }
                }
                None => {
                    let weights = &weights[g * og * k..][..og * k];
                    direct_conv(x, weights, &window, dilation, epilogue, out);
                }
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
    let Window { h, w, kernel: [kh, kw], stride, pad, out_h, out_w } = *window;
    for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(out_h * out_w)).take(planes) {
        for oy in 0..out_h {
            for ox in 0..out_w {
                let (mut sum, mut max, mut count) = (0.0, f32::NEG_INFINITY, 0usize);
                for ky in 0..kh {
                    let y = (oy * stride[0] + ky) as isize - pad[0] as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let xx = (ox * stride[1] + kx) as isize - pad[1] as isize;
                        if xx >= 0 && xx < w as isize {
                            let v = plane[y as usize * w + xx as usize];
                            sum += v;
                            max = max.max(v);
                            count += 1;
                        }
                    }
                }
                dst[oy * out_w + ox] = match kind {
                    PoolKind::Max => max,
                    PoolKind::Average { count_include_pad } => {
                        sum / if count_include_pad { kh * kw } else { count } as f32
                    }
                };
            }
        }
    }
}
