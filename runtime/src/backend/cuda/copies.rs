//! The data-movement ops (Broadcast, Transpose, Concat, Slice, and the interior of Pad) as
//! launches of the `copy_strided` kernel, whose parameters are derived here from the plan's op.

use super::kernels::dense_strides;
use crate::backend::plan::Op;

/// One `copy_strided` launch: for each index of the domain `shape`,
/// `y[y_base + Σ index·y_strides] = x[x_base + Σ index·x_strides]`, with x the step's input
/// `input` and y its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StridedCopy {
    /// Which of the step's inputs is copied.
    pub input: usize,
    /// The iteration domain.
    pub shape: Vec<usize>,
    /// Element strides in the input, per axis of the domain (negative for reversed slices).
    pub x_strides: Vec<i64>,
    /// Element strides in the output, per axis of the domain.
    pub y_strides: Vec<i64>,
    /// Offsets of the domain's first element in the input and the output.
    pub bases: [i64; 2],
}

/// The copies `op` is made of, in order, or `None` when it is not a data-movement op. A Pad's
/// copy writes its interior only: its output must be filled with the pad value first.
pub fn strided_copies(op: &Op) -> Option<Vec<StridedCopy>> {
    let whole = |shape: &[usize], x_strides: Vec<i64>, x_base: i64| StridedCopy {
        input: 0,
        shape: shape.to_vec(),
        x_strides,
        y_strides: dense_strides(shape),
        bases: [x_base, 0],
    };
    Some(match op {
        Op::Broadcast { shape, strides } => vec![whole(shape, strides.iter().map(|&s| s as i64).collect(), 0)],
        Op::Transpose { in_shape, perm } => {
            let in_strides = dense_strides(in_shape);
            let out_shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
            vec![whole(&out_shape, perm.iter().map(|&p| in_strides[p]).collect(), 0)]
        }
        Op::Slice { shape, starts, steps, in_strides } => {
            let strides = steps.iter().zip(in_strides).map(|(&step, &stride)| step as i64 * stride as i64);
            let base = starts.iter().zip(in_strides).map(|(&start, &stride)| (start * stride) as i64).sum();
            vec![whole(shape, strides.collect(), base)]
        }
        Op::Concat { outer, widths } => {
            let total: usize = widths.iter().sum();
            let offsets = widths.iter().scan(0, |offset, width| Some(std::mem::replace(offset, *offset + width)));
            (widths.iter().zip(offsets).enumerate())
                .map(|(input, (&width, offset))| StridedCopy {
                    input,
                    shape: vec![*outer, width],
                    x_strides: vec![width as i64, 1],
                    y_strides: vec![total as i64, 1],
                    bases: [0, offset as i64],
                })
                .collect()
        }
        Op::Pad { in_shape, before, after, .. } => {
            let out_shape: Vec<usize> = (0..in_shape.len()).map(|a| before[a] + in_shape[a] + after[a]).collect();
            let y_strides = dense_strides(&out_shape);
            let base = before.iter().zip(&y_strides).map(|(&b, &s)| b as i64 * s).sum();
            vec![StridedCopy {
                input: 0,
                shape: in_shape.clone(),
                x_strides: dense_strides(in_shape),
                y_strides,
                bases: [0, base],
            }]
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel does with `copy` (its index arithmetic, on the host).
    fn run(copy: &StridedCopy, x: &[f32], y: &mut [f32]) {
        let n: usize = copy.shape.iter().product();
        for i in 0..n {
            let (mut rest, mut a, mut b) = (i as i64, copy.bases[0], copy.bases[1]);
            for axis in (0..copy.shape.len()).rev() {
                let len = copy.shape[axis] as i64;
                a += rest % len * copy.x_strides[axis];
                b += rest % len * copy.y_strides[axis];
                rest /= len;
            }
            y[b as usize] = x[a as usize];
        }
    }

    /// `op` on `inputs`, into an output of `len` elements filled with `fill` first.
    fn apply(op: &Op, inputs: &[Vec<f32>], len: usize, fill: f32) -> Vec<f32> {
        let mut y = vec![fill; len];
        for copy in strided_copies(op).expect("a data-movement op") {
            run(&copy, &inputs[copy.input], &mut y);
        }
        y
    }

    fn iota(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn transpose_permutes_axes() {
        // x [2, 3, 4] → y [4, 2, 3]: y[k, i, j] = x[i, j, k].
        let y = apply(&Op::Transpose { in_shape: vec![2, 3, 4], perm: vec![2, 0, 1] }, &[iota(24)], 24, f32::NAN);
        for (k, i, j) in (0..4).flat_map(|k| (0..2).flat_map(move |i| (0..3).map(move |j| (k, i, j)))) {
            assert_eq!(y[k * 6 + i * 3 + j], (i * 12 + j * 4 + k) as f32);
        }
    }

    #[test]
    fn broadcast_repeats_along_zero_strides() {
        let y = apply(&Op::Broadcast { shape: vec![2, 3], strides: vec![0, 1] }, &[vec![1.0, 2.0, 3.0]], 6, f32::NAN);
        assert_eq!(y, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn slice_takes_strided_and_reversed_windows() {
        // x [4, 5]: rows 1 and 3, columns 4, 2, 0.
        let op = Op::Slice { shape: vec![2, 3], starts: vec![1, 4], steps: vec![2, -2], in_strides: vec![5, 1] };
        assert_eq!(apply(&op, &[iota(20)], 6, f32::NAN), [9.0, 7.0, 5.0, 19.0, 17.0, 15.0]);
    }

    #[test]
    fn concat_interleaves_parts_per_outer_index() {
        let op = Op::Concat { outer: 2, widths: vec![1, 2] };
        let y = apply(&op, &[vec![1.0, 2.0], vec![10.0, 11.0, 12.0, 13.0]], 6, f32::NAN);
        assert_eq!(y, [1.0, 10.0, 11.0, 2.0, 12.0, 13.0]);
    }

    #[test]
    fn pad_writes_the_interior_of_the_filled_output() {
        let op = Op::Pad { in_shape: vec![2, 2], before: vec![1, 0], after: vec![0, 1], value: -1.0 };
        let y = apply(&op, &[iota(4)], 9, -1.0);
        assert_eq!(y, [-1.0, -1.0, -1.0, 0.0, 1.0, -1.0, 2.0, 3.0, -1.0]);
        assert!(strided_copies(&Op::Softmax { outer: 1, len: 2, inner: 1 }).is_none());
    }
}
