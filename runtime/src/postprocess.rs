//! Logits at R×R (or a region of them) → a 0/255 mask at the frame's own size: bilinear upsampling of the logits,
//! then a threshold on the probability (sigmoid of the logit). Allocates nothing.

use crate::image::MaskMut;
use crate::manifest::MAX_RESOLUTION;

/// The logit whose sigmoid is `threshold`; comparing logits avoids a sigmoid per pixel.
pub fn threshold_logit(threshold: f32) -> f32 {
    (threshold / (1.0 - threshold)).ln()
}

/// Samples the R×R `logits` bilinearly at the centre of every pixel of `out` (half-pixel
/// centres, edges clamped) and writes 255 where the logit exceeds `cut`, else 0.
pub fn logits_to_mask(logits: &[f32], r: usize, cut: f32, out: &mut MaskMut) {
    debug_assert_eq!(logits.len(), r * r);
    let place = Placement { frame: (out.width(), out.height()), at: (0, 0) };
    upsample(logits, r, (r, r), place, cut, out, |run, above| run.fill(if above { 255 } else { 0 }));
}

/// [`logits_to_mask`] from the top-left `width`×`height` region of row-major logits whose rows
/// are `stride` floats long: the region is stretched over the whole of `out`, whose pixels become
/// 255 above `cut` and keep their value below it.
pub fn region_to_mask(logits: &[f32], stride: usize, region: (usize, usize), cut: f32, out: &mut MaskMut) {
    let place = Placement { frame: (out.width(), out.height()), at: (0, 0) };
    region_into_mask(logits, stride, region, place, cut, out);
}

/// Where a mask view lies in the frame the logits are stretched over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Width and height of the whole frame.
    pub frame: (usize, usize),
    /// Column and row of the view's first pixel in the frame.
    pub at: (usize, usize),
}

/// [`region_to_mask`] for a view `out` of a larger frame placed by `place`: the region is
/// stretched over the whole frame and only the view's pixels are written, 255 where the logit
/// exceeds `cut` (pixels already 255 stay 255, so several regions can be merged), else left as
/// they are.
pub fn region_into_mask(
    logits: &[f32],
    stride: usize,
    region: (usize, usize),
    place: Placement,
    cut: f32,
    out: &mut MaskMut,
) {
    upsample(logits, stride, region, place, cut, out, |run, above| {
        if above {
            run.fill(255);
        }
    });
}

