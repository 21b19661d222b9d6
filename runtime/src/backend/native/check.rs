//! The size checks of a compiled step: every operand holds what its [`Op`] reads, and every
//! index a strided op computes stays inside its operand. A plan from a hostile graph that fails
//! one is refused at open; the kernels can then index without going out of bounds.

use super::program::{Extra, Step, MAX_AXES};
use crate::backend::plan::{Op, Window};

/// Checks `step`; the error says what does not fit.
pub fn step(step: &Step) -> Result<(), String> {
    let lens: Vec<usize> = step.inputs.iter().map(|s| s.len).collect();
    let out = step.output.len;
    let need = |what: &str, got: usize, want: Option<usize>| match want {
        Some(w) if w == got => Ok(()),
        Some(w) => Err(format!("{what} holds {got} values, the op needs {w}")),
        None => Err(format!("{what}: sizes overflow")),
    };
    let arity = |n: std::ops::RangeInclusive<usize>| {
        if n.contains(&lens.len()) {
            Ok(())
        } else {
            Err(format!("{} operands, the op takes {n:?}", lens.len()))
        }
    };
    let mul = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match &step.op {
        &Op::Conv { n, c_in, c_out, window, dilation, groups } => {
            arity(2..=3)?;
            if groups == 0 || c_in % groups != 0 || c_out % groups != 0 {
                return Err(format!("{groups} groups do not divide {c_in} and {c_out} channels"));
            }
            window_fits(&window, dilation)?;
            need("the input", lens[0], mul(&[n, c_in, window.h, window.w]))?;
            need("the weights", lens[1], mul(&[c_out, c_in / groups, window.kernel[0], window.kernel[1]]))?;
            if let Some(&bias) = lens.get(2) {
                need("the bias", bias, Some(c_out))?;
            }
            let residual = match &step.extra {
                Extra::Conv(extra) => extra.residual,
                Extra::Int8Conv { residual, .. } => *residual,
                _ => None,
            };
            if let Some(r) = residual {
                need("the residual", r.len, Some(out))?;
            }
            need("the output", out, mul(&[n, c_out, window.out_h, window.out_w]))
        }
        &Op::MatMul { batch, m, n, k, a_batch_stride, b_batch_stride } => {
            arity(2..=2)?;
            let span = |stride: usize, one: usize| {
                batch.checked_sub(1).map_or(Some(0), |b| b.checked_mul(stride)?.checked_add(one))
            };
            let fits = |what: &str, len: usize, want: Option<usize>| match want {
                Some(w) if w <= len => Ok(()),
                _ => Err(format!("{what} holds {len} values, too few for {batch} products")),
            };
            fits("a", lens[0], span(a_batch_stride, m * k))?;
            fits("b", lens[1], span(b_batch_stride, k * n))?;
            need("the output", out, mul(&[batch, m, n]))
        }
        Op::Binary { shape, a_strides, b_strides, .. } => {
            arity(2..=2)?;
            strided("a", shape, a_strides, lens[0])?;
            strided("b", shape, b_strides, lens[1])?;
            need("the output", out, mul(shape))
        }
        &Op::Unary { len, .. } => {
            arity(1..=1)?;
            need("the input", lens[0], Some(len))?;
            need("the output", out, Some(len))
        }
        Op::Broadcast { shape, strides } => {
            arity(1..=1)?;
            strided("the input", shape, strides, lens[0])?;
            need("the output", out, mul(shape))
        }
        &Op::Reduce { outer, len, inner, .. } => {
            arity(1..=1)?;
            need("the input", lens[0], mul(&[outer, len, inner]))?;
            need("the output", out, mul(&[outer, inner]))
        }
        &Op::Softmax { outer, len, inner } => {
            arity(1..=1)?;
            need("the input", lens[0], mul(&[outer, len, inner]))?;
            need("the output", out, Some(lens[0]))
        }
        &Op::LayerNorm { rows, cols, .. } => {
            arity(2..=3)?;
            need("the input", lens[0], mul(&[rows, cols]))?;
            need("the scale", lens[1], Some(cols))?;
            if let Some(&bias) = lens.get(2) {
                need("the bias", bias, Some(cols))?;
            }
            need("the output", out, Some(lens[0]))
        }
        &Op::Pool { planes, window, .. } => {
            arity(1..=1)?;
            window_fits(&window, [1, 1])?;
            need("the input", lens[0], mul(&[planes, window.h, window.w]))?;
            need("the output", out, mul(&[planes, window.out_h, window.out_w]))
        }
        &Op::Resize { planes, in_h, in_w, out_h, out_w, .. } => {
            arity(1..=1)?;
            need("the input", lens[0], mul(&[planes, in_h, in_w]))?;
            need("the output", out, mul(&[planes, out_h, out_w]))
        }
        Op::Transpose { in_shape, perm } => {
            arity(1..=1)?;
            let mut seen = vec![false; in_shape.len()];
            if perm.len() != in_shape.len()
                || perm.iter().any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true))
            {
                return Err(format!("{perm:?} is not a permutation of {} axes", in_shape.len()));
            }
            axes(in_shape.len())?;
            need("the input", lens[0], mul(in_shape))?;
            need("the output", out, Some(lens[0]))
        }
        &Op::Concat { outer, ref widths } => {
            if widths.len() != lens.len() || lens.is_empty() {
                return Err(format!("{} widths for {} parts", widths.len(), lens.len()));
            }
            for (i, (&w, &len)) in widths.iter().zip(&lens).enumerate() {
                need(&format!("part {i}"), len, mul(&[outer, w]))?;
            }
            let total = widths.iter().try_fold(0usize, |a, &w| a.checked_add(w));
            need("the output", out, total.and_then(|t| t.checked_mul(outer)))
        }
        Op::Slice { shape, starts, steps, in_strides } => {
            arity(1..=1)?;
            axes(shape.len())?;
            if starts.len() != shape.len() || steps.len() != shape.len() || in_strides.len() != shape.len() {
                return Err("the slice's starts, steps and strides do not match its rank".into());
            }
            if mul(shape) != Some(0) {
                // The lowest and highest flat index the slice reads.
                let (mut lo, mut hi) = (0i128, 0i128);
                for a in 0..shape.len() {
                    let first = starts[a] as i128 * in_strides[a] as i128;
                    let last = (starts[a] as i128 + (shape[a] as i128 - 1) * steps[a] as i128) * in_strides[a] as i128;
                    lo += first.min(last);
                    hi += first.max(last);
                }
                if lo < 0 || hi >= lens[0] as i128 {
                    return Err(format!("the slice reads indices {lo}..={hi} of {} values", lens[0]));
                }
            }
            need("the output", out, mul(shape))
        }
        &Op::Gather { outer, axis_len, inner, ref indices } => {
            arity(1..=1)?;
            need("the input", lens[0], mul(&[outer, axis_len, inner]))?;
            if let Some(bad) = indices.iter().find(|&&i| i >= axis_len) {
                return Err(format!("index {bad} is past the axis' {axis_len} entries"));
            }
            need("the output", out, mul(&[outer, indices.len(), inner]))
        }
        Op::Pad { in_shape, before, after, .. } => {
            arity(1..=1)?;
            axes(in_shape.len())?;
            if before.len() != in_shape.len() || after.len() != in_shape.len() {
                return Err("the padding does not match the rank".into());
            }
            need("the input", lens[0], mul(in_shape))?;
            let shape: Option<Vec<usize>> =
                (0..in_shape.len()).map(|a| in_shape[a].checked_add(before[a])?.checked_add(after[a])).collect();
            need("the output", out, shape.and_then(|s| mul(&s)))
        }
    }
}

