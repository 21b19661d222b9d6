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
    region_to_mask(logits, r, (r, r), cut, out);
}

/// [`logits_to_mask`] from the top-left `width`×`height` region of row-major logits whose rows
/// are `stride` floats long: the region is stretched over the whole of `out`.
pub fn region_to_mask(logits: &[f32], stride: usize, (width, height): (usize, usize), cut: f32, out: &mut MaskMut) {
    assert!(width <= MAX_RESOLUTION && width <= stride, "region width {width} above {MAX_RESOLUTION} or its stride");
    assert!(height >= 1 && logits.len() >= (height - 1) * stride + width, "region runs past the logits");
    let (w, h) = (out.width(), out.height());
    let sx = width as f32 / w as f32;
    let sy = height as f32 / h as f32;
    let mut column = [0.0f32; MAX_RESOLUTION];
    let column = &mut column[..width];
    for y in 0..h {
        let (y0, y1, fy) = taps(y, sy, height);
        let row0 = &logits[y0 * stride..y0 * stride + width];
        let row1 = &logits[y1 * stride..y1 * stride + width];
        for ((c, a), b) in column.iter_mut().zip(row0).zip(row1) {
            *c = a + (b - a) * fy;
        }
        for (x, d) in out.row_mut(y).iter_mut().enumerate() {
            let (x0, x1, fx) = taps(x, sx, width);
            let v = column[x0] + (column[x1] - column[x0]) * fx;
            *d = if v > cut { 255 } else { 0 };
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
        let mut buf = [7u8; 4 * 2];
        let mut out = MaskMut::packed(&mut buf, 4, 2).unwrap();
        region_to_mask(&logits, 3, (2, 2), 0.0, &mut out);
        assert_eq!(buf, [0, 0, 255, 255, 0, 0, 255, 255]);
    }
}
