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
    upsample(logits, r, (r, r), place, out, |d, v| *d = if v > cut { 255 } else { 0 });
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
    upsample(logits, stride, region, place, out, |d, v| {
        if v > cut {
            *d = 255;
        }
    });
}

/// Samples the region bilinearly at the centre of every pixel of `out` (placed in its frame by
/// `place`) and hands each pixel and its logit to `write`.
#[inline]
fn upsample(
    logits: &[f32],
    stride: usize,
    (width, height): (usize, usize),
    place: Placement,
    out: &mut MaskMut,
    write: impl Fn(&mut u8, f32),
) {
    assert!(width <= MAX_RESOLUTION && width <= stride, "region width {width} above {MAX_RESOLUTION} or its stride");
    assert!(height >= 1 && logits.len() >= (height - 1) * stride + width, "region runs past the logits");
    let ((fw, fh), (ax, ay)) = (place.frame, place.at);
    assert!(ax + out.width() <= fw && ay + out.height() <= fh, "the view lies outside its frame");
    let sx = width as f32 / fw as f32;
    let sy = height as f32 / fh as f32;
    let mut column = [0.0f32; MAX_RESOLUTION];
    let column = &mut column[..width];
    for y in 0..out.height() {
        let (y0, y1, fy) = taps(ay + y, sy, height);
        let row0 = &logits[y0 * stride..y0 * stride + width];
        let row1 = &logits[y1 * stride..y1 * stride + width];
        for ((c, a), b) in column.iter_mut().zip(row0).zip(row1) {
            *c = a + (b - a) * fy;
        }
        for (x, d) in out.row_mut(y).iter_mut().enumerate() {
            let (x0, x1, fx) = taps(ax + x, sx, width);
            write(d, column[x0] + (column[x1] - column[x0]) * fx);
        }
    }
}

/// The two source indices and the weight of the second for output pixel `i` at `scale`.
#[inline]
fn taps(i: usize, scale: f32, r: usize) -> (usize, usize, f32) {
    let s = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (r - 1) as f32);
    let i0 = s as usize;
    let i1 = (i0 + 1).min(r - 1);
    (i0, i1, s - i0 as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

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
