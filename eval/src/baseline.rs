//! Training-free baselines that an in-context engine has to beat, scored on the same draws.

use segicl::error::{Error, Result};
use segicl::image::{ImageView, MaskMut, PixelFormat};
use segicl::preprocess::mask_coverage;

/// "Copy the shots": the mean of the shots' gray8 masks (≥ 128 foreground), each area-resized to
/// `out`'s size, written to `out` as 255 where the mean is at least 0.5 and 0 elsewhere. It knows
/// where the structure usually is, nothing about the query. Allocates two planes of `out`'s size.
pub fn copy_shots(masks: &[ImageView], out: &mut MaskMut) -> Result<()> {
    if masks.is_empty() {
        return Err(Error::invalid("copy-shots needs at least one shot mask"));
    }
    if let Some(m) = masks.iter().find(|m| m.format() != PixelFormat::Gray8) {
        return Err(Error::invalid(format!("mask is {}; masks are gray8", m.format().name())));
    }
    let (w, h) = (out.width(), out.height());
    let mut plane = vec![0.0f32; w * h];
    let mut sum = vec![0.0f32; w * h];
    for mask in masks {
        mask_coverage(mask, (w, h), &mut plane);
        sum.iter_mut().zip(&plane).for_each(|(s, p)| *s += p);
    }
    let cut = 0.5 * masks.len() as f32;
    for (y, sums) in sum.chunks_exact(w).enumerate() {
        for (d, &s) in out.row_mut(y).iter_mut().zip(sums) {
            *d = if s >= cut { 255 } else { 0 };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_resized_masks_at_half() {
        // Two 4×2 masks onto 2×1: left halves covered by both, the right half by one alone.
        let a = [255u8, 255, 0, 0, 255, 255, 0, 0];
        let b = [255u8, 255, 255, 255, 255, 255, 255, 0];
        let views = [&a, &b].map(|m| ImageView::packed(m, 4, 2, PixelFormat::Gray8).unwrap());
        let mut buf = [7u8; 2];
        copy_shots(&views, &mut MaskMut::packed(&mut buf, 2, 1).unwrap()).unwrap();
        // Right half: a covers 0, b covers 3/4; mean 3/8 < 0.5.
        assert_eq!(buf, [255, 0]);
        copy_shots(&views[1..], &mut MaskMut::packed(&mut buf, 2, 1).unwrap()).unwrap();
        assert_eq!(buf, [255, 255]);
        assert!(copy_shots(&[], &mut MaskMut::packed(&mut buf, 2, 1).unwrap()).is_err());
    }
}
