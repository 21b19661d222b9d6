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
        debug_assert_eq!(out.len(), self.image_len());
        let r = self.resolution;
        frame_planes(frame, self.colour, (r, r), out);
        normalise(&self.normalisation, r * r, out);
    }

    /// Writes a shot's mask (`Gray8`, same size as its image, ≥ 128 is foreground) as 0/1 at R×R.
    ///
    /// A pixel of the R×R grid is foreground when at least half of its footprint is; a structure
    /// too small for any grid pixel to be half covered keeps every pixel it touches.
    pub fn mask(&self, mask: &ImageView, image: &ImageView, out: &mut [f32]) -> Result<()> {
        check_mask(mask, image)?;
        mask_coverage(mask, (self.resolution, self.resolution), out);
        binarise_coverage(out);
        Ok(())
    }
}

/// Checks that `mask` can be `image`'s shot mask: gray8, the image's size, some foreground.
pub fn check_mask(mask: &ImageView, image: &ImageView) -> Result<()> {
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
    Ok(())
}

/// Writes `frame` as the colour rule's channels, each a plane of `size` (width, height) area-resized
/// from the frame, with values in 0..=1, into `out` (channels × width × height floats).
pub fn frame_planes(frame: &ImageView, colour: ColourRule, (width, height): (usize, usize), out: &mut [f32]) {
    let plane = width * height;
    debug_assert_eq!(out.len(), colour.channels() * plane);
    let (r, g, b) = match frame.format() {
        PixelFormat::Bgr8 => (2, 1, 0),
        _ => (0, 1, 2),
    };
    let size = (width, height);
    const S: f32 = 1.0 / 255.0;
    for (c, dst) in out.chunks_exact_mut(plane).enumerate() {
        match (frame.format(), colour) {
            (PixelFormat::Gray8, _) => resample(frame, size, dst, |d: &[u8], i: usize| d[i] as f32 * S),
            (PixelFormat::Gray16, _) => resample(frame, size, dst, |d: &[u8], i: usize| {
                u16::from_ne_bytes([d[i], d[i + 1]]) as f32 * (1.0 / 65535.0)
            }),
            (_, ColourRule::Luma) => resample(frame, size, dst, |d: &[u8], i: usize| {
                (0.299 * d[i + r] as f32 + 0.587 * d[i + g] as f32 + 0.114 * d[i + b] as f32) * S
            }),
            (_, ColourRule::Green) => resample(frame, size, dst, |d: &[u8], i: usize| d[i + g] as f32 * S),
            (_, ColourRule::Rgb) => {
                let k = [r, g, b][c];
                resample(frame, size, dst, |d: &[u8], i: usize| d[i + k] as f32 * S)
            }
        }
    }
}

/// Area-resizes one channel of `frame` into `dst` of `size`; `px(bytes, i)` reads the channel of
/// the pixel whose first byte is `bytes[i]`.
#[inline]
fn resample(frame: &ImageView, size: (usize, usize), dst: &mut [f32], px: impl Fn(&[u8], usize) -> f32) {
    let (bytes, stride, bpp) = (frame.bytes(), frame.stride(), frame.format().bytes_per_pixel());
    area_resize((frame.width(), frame.height()), size, dst, |x, y| px(bytes, y * stride + x * bpp));
}

/// Normalises `values` (channel planes of `plane` floats each) in place by `rule`: min-max over
/// all of them (a flat image becomes zeros) or mean/std per plane.
pub fn normalise(rule: &Normalisation, plane: usize, values: &mut [f32]) {
    match rule {
        Normalisation::MinMax => {
            let (lo, hi) =
                values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let scale = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
            values.iter_mut().for_each(|v| *v = (*v - lo) * scale);
        }
        Normalisation::MeanStd { mean, std } => {
            for (c, dst) in values.chunks_exact_mut(plane).enumerate() {
                let (m, s) = (mean[c], std[c]);
                dst.iter_mut().for_each(|v| *v = (*v - m) / s);
            }
        }
    }
}

/// Writes, for each pixel of a grid of `size` (width, height) laid over the gray8 `mask`, the
/// fraction of it that the mask's foreground (≥ 128) covers.
pub fn mask_coverage(mask: &ImageView, size: (usize, usize), out: &mut [f32]) {
    debug_assert_eq!(mask.format(), PixelFormat::Gray8);
    area_resize((mask.width(), mask.height()), size, out, |x, y| if mask.row(y)[x] >= 128 { 1.0 } else { 0.0 });
}

