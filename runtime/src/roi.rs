//! Two-pass refinement of small structures (ROI mode): where to crop a frame around its pass-1
//! prediction, and a shot around its own mask. Nothing here allocates.
//!
//! A crop is a square around the structure's bounding box, larger than the box by a margin on
//! every side, at least [`RoiOptions::min_side`] pixels, moved (not shrunk) to stay inside the
//! image, and cut to the image only where the image is smaller than the square. Shots and frames
//! are cropped by the same rule, so a structure fills the same share of its crop in both.

use crate::error::{Error, Result};
use crate::image::{ImageView, Rect};

/// How [`Session`](crate::Session) crops frames and shots in ROI mode.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RoiOptions {
    /// Margin added on every side of the bounding box, as a fraction of the box's larger side
    /// (finite, ≥ 0; default 0.5: a box of 40 pixels gets a crop of 80).
    pub margin: f32,
    /// Smallest side of a crop in pixels (default 64: at most 2× magnification at the usual
    /// resolution of 128), so that a tiny box is not blown up absurdly when its crop is resized
    /// to the engine's resolution. An image side shorter than this is used whole.
    pub min_side: usize,
}

impl Default for RoiOptions {
    /// Margin 0.5, minimum side 64: the best of a sweep on the synthetic fundus disc and cup
    /// with the prototype engine (margins 0.3 to 0.75, minimum sides 16 to 128).
    fn default() -> Self {
        RoiOptions { margin: 0.5, min_side: 64 }
    }
}

impl RoiOptions {
    /// Checks the margin.
    pub fn check(&self) -> Result<()> {
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(Error::invalid(format!(
                "ROI margin {} is not a finite number ≥ 0 (a fraction of the box's larger side, e.g. 0.5)",
                self.margin
            )));
        }
        Ok(())
    }

    /// The crop around `bbox` in a `width`×`height` image (see the module documentation); it
    /// always contains `bbox`, which must lie inside the image.
    pub fn crop(&self, bbox: Rect, width: usize, height: usize) -> Rect {
        let larger = bbox.width.max(bbox.height) as f32;
        let side = ((larger * (1.0 + 2.0 * self.margin)).ceil() as usize).max(self.min_side);
        let (x, w) = place(bbox.x, bbox.width, side, width);
        let (y, h) = place(bbox.y, bbox.height, side, height);
        Rect { x, y, width: w, height: h }
    }
}

/// Start and length, along one axis of `limit` pixels, of a span of `side` pixels centred on
/// `start..start + len`, moved to lie inside and cut to `limit`.
fn place(start: usize, len: usize, side: usize, limit: usize) -> (usize, usize) {
    let side = side.max(len).min(limit);
    let centre = start as f32 + len as f32 / 2.0;
    let first = (centre - side as f32 / 2.0).round().max(0.0) as usize;
    (first.min(limit - side), side)
}

/// Bounding box of the foreground (≥ 128) of a gray8 mask; `None` when it has none.
pub fn mask_box(mask: &ImageView) -> Option<Rect> {
    let mut bounds: Option<(usize, usize, usize, usize)> = None;
    for y in 0..mask.height() {
        let row = mask.row(y);
        let Some(first) = row.iter().position(|&v| v >= 128) else { continue };
        let last = row.iter().rposition(|&v| v >= 128).expect("the row has a foreground pixel");
        bounds = Some(match bounds {
            None => (first, y, last, y),
            Some((x0, y0, x1, _)) => (x0.min(first), y0, x1.max(last), y),
        });
    }
    bounds.map(|(x0, y0, x1, y1)| Rect { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 })
}