/// At most [`MAX_AXES`] axes.
fn axes(rank: usize) -> Result<(), String> {
    if rank > MAX_AXES {
        return Err(format!("{rank} axes, over the native executor's {MAX_AXES}"));
    }
    Ok(())
}

/// The largest index `strides` reach over `shape` is inside `len` values.
fn strided(what: &str, shape: &[usize], strides: &[usize], len: usize) -> Result<(), String> {
    axes(shape.len())?;
    if strides.len() != shape.len() {
        return Err(format!("{what}: {} strides for {} axes", strides.len(), shape.len()));
    }
    if shape.contains(&0) {
        return Ok(());
    }
    let last = shape.iter().zip(strides).try_fold(0usize, |a, (&d, &s)| (d - 1).checked_mul(s)?.checked_add(a));
    match last {
        Some(l) if l < len => Ok(()),
        _ => Err(format!("{what} holds {len} values, the op reads further")),
    }
}

/// A window's geometry is positive and its sizes do not overflow.
fn window_fits(window: &Window, dilation: [usize; 2]) -> Result<(), String> {
    let Window { kernel, stride, out_h, out_w, h, w, pad } = *window;
    let all = [kernel[0], kernel[1], stride[0], stride[1], dilation[0], dilation[1]];
    let big = [h, w, out_h, out_w, pad[0], pad[1], pad[2], pad[3]].iter().chain(&all).any(|&v| v > 1 << 24);
    if all.contains(&0) || big {
        return Err(format!("window {window:?} with dilation {dilation:?} is out of range"));
    }
    Ok(())
}
