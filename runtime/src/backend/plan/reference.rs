//! A plain-Rust executor of a [`Plan`] on the CPU, one straightforward function per [`Op`]
//! written from the semantics `mod.rs` documents: the executable specification the GPU kernels
//! must match (tests only). [`tract`] runs the same ONNX graph with tract, to compare.

#[cfg(all(test, feature = "tract"))]
mod tests;

#[cfg(feature = "tract")]
use std::sync::Arc;

#[cfg(feature = "tract")]
use tract_onnx::prelude::*;

use super::lower::unravel;
use super::{resize_taps, row_major_strides, Op, Plan, PoolKind, ReduceKind, UnaryKind, ValueId, ValueKind, Window};

/// Runs `plan` on `inputs` (one slice per plan input, in order) and returns its outputs, in order.
pub fn run(plan: &Plan, inputs: &[&[f32]]) -> Vec<Vec<f32>> {
    assert_eq!(inputs.len(), plan.inputs.len(), "one slice per plan input");
    let mut buffers: Vec<Option<Vec<f32>>> = plan
        .values
        .iter()
        .map(|value| match &value.kind {
            ValueKind::Weight(data) => Some(data.to_f32()),
            _ => None,
        })
        .collect();
    for ((name, id), data) in plan.inputs.iter().zip(inputs) {
        assert_eq!(data.len(), plan.values[*id].len(), "input `{name}`");
        buffers[*id] = Some(data.to_vec());
    }
    for step in &plan.steps {
        let out = {
            let args: Vec<&[f32]> = step.inputs.iter().map(|&v| read(plan, &buffers, v)).collect();
            execute(&step.op, &args)
        };
        assert_eq!(out.len(), plan.values[step.output].len(), "step `{}` ({:?})", step.node, step.op);
        buffers[step.output] = Some(out);
    }
    plan.outputs.iter().map(|&(_, v)| read(plan, &buffers, v).to_vec()).collect()
}

/// The contents of value `v`, through its alias.
fn read<'b>(plan: &Plan, buffers: &'b [Option<Vec<f32>>], v: ValueId) -> &'b [f32] {
    let root = match plan.values[v].kind {
        ValueKind::Alias(target) => target,
        _ => v,
    };
    buffers[root].as_deref().unwrap_or_else(|| panic!("value {v} is read before it is written"))
}

/// One step. The match has no wildcard: a new [`Op`] variant does not compile until it runs here.
fn execute(op: &Op, x: &[&[f32]]) -> Vec<f32> {
    match op {
        Op::Conv { .. } => conv(op, x[0], x[1], x.get(2).copied()),
        Op::MatMul { .. } => matmul(op, x[0], x[1]),
        Op::Binary { kind, shape, a_strides, b_strides } => {
            let (a, b) = (strided(shape, a_strides, x[0]), strided(shape, b_strides, x[1]));
            a.zip(b).map(|(a, b)| kind.apply(a, b)).collect()
        }
        Op::Unary { kind, len } => unary(*kind, *len, x[0]),
        Op::Broadcast { shape, strides } => strided(shape, strides, x[0]).collect(),
        Op::Reduce { kind, outer, len, inner } => reduce(*kind, [*outer, *len, *inner], x[0]),
        Op::Softmax { outer, len, inner } => softmax([*outer, *len, *inner], x[0]),
        Op::LayerNorm { rows, cols, eps } => layer_norm([*rows, *cols], *eps, x[0], x[1], x.get(2).copied()),
        Op::Pool { .. } => pool(op, x[0]),
        Op::Resize { .. } => resize(op, x[0]),
        Op::Transpose { in_shape, perm } => transpose(in_shape, perm, x[0]),
        Op::Concat { outer, widths } => concat(*outer, widths, x),
        Op::Slice { shape, starts, steps, in_strides } => slice(shape, starts, steps, in_strides, x[0]),
        Op::Gather { outer, axis_len, inner, indices } => gather([*outer, *axis_len, *inner], indices, x[0]),
        Op::Pad { in_shape, before, after, value } => pad(in_shape, before, after, *value, x[0]),
    }
}

/// x[idx · strides] for every index of `shape`, in order.
fn strided<'x>(shape: &'x [usize], strides: &'x [usize], x: &'x [f32]) -> impl Iterator<Item = f32> + 'x {
    let len: usize = shape.iter().product();
    (0..len).map(move |i| x[unravel(i, shape).iter().zip(strides).map(|(i, s)| i * s).sum::<usize>()])
}