/// Bounding box, in the pixels of a `width`×`height` frame, of the cells of the R×R `logits`
/// above `cut` (cell (i, j) covers columns i·width/R to (i+1)·width/R, rows likewise); `None`
/// when no cell is, in which case the upsampled mask is empty too.
pub fn logits_box(logits: &[f32], r: usize, cut: f32, width: usize, height: usize) -> Option<Rect> {
    debug_assert_eq!(logits.len(), r * r);
    let mut bounds: Option<(usize, usize, usize, usize)> = None;
    for (j, row) in logits.chunks_exact(r).enumerate() {
        let Some(first) = row.iter().position(|&v| v > cut) else { continue };
        let last = row.iter().rposition(|&v| v > cut).expect("the row has a cell above the cut");
        bounds = Some(match bounds {
            None => (first, j, last, j),
            Some((i0, j0, i1, _)) => (i0.min(first), j0, i1.max(last), j),
        });
    }
    let (i0, j0, i1, j1) = bounds?;
    let (x0, y0) = (i0 * width / r, j0 * height / r);
    let (x1, y1) = (((i1 + 1) * width).div_ceil(r), ((j1 + 1) * height).div_ceil(r));
    Some(Rect { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PixelFormat;

    fn rect(x: usize, y: usize, width: usize, height: usize) -> Rect {
        Rect { x, y, width, height }
    }

    #[test]
    fn crops_are_squares_with_a_margin_inside_the_image() {
        let o = RoiOptions { margin: 0.25, min_side: 8 };
        // 40×20 box in the middle: side 40 + 2·10 = 60, centred.
        assert_eq!(o.crop(rect(100, 100, 40, 20), 300, 300), rect(90, 80, 60, 60));
        // Near a corner the square moves inside rather than shrinking.
        assert_eq!(o.crop(rect(0, 290, 40, 10), 300, 300), rect(0, 240, 60, 60));
        // Wider than the image: cut to it along that axis only.
        assert_eq!(o.crop(rect(5, 10, 40, 40), 50, 300), rect(0, 0, 50, 60));
        // A tiny box gets the minimum side; no margin gives the box's larger side.
        assert_eq!(o.crop(rect(50, 50, 2, 2), 300, 300), rect(47, 47, 8, 8));
        assert_eq!(RoiOptions { margin: 0.0, min_side: 0 }.crop(rect(3, 4, 5, 2), 20, 20), rect(3, 3, 5, 5));
        // Whatever the box and image, the crop contains the box and lies inside the image.
        for (x, y, w, h, iw, ih) in
            [(0, 0, 1, 1, 1, 1), (7, 3, 1, 9, 9, 12), (0, 5, 33, 2, 33, 40), (12, 12, 7, 7, 19, 19)]
        {
            for margin in [0.0, 0.1, 0.25, 1.0, 5.0] {
                let c = RoiOptions { margin, min_side: 16 }.crop(rect(x, y, w, h), iw, ih);
                assert!(c.x <= x && c.y <= y && x + w <= c.x + c.width && y + h <= c.y + c.height, "{c:?}");
                assert!(c.x + c.width <= iw && c.y + c.height <= ih, "{c:?}");
            }
        }
    }

    #[test]
    fn bad_margins_are_refused() {
        for margin in [-0.1, f32::NAN, f32::INFINITY] {
            let err = RoiOptions { margin, min_side: 32 }.check().unwrap_err().to_string();
            assert!(err.contains("margin"), "{err}");
        }
        assert!(RoiOptions::default().check().is_ok());
    }

    #[test]
    fn boxes_of_masks_and_of_logits() {
        let mut mask = vec![0u8; 6 * 5];
        mask[6 + 2] = 255;
        mask[3 * 6 + 4] = 128;
        mask[4 * 6 + 1] = 127;
        let view = ImageView::packed(&mask, 6, 5, PixelFormat::Gray8).unwrap();
        assert_eq!(mask_box(&view), Some(rect(2, 1, 3, 3)));
        assert_eq!(mask_box(&ImageView::packed(&[0; 4], 2, 2, PixelFormat::Gray8).unwrap()), None);

        // 4×4 logits onto a 10×8 frame: cells (1, 2) and (2, 2) are above the cut.
        let mut logits = [-1.0f32; 16];
        logits[2 * 4 + 1] = 1.0;
        logits[2 * 4 + 2] = 0.5;
        assert_eq!(logits_box(&logits, 4, 0.0, 10, 8), Some(rect(2, 4, 6, 2)));
        assert_eq!(logits_box(&logits, 4, 1.0, 10, 8), None);
        // Upsampling to fewer pixels than cells still gives a pixel.
        assert_eq!(logits_box(&logits, 4, 0.0, 1, 1), Some(rect(0, 0, 1, 1)));
    }
}