/// Turns the foreground coverage of each grid pixel (0..=1) into 0/1: foreground when at least
/// half covered; if no pixel is, every pixel with any coverage (a structure too small for the
/// grid keeps the pixels it touches).
pub fn binarise_coverage(coverage: &mut [f32]) {
    let cut = if coverage.iter().any(|&v| v >= 0.5) { 0.5 } else { f32::MIN_POSITIVE };
    coverage.iter_mut().for_each(|v| *v = if *v >= cut { 1.0 } else { 0.0 });
}

/// Resizes a `width`×`height` source, read through `sample(x, y)`, to `out_width`×`out_height`
/// (row-major in `out`) by exact area averaging: each output pixel is the mean of the source over
/// its footprint, partial pixels weighted by the fraction covered.
pub fn area_resize(
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    out: &mut [f32],
    sample: impl Fn(usize, usize) -> f32,
) {
    debug_assert_eq!(out.len(), out_width * out_height);
    let sx = width as f32 / out_width as f32;
    let sy = height as f32 / out_height as f32;
    for oy in 0..out_height {
        let ys = Span::new(oy, sy, height);
        for ox in 0..out_width {
            let xs = Span::new(ox, sx, width);
            let mut acc = 0.0f32;
            for y in ys.first..ys.end {
                let mut row = sample(xs.first, y) * xs.w_first;
                if xs.end - xs.first > 1 {
                    for x in xs.first + 1..xs.end - 1 {
                        row += sample(x, y);
                    }
                    row += sample(xs.end - 1, y) * xs.w_last;
                }
                acc += ys.weight(y) * row;
            }
            out[oy * out_width + ox] = acc / (xs.len * ys.len);
        }
    }
}

/// The source pixels under one output pixel along one axis.
struct Span {
    /// First source pixel touched.
    first: usize,
    /// One past the last source pixel touched.
    end: usize,
    /// Fraction of the first pixel covered.
    w_first: f32,
    /// Fraction of the last pixel covered (the first's when only one is touched).
    w_last: f32,
    /// Length of the footprint in source pixels.
    len: f32,
}

impl Span {
    /// The footprint [o·s, (o+1)·s) of output pixel `o`, clipped to `n` source pixels.
    #[inline]
    fn new(o: usize, s: f32, n: usize) -> Span {
        let a = o as f32 * s;
        let b = ((o + 1) as f32 * s).min(n as f32);
        let first = (a as usize).min(n - 1);
        let end = (b.ceil() as usize).clamp(first + 1, n);
        let w_first = (first as f32 + 1.0).min(b) - a;
        let w_last = if end - first > 1 { b - (end - 1) as f32 } else { w_first };
        Span { first, end, w_first, w_last, len: b - a }
    }

    /// Weight of source pixel `i` (within `first..end`).
    #[inline]
    fn weight(&self, i: usize) -> f32 {
        if i == self.first {
            self.w_first
        } else if i + 1 == self.end {
            self.w_last
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_resize_halves_by_averaging_blocks() {
        let src = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 1.0, 1.0, 3.0, 3.0, 5.0, 5.0, 7.0, 7.0f32];
        let mut out = [0.0f32; 4];
        area_resize((4, 4), (2, 2), &mut out, |x, y| src[y * 4 + x]);
        assert_eq!(out, [(0.0 + 2.0 + 8.0 + 10.0) / 4.0, (4.0 + 6.0 + 12.0 + 14.0) / 4.0, 3.0, 5.0]);
    }

    #[test]
    fn area_resize_weights_partial_pixels() {
        // 3 source columns onto 2: the middle one is split in half.
        let src = [0.0, 3.0, 6.0f32];
        let mut out = [0.0f32; 2];
        area_resize((3, 1), (2, 1), &mut out, |x, _| src[x]);
        assert!((out[0] - (0.0 + 0.5 * 3.0) / 1.5).abs() < 1e-6, "{out:?}");
        assert!((out[1] - (0.5 * 3.0 + 6.0) / 1.5).abs() < 1e-6, "{out:?}");
    }
}