/// Samples the region bilinearly at the centre of every pixel of `out` (placed in its frame by
/// `place`) and hands `write` each run of a row's pixels whose logits are all above `cut`
/// (`true`) or all at or below it (`false`).
///
/// The result is the per-pixel rule's exactly, without evaluating every pixel. The view's columns
/// fall into runs that share their left tap (computed once per call); along a run the sampled
/// logit is `a + d·fx` with `a`, `d` fixed and `fx` non-decreasing, and rounding keeps that
/// monotone, so the threshold splits a run at most once: its two ends tell whether it does, and a
/// bisection with the same per-pixel formula finds where. At 1920×1080 from 128² logits that is a
/// few hundred evaluations per row instead of 1,920.
fn upsample(
    logits: &[f32],
    stride: usize,
    (width, height): (usize, usize),
    place: Placement,
    cut: f32,
    out: &mut MaskMut,
    write: impl Fn(&mut [u8], bool),
) {
    assert!(width <= MAX_RESOLUTION && width <= stride, "region width {width} above {MAX_RESOLUTION} or its stride");
    assert!(height >= 1 && logits.len() >= (height - 1) * stride + width, "region runs past the logits");
    let ((fw, fh), (ax, ay)) = (place.frame, place.at);
    assert!(ax + out.width() <= fw && ay + out.height() <= fh, "the view lies outside its frame");
    if out.width() == 0 {
        return;
    }
    let sx = width as f32 / fw as f32;
    let sy = height as f32 / fh as f32;
    // Runs of columns sharing a left tap: run i is columns starts[i]..starts[i + 1], tap lefts[i].
    // Taps never decrease along a row, so there are at most `width` runs.
    let mut starts = [0u32; MAX_RESOLUTION + 1];
    let mut lefts = [0u16; MAX_RESOLUTION];
    let mut runs = 0;
    for x in 0..out.width() {
        let (x0, _, _) = taps(ax + x, sx, width);
        if runs == 0 || usize::from(lefts[runs - 1]) != x0 {
            (starts[runs], lefts[runs]) = (x as u32, x0 as u16);
            runs += 1;
        }
    }
    starts[runs] = out.width() as u32;
    let mut column = [0.0f32; MAX_RESOLUTION];
    let column = &mut column[..width];
    for y in 0..out.height() {
        let (y0, y1, fy) = taps(ay + y, sy, height);
        let row0 = &logits[y0 * stride..y0 * stride + width];
        let row1 = &logits[y1 * stride..y1 * stride + width];
        for ((c, a), b) in column.iter_mut().zip(row0).zip(row1) {
            *c = a + (b - a) * fy;
        }
        let row = out.row_mut(y);
        // The pending run of equal decisions: row[pending..] up to the current column.
        let (mut pending, mut state) = (0, column[usize::from(lefts[0])] > cut);
        for i in 0..runs {
            let (first, end) = (starts[i] as usize, starts[i + 1] as usize);
            // `taps` of a column of this run, its left tap known: the per-pixel rule's logit.
            let x0 = usize::from(lefts[i]);
            let (a, d) = (column[x0], column[(x0 + 1).min(width - 1)] - column[x0]);
            let above = |x: usize| a + d * (position(ax + x, sx, width) - x0 as f32) > cut;
            let (at_first, at_last) = (above(first), above(end - 1));
            if at_first != state {
                write(&mut row[pending..first], state);
                (pending, state) = (first, at_first);
            }
            if at_last != at_first {
                // The first column of the run that decides like its last one.
                let (mut lo, mut hi) = (first, end - 1);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if above(mid) == at_first {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                write(&mut row[pending..hi], state);
                (pending, state) = (hi, at_last);
            }
        }
        write(&mut row[pending..], state);
    }
}

/// Where the centre of output pixel `i` falls in the `r` source pixels at `scale` (half-pixel
/// centres, clamped to the edges).
#[inline]
fn position(i: usize, scale: f32, r: usize) -> f32 {
    ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (r - 1) as f32)
}

