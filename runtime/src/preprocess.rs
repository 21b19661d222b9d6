//! Frame and mask → encoder input: colour rule, area resize to R×R, normalisation.
//! Nothing here allocates; outputs go into buffers sized once from the manifest.

use crate::error::{Error, Result};
use crate::image::{ImageView, PixelFormat};
use crate::manifest::{ColourRule, Manifest, Normalisation};

/// Turns frames and masks of any size into the encoder's fixed-size inputs.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    resolution: usize,
    colour: ColourRule,
    normalisation: Normalisation,
}

impl Preprocessor {
    /// The pre-processing an engine's manifest prescribes.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        Self::new(manifest.resolution, manifest.colour, manifest.normalisation.clone())
    }

    /// Pre-processing to `resolution`² with the given colour rule and normalisation.
    pub fn new(resolution: usize, colour: ColourRule, normalisation: Normalisation) -> Self {
        Preprocessor { resolution, colour, normalisation }
    }

    /// Side R of the encoder's input.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// Length of the image buffer: C × R × R.
    pub fn image_len(&self) -> usize {
        self.colour.channels() * self.resolution * self.resolution
    }

    /// Writes `frame` as C planes of R×R, normalised, into `out` (length [`Self::image_len`]).
    pub fn image(&self, frame: &ImageView, out: &mut [f32]) {
        let plane = self.resolution * self.resolution;
        debug_assert_eq!(out.len(), self.image_len());
        for (c, dst) in out.chunks_exact_mut(plane).enumerate() {
            let colour = self.colour;
            area_resize(frame.width(), frame.height(), self.resolution, dst, |x, y| {
                let [r, g, b] = frame.rgb(x, y);
                match colour {
                    ColourRule::Luma => 0.299 * r + 0.587 * g + 0.114 * b,
                    ColourRule::Green => g,
                    ColourRule::Rgb => [r, g, b][c],
                }
            });
        }
        match &self.normalisation {
            Normalisation::MinMax => {
                let (lo, hi) =
                    out.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let scale = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
                out.iter_mut().for_each(|v| *v = (*v - lo) * scale);
            }
            Normalisation::MeanStd { mean, std } => {
                for (c, dst) in out.chunks_exact_mut(plane).enumerate() {
                    let (m, s) = (mean[c], std[c]);
                    dst.iter_mut().for_each(|v| *v = (*v - m) / s);
                }
            }
        }
    }

    /// Writes a shot's mask (`Gray8`, same size as its image, ≥ 128 is foreground) as 0/1 at R×R.
    ///
    /// A pixel of the R×R grid is foreground when at least half of its footprint is; a structure
    /// too small for any grid pixel to be half covered keeps every pixel it touches.
    pub fn mask(&self, mask: &ImageView, image: &ImageView, out: &mut [f32]) -> Result<()> {
        if mask.format() != PixelFormat::Gray8 {
            return Err(Error::invalid(format!(
                "mask is {}; masks are gray8 (0 background, ≥128 foreground)",
                mask.format().name()
            )));
        }
        if (mask.width(), mask.height()) != (image.width(), image.height()) {
            return Err(Error::invalid(format!(
                "mask is {}×{} but its image is {}×{}; a shot's mask must match its image",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            )));
        }
        let any = (0..mask.height()).any(|y| mask.row(y).iter().any(|&p| p >= 128));
        if !any {
            return Err(Error::invalid("mask is empty: a shot needs at least one foreground pixel (value ≥ 128)"));
        }
        area_resize(
            mask.width(),
            mask.height(),
            self.resolution,
            out,
            |x, y| {
                if mask.row(y)[x] >= 128 {
                    1.0
                } else {
                    0.0
                }
            },
        );
        binarise_coverage(out);
        Ok(())
    }
}

/// Turns the foreground coverage of each grid pixel (0..=1) into 0/1: foreground when at least
/// half covered; if no pixel is, every pixel with any coverage (a structure too small for the
/// grid keeps the pixels it touches).
pub fn binarise_coverage(coverage: &mut [f32]) {
    let cut = if coverage.iter().any(|&v| v >= 0.5) { 0.5 } else { f32::MIN_POSITIVE };
    coverage.iter_mut().for_each(|v| *v = if *v >= cut { 1.0 } else { 0.0 });
}

/// Resizes a `width`×`height` source, read through `sample(x, y)`, to `r`×`r` by exact area
/// averaging: each output pixel is the mean of the source over its footprint, partial pixels
/// weighted by the fraction covered.
pub fn area_resize(width: usize, height: usize, r: usize, out: &mut [f32], sample: impl Fn(usize, usize) -> f32) {
    let sx = width as f64 / r as f64;
    let sy = height as f64 / r as f64;
    let norm = (1.0 / (sx * sy)) as f32;
    for oy in 0..r {
        let (y0, y1) = (oy as f64 * sy, (oy + 1) as f64 * sy);
        for ox in 0..r {
            let (x0, x1) = (ox as f64 * sx, (ox + 1) as f64 * sx);
            let mut acc = 0.0f32;
            for y in y0.floor() as usize..(y1.ceil() as usize).min(height) {
                let wy = overlap(y, y0, y1);
                let mut row = 0.0f32;
                for x in x0.floor() as usize..(x1.ceil() as usize).min(width) {
                    row += overlap(x, x0, x1) * sample(x, y);
                }
                acc += wy * row;
            }
            out[oy * r + ox] = acc * norm;
        }
    }
}

/// Length of [i, i+1) ∩ [a, b).
#[inline]
fn overlap(i: usize, a: f64, b: f64) -> f32 {
    let i = i as f64;
    (b.min(i + 1.0) - a.max(i)).max(0.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_resize_halves_by_averaging_blocks() {
        let src = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 1.0, 1.0, 3.0, 3.0, 5.0, 5.0, 7.0, 7.0f32];
        let mut out = [0.0f32; 4];
        area_resize(4, 4, 2, &mut out, |x, y| src[y * 4 + x]);
        assert_eq!(out, [(0.0 + 2.0 + 8.0 + 10.0) / 4.0, (4.0 + 6.0 + 12.0 + 14.0) / 4.0, 3.0, 5.0]);
    }

    #[test]
    fn area_resize_weights_partial_pixels() {
        // 3 source columns onto 2: the middle one is split in half.
        let src = [0.0, 3.0, 6.0f32];
        let mut out = [0.0f32; 4];
        area_resize(3, 1, 2, &mut out, |x, _| src[x]);
        assert!((out[0] - (0.0 + 0.5 * 3.0) / 1.5).abs() < 1e-6, "{out:?}");
        assert!((out[1] - (0.5 * 3.0 + 6.0) / 1.5).abs() < 1e-6, "{out:?}");
    }
}