/// Index of (y, x) in an h×w plane when it lies inside it.
fn inside(y: isize, x: isize, h: usize, w: usize) -> Option<usize> {
    let (y, x) = (usize::try_from(y).ok()?, usize::try_from(x).ok()?);
    (y < h && x < w).then_some(y * w + x)
}

fn conv(op: &Op, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let &Op::Conv { n, c_in, c_out, window, dilation, groups } = op else { unreachable!("{op:?}") };
    let Window { h, w, kernel: [kh, kw], stride, pad, out_h, out_w } = window;
    let (in_group, out_group) = (c_in / groups, c_out / groups);
    let mut out = Vec::with_capacity(n * c_out * out_h * out_w);
    for b in 0..n {
        for co in 0..c_out {
            let first_channel = co / out_group * in_group;
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut acc = bias.map_or(0.0, |bias| bias[co]);
                    for ci in 0..in_group {
                        let plane = &x[(b * c_in + first_channel + ci) * h * w..][..h * w];
                        let taps = &weight[(co * in_group + ci) * kh * kw..][..kh * kw];
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (oy * stride[0] + ky * dilation[0]) as isize - pad[0] as isize;
                                let x = (ox * stride[1] + kx * dilation[1]) as isize - pad[1] as isize;
                                if let Some(at) = inside(y, x, h, w) {
                                    acc += plane[at] * taps[ky * kw + kx];
                                }
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    out
}

fn matmul(op: &Op, a: &[f32], b: &[f32]) -> Vec<f32> {
    let &Op::MatMul { batch, m, n, k, a_batch_stride, b_batch_stride } = op else { unreachable!("{op:?}") };
    let mut out = Vec::with_capacity(batch * m * n);
    for i in 0..batch {
        let (a, b) = (&a[i * a_batch_stride..], &b[i * b_batch_stride..]);
        for r in 0..m {
            for c in 0..n {
                out.push((0..k).map(|j| a[r * k + j] * b[j * n + c]).sum());
            }
        }
    }
    out
}

fn unary(kind: UnaryKind, len: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), len);
    x.iter().map(|&v| kind.apply(v)).collect()
}

/// x viewed as [outer, len, inner], reduced over the middle axis.
fn reduce(kind: ReduceKind, [outer, len, inner]: [usize; 3], x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let items = (0..len).map(|j| x[(o * len + j) * inner + i]);
            out.push(match kind {
                ReduceKind::Sum => items.sum(),
                ReduceKind::Mean => items.sum::<f32>() / len as f32,
                ReduceKind::Max => items.fold(f32::NEG_INFINITY, f32::max),
                ReduceKind::L2 => items.map(|v| v * v).sum::<f32>().sqrt(),
            });
        }
    }
    out
}

/// x viewed as [outer, len, inner], normalised over the middle axis.
fn softmax([outer, len, inner]: [usize; 3], x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let max = (0..len).map(|j| x[at(j)]).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..len).map(|j| (x[at(j)] - max).exp()).sum();
            for j in 0..len {
                out[at(j)] = (x[at(j)] - max).exp() / sum;
            }
        }
    }
    out
}

fn layer_norm([rows, cols]: [usize; 2], eps: f32, x: &[f32], scale: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for row in x.chunks_exact(cols).take(rows) {
        let mean = row.iter().sum::<f32>() / cols as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        out.extend(row.iter().enumerate().map(|(c, v)| (v - mean) * inv * scale[c] + bias.map_or(0.0, |b| b[c])));
    }
    out
}

fn pool(op: &Op, x: &[f32]) -> Vec<f32> {
    let &Op::Pool { kind, planes, window } = op else { unreachable!("{op:?}") };
    let Window { h, w, kernel: [kh, kw], stride, pad, out_h, out_w } = window;
    let mut out = Vec::with_capacity(planes * out_h * out_w);
    for plane in x.chunks_exact(h * w).take(planes) {
        for oy in 0..out_h {
            for ox in 0..out_w {
                let window = (0..kh * kw).filter_map(|t| {
                    let y = (oy * stride[0] + t / kw) as isize - pad[0] as isize;
                    let x = (ox * stride[1] + t % kw) as isize - pad[1] as isize;
                    inside(y, x, h, w).map(|at| plane[at])
                });
                out.push(match kind {
                    PoolKind::Max => window.fold(f32::NEG_INFINITY, f32::max),
                    PoolKind::Average { count_include_pad } => {
                        let (sum, count) = window.fold((0.0, 0), |(s, c), v| (s + v, c + 1));
                        sum / if count_include_pad { kh * kw } else { count } as f32
                    }
                });
            }
        }
    }
    out
}

