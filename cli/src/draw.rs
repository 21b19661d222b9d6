//! Overlays: a frame in colour with mask contours drawn on it.

use segicl::{OwnedImage, PixelFormat};

/// Contour colour of the predicted mask.
const PREDICTED: [u8; 3] = [40, 255, 40];
/// Contour colour of the reference mask.
const REFERENCE: [u8; 3] = [255, 60, 200];

/// The frame as RGB with the contour of `pred` (green) and, if given, of `truth` (magenta).
pub fn overlay(frame: &OwnedImage, pred: &[u8], truth: Option<&[u8]>) -> OwnedImage {
    let (w, h) = (frame.width, frame.height);
    let view = frame.view();
    let mut out = OwnedImage::zeros(w, h, PixelFormat::Rgb8);
    for y in 0..h {
        for x in 0..w {
            let rgb = view.rgb(x, y).map(|v| (v * 255.0).round() as u8);
            out.data[(y * w + x) * 3..][..3].copy_from_slice(&rgb);
        }
    }
    if let Some(truth) = truth {
        paint_contour(&mut out, truth, REFERENCE);
    }
    paint_contour(&mut out, pred, PREDICTED);
    out
}

/// Paints foreground pixels of `mask` that touch the background (or the border), 2 px thick.
fn paint_contour(img: &mut OwnedImage, mask: &[u8], colour: [u8; 3]) {
    let (w, h) = (img.width as isize, img.height as isize);
    let fg = |x: isize, y: isize| x >= 0 && y >= 0 && x < w && y < h && mask[(y * w + x) as usize] >= 128;
    for y in 0..h {
        for x in 0..w {
            if fg(x, y)
                && [(-1, 0), (1, 0), (0, -1), (0, 1), (-2, 0), (2, 0), (0, -2), (0, 2)]
                    .iter()
                    .any(|(dx, dy)| !fg(x + dx, y + dy))
            {
                img.data[((y * w + x) * 3) as usize..][..3].copy_from_slice(&colour);
            }
        }
    }
}