/// The two source indices and the weight of the second for output pixel `i` at `scale`.
#[inline]
fn taps(i: usize, scale: f32, r: usize) -> (usize, usize, f32) {
    let s = position(i, scale, r);
    let i0 = s as usize;
    let i1 = (i0 + 1).min(r - 1);
    (i0, i1, s - i0 as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The rule [`upsample`] implements, pixel by pixel: every pixel's taps, its sampled logit,
    /// then 255 above `cut`, else 0 (`merge`: else unchanged). `out` is the view, `view_width` wide.
    fn per_pixel(
        logits: &[f32],
        stride: usize,
        (width, height): (usize, usize),
        place: Placement,
        cut: f32,
        (out, view_width): (&mut [u8], usize),
        merge: bool,
    ) {
        let ((fw, fh), (ax, ay)) = (place.frame, place.at);
        let (sx, sy) = (width as f32 / fw as f32, height as f32 / fh as f32);
        for (y, row) in out.chunks_exact_mut(view_width).enumerate() {
            let (y0, y1, fy) = taps(ay + y, sy, height);
            for (x, d) in row.iter_mut().enumerate() {
                let (x0, x1, fx) = taps(ax + x, sx, width);
                let at = |yy: usize, xx: usize| logits[yy * stride + xx];
                let c0 = at(y0, x0) + (at(y1, x0) - at(y0, x0)) * fy;
                let c1 = at(y0, x1) + (at(y1, x1) - at(y0, x1)) * fy;
                if c0 + (c1 - c0) * fx > cut {
                    *d = 255;
                } else if !merge {
                    *d = 0;
                }
            }
        }
    }

    #[test]
    fn runs_reproduce_the_per_pixel_rule_on_random_geometries() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for case in 0..400 {
            let region = if case % 50 == 0 { (128, 128) } else { (rng.random_range(1..40), rng.random_range(1..40)) };
            let stride = region.0 + rng.random_range(0..3);
            let frame = (rng.random_range(1..300), rng.random_range(1..300));
            let at = (rng.random_range(0..frame.0), rng.random_range(0..frame.1));
            let view = (rng.random_range(1..=frame.0 - at.0), rng.random_range(1..=frame.1 - at.1));
            // Smooth fields (long runs that the cut splits), noise, and logits on a coarse grid
            // that often equal the cut exactly.
            let (kind, phase) = (case % 3, rng.random_range(0.0..6.0f32));
            let logits: Vec<f32> = (0..region.1 * stride)
                .map(|i| match kind {
                    0 => ((i % stride) as f32 * 0.3 + phase).sin() * 3.0 + ((i / stride) as f32 * 0.2).cos(),
                    1 => rng.random_range(-4.0..4.0),
                    _ => rng.random_range(-4..=4) as f32 * 0.5,
                })
                .collect();
            let cut = if kind == 2 { 0.5 } else { rng.random_range(-1.0..1.0) };
            let place = Placement { frame, at };
            let before: Vec<u8> = (0..view.0 * view.1).map(|_| [0, 7, 255][rng.random_range(0..3)]).collect();
            for merge in [false, true] {
                let mut want = before.clone();
                per_pixel(&logits, stride, region, place, cut, (&mut want, view.0), merge);
                let mut got = before.clone();
                let mut out = MaskMut::packed(&mut got, view.0, view.1).unwrap();
                if merge {
                    region_into_mask(&logits, stride, region, place, cut, &mut out);
                } else {
                    upsample(&logits, stride, region, place, cut, &mut out, |run, above| {
                        run.fill(if above { 255 } else { 0 })
                    });
                }
                assert!(
                    got == want,
                    "case {case} (merge {merge}): region {region:?} stride {stride}, {place:?}, view {view:?}"
                );
            }
        }
    }

    #[test]
    fn full_hd_frames_match_the_per_pixel_rule() {
        let r = 128;
        let logits: Vec<f32> =
            (0..r * r).map(|i| ((i % r) as f32 * 0.11).sin() * 2.0 + ((i / r) as f32 * 0.07).cos() - 0.3).collect();
        let (w, h) = (1920, 1080);
        let mut want = vec![9u8; w * h];
        let place = Placement { frame: (w, h), at: (0, 0) };
        per_pixel(&logits, r, (r, r), place, 0.1, (&mut want, w), false);
        let mut got = vec![9u8; w * h];
        logits_to_mask(&logits, r, 0.1, &mut MaskMut::packed(&mut got, w, h).unwrap());
        assert!(got == want);
        assert!(got.contains(&255) && got.contains(&0));
    }

    #[test]
    fn threshold_half_is_logit_zero() {
        assert_eq!(threshold_logit(0.5), 0.0);
        assert!((threshold_logit(0.7310586) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn upsamples_2_to_4_with_half_pixel_centres() {
        // Logits -1, 1 across: output centres sit at -0.25, 0.25, 0.75, 1.25 in source pixels,
        // giving -1, -0.5, 0.5, 1 after clamping; the cut at 0 splits the row in halves.
        let logits = [-1.0, 1.0, -1.0, 1.0f32];
        let mut buf = [7u8; 4 * 2];
        let mut out = MaskMut::packed(&mut buf, 4, 2).unwrap();
        logits_to_mask(&logits, 2, 0.0, &mut out);
        assert_eq!(buf, [0, 0, 255, 255, 0, 0, 255, 255]);
    }

    #[test]
    fn a_region_is_stretched_over_the_whole_mask() {
        // Logits 2 wide with a stride of 3: the third column (+9, padding) must never be read.
        let logits = [-1.0, 1.0, 9.0, -1.0, 1.0, 9.0f32];
        let mut buf = [0u8; 4 * 2];
        let mut out = MaskMut::packed(&mut buf, 4, 2).unwrap();
        region_to_mask(&logits, 3, (2, 2), 0.0, &mut out);
        assert_eq!(buf, [0, 0, 255, 255, 0, 0, 255, 255]);
        // Into the right half of the same frame only: the left half keeps what it held.
        let mut buf = [9u8; 2 * 2];
        let mut view = MaskMut::packed(&mut buf, 2, 2).unwrap();
        region_into_mask(&logits, 3, (2, 2), Placement { frame: (4, 2), at: (2, 0) }, 0.0, &mut view);
        assert_eq!(buf, [255, 255, 255, 255]);
        let mut buf = [9u8; 2 * 2];
        let mut view = MaskMut::packed(&mut buf, 2, 2).unwrap();
        region_into_mask(&logits, 3, (2, 2), Placement { frame: (4, 2), at: (0, 0) }, 0.0, &mut view);
        assert_eq!(buf, [9, 9, 9, 9], "below the cut a pixel keeps its value");
    }
}