fn resize(op: &Op, x: &[f32]) -> Vec<f32> {
    let &Op::Resize { mode, coordinates, planes, in_h, in_w, out_h, out_w } = op else { unreachable!("{op:?}") };
    let (rows, cols) = (resize_taps(mode, coordinates, in_h, out_h), resize_taps(mode, coordinates, in_w, out_w));
    let mut out = Vec::with_capacity(planes * out_h * out_w);
    for plane in x.chunks_exact(in_h * in_w).take(planes) {
        for &(y0, y1, fy) in &rows {
            for &(x0, x1, fx) in &cols {
                let row = |y: usize| plane[y * in_w + x0] * (1.0 - fx) + plane[y * in_w + x1] * fx;
                out.push(row(y0) * (1.0 - fy) + row(y1) * fy);
            }
        }
    }
    out
}

fn transpose(in_shape: &[usize], perm: &[usize], x: &[f32]) -> Vec<f32> {
    let strides = row_major_strides(in_shape);
    let shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    strided(&shape, &strides, x).collect()
}

fn concat(outer: usize, widths: &[usize], parts: &[&[f32]]) -> Vec<f32> {
    let mut out = Vec::new();
    for o in 0..outer {
        for (part, &width) in parts.iter().zip(widths) {
            out.extend_from_slice(&part[o * width..(o + 1) * width]);
        }
    }
    out
}

fn slice(shape: &[usize], starts: &[usize], steps: &[isize], in_strides: &[usize], x: &[f32]) -> Vec<f32> {
    let len: usize = shape.iter().product();
    let source = |index: Vec<usize>| -> usize {
        let at = (0..shape.len()).map(|a| (starts[a] as isize + index[a] as isize * steps[a]) * in_strides[a] as isize);
        at.sum::<isize>() as usize
    };
    (0..len).map(|i| x[source(unravel(i, shape))]).collect()
}

fn gather([outer, axis_len, inner]: [usize; 3], indices: &[usize], x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(outer * indices.len() * inner);
    for o in 0..outer {
        for &j in indices {
            out.extend_from_slice(&x[(o * axis_len + j) * inner..][..inner]);
        }
    }
    out
}

fn pad(in_shape: &[usize], before: &[usize], after: &[usize], value: f32, x: &[f32]) -> Vec<f32> {
    let shape: Vec<usize> = (0..in_shape.len()).map(|a| before[a] + in_shape[a] + after[a]).collect();
    let strides = row_major_strides(in_shape);
    let source = |index: Vec<usize>| -> Option<usize> {
        (0..in_shape.len()).try_fold(0, |at, a| {
            let i = index[a].checked_sub(before[a]).filter(|&i| i < in_shape[a])?;
            Some(at + i * strides[a])
        })
    };
    (0..shape.iter().product()).map(|i| source(unravel(i, &shape)).map_or(value, |at| x[at])).collect()
}

/// Runs `model` with tract (optimised, as the CPU backend runs it) on the inputs of `plan`'s
/// shapes; the outputs in graph order.
#[cfg(feature = "tract")]
pub fn tract(model: InferenceModel, plan: &Plan, inputs: &[&[f32]]) -> Vec<Vec<f32>> {
    let mut model = model;
    let mut values = TVec::new();
    for (i, ((_, id), data)) in plan.inputs.iter().zip(inputs).enumerate() {
        let shape = &plan.values[*id].shape;
        model.set_input_fact(i, f32::fact(shape).into()).expect("input fact");
        values.push(TValue::from_const(Arc::new(Tensor::from_shape(shape, data).expect("input tensor"))));
    }
    let runnable = model.into_optimized().and_then(|m| m.into_runnable()).expect("tract optimises the graph");
    let outputs = runnable.run(values).expect("tract runs the graph");
    outputs
        .iter()
        .map(|t| t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec)).expect("f32 output"))
        .collect()
}

/// Largest |a - b| over two equally long outputs (infinite where one of them is NaN), and the
/// largest |b| (the scale of b).
pub fn difference(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let gap = |x: f32, y: f32| if x.is_nan() != y.is_nan() { f32::INFINITY } else { (x - y).abs() };
    a.iter().zip(b).fold((0.0f32, 0.0f32), |(diff, scale), (&x, &y)| (gap(x, y).max(diff), y.abs().max(scale)))
}

/// `len` deterministic pseudo-random values in [lo, hi).
pub fn noise(len: usize, seed: u64, [lo, hi]: [f32; 2]) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| lo + (hi - lo) * rng.random::<f32>()).collect()
}
