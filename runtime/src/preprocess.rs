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
    for (c, dst) in out.chunks_exact_mut(plane).enumerate() {
        match (frame.format(), colour) {
            (PixelFormat::Gray8, _) => resample_bytes::<1>(frame, size, dst, [1.0]),
            (PixelFormat::Gray16, _) => {
                resample::<2>(frame, size, dst, |p| u16::from_ne_bytes([p[0], p[1]]) as f32 * (1.0 / 65535.0))
            }
            (format, rule) => {
                let mut weights = [0.0; 4];
                match rule {
                    ColourRule::Luma => [weights[r], weights[g], weights[b]] = LUMA,
                    ColourRule::Green => weights[g] = 1.0,
                    ColourRule::Rgb => weights[[r, g, b][c]] = 1.0,
                }
                match format {
                    PixelFormat::Rgba8 => resample_bytes::<4>(frame, size, dst, weights),
                    _ => resample_bytes::<3>(frame, size, dst, [weights[0], weights[1], weights[2]]),
                }
            }
        }
    }
}

/// Luma's weights of red, green and blue (ITU-R BT.601).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Area-resizes one channel of `frame`, whose pixels are `N` bytes, into `dst` of `size`;
/// `px(bytes)` reads the channel from a pixel's bytes.
#[inline]
fn resample<const N: usize>(frame: &ImageView, size: (usize, usize), dst: &mut [f32], px: impl Fn(&[u8]) -> f32) {
    debug_assert_eq!(frame.format().bytes_per_pixel(), N);
    let pixels = Pixels::<N, _> { bytes: frame.bytes(), stride: frame.stride(), width: frame.width(), px };
    area_resize_rows((frame.width(), frame.height()), size, dst, &pixels);
}

/// [`resample`] of the channel `Σ weights[k] · byte k / 255` of a frame of `N`-byte pixels, the
/// bytes of each span summed as integers.
#[inline]
fn resample_bytes<const N: usize>(frame: &ImageView, size: (usize, usize), dst: &mut [f32], weights: [f32; N]) {
    debug_assert_eq!(frame.format().bytes_per_pixel(), N);
    let bytes = Bytes::<N> { bytes: frame.bytes(), stride: frame.stride(), width: frame.width(), weights };
    area_resize_rows((frame.width(), frame.height()), size, dst, &bytes);
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
    resample::<1>(mask, size, out, |p| if p[0] >= 128 { 1.0 } else { 0.0 });
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
    size: (usize, usize),
    out_size: (usize, usize),
    out: &mut [f32],
    sample: impl Fn(usize, usize) -> f32,
) {
    area_resize_rows(size, out_size, out, &Samples(sample));
}

/// What [`area_resize_rows`] reads: samples, and spans of a row's samples added one by one in
/// column order (so every way of reading gives the same sums, bit for bit).
trait Source {
    /// The sample at column `x` of row `y`.
    fn sample(&self, x: usize, y: usize) -> f32;

    /// `acc` plus the samples of row `y` at columns `xs`, added in order.
    fn add_span(&self, y: usize, xs: std::ops::Range<usize>, acc: f32) -> f32 {
        xs.fold(acc, |acc, x| acc + self.sample(x, y))
    }

    /// [`Source::add_span`] for rows `y..y + K` at once, one sum per row.
    fn add_spans<const K: usize>(&self, y: usize, xs: std::ops::Range<usize>, acc: [f32; K]) -> [f32; K] {
        std::array::from_fn(|j| self.add_span(y + j, xs.clone(), acc[j]))
    }
}

/// A source read through a closure of (column, row).
struct Samples<F>(F);

impl<F: Fn(usize, usize) -> f32> Source for Samples<F> {
    fn sample(&self, x: usize, y: usize) -> f32 {
        (self.0)(x, y)
    }
}

/// One channel of an image whose pixels are `N` bytes, rows `stride` bytes apart; `px` reads
/// the channel from a pixel's bytes. Spans are plain passes over row slices, and [`ROWS`] rows
/// are summed in one pass: independent chains of additions (vectorised across the rows) instead
/// of one, since a single chain waits on each addition's latency.
struct Pixels<'a, const N: usize, P> {
    bytes: &'a [u8],
    stride: usize,
    width: usize,
    px: P,
}

impl<const N: usize, P: Fn(&[u8]) -> f32> Pixels<'_, N, P> {
    /// Columns `xs` of row `y`, as bytes.
    #[inline]
    fn span(&self, y: usize, xs: std::ops::Range<usize>) -> &[u8] {
        debug_assert!(xs.end <= self.width);
        &self.bytes[y * self.stride + xs.start * N..y * self.stride + xs.end * N]
    }
}

impl<const N: usize, P: Fn(&[u8]) -> f32> Source for Pixels<'_, N, P> {
    #[inline]
    fn sample(&self, x: usize, y: usize) -> f32 {
        (self.px)(self.span(y, x..x + 1))
    }

    #[inline]
    fn add_span(&self, y: usize, xs: std::ops::Range<usize>, acc: f32) -> f32 {
        self.span(y, xs).chunks_exact(N).fold(acc, |acc, p| acc + (self.px)(p))
    }

    #[inline]
    fn add_spans<const K: usize>(&self, y: usize, xs: std::ops::Range<usize>, acc: [f32; K]) -> [f32; K] {
        let rows: [&[u8]; K] = std::array::from_fn(|j| self.span(y + j, xs.clone()));
        let mut acc = acc;
        for i in (0..rows[0].len()).step_by(N) {
            for (a, row) in acc.iter_mut().zip(rows) {
                *a += (self.px)(&row[i..i + N]);
            }
        }
        acc
    }
}

/// A channel that is a weighted sum of the bytes of pixels of `N` bytes, rows `stride` bytes
/// apart: `Σ weights[k] · byte k / 255`. A span's bytes are summed as integers, exactly and in
/// any order (the compiler vectorises it), and weighted once.
struct Bytes<'a, const N: usize> {
    bytes: &'a [u8],
    stride: usize,
    width: usize,
    weights: [f32; N],
}

impl<const N: usize> Bytes<'_, N> {
    /// The channel's value for the byte sums `sums` of some pixels.
    #[inline]
    fn value(&self, sums: [u32; N]) -> f32 {
        const S: f32 = 1.0 / 255.0;
        sums.iter().zip(&self.weights).map(|(&n, &w)| n as f32 * w).sum::<f32>() * S
    }
}

impl<const N: usize> Source for Bytes<'_, N> {
    #[inline]
    fn sample(&self, x: usize, y: usize) -> f32 {
        debug_assert!(x < self.width);
        let p = &self.bytes[y * self.stride + x * N..][..N];
        self.value(std::array::from_fn(|k| u32::from(p[k])))
    }

    #[inline]
    fn add_span(&self, y: usize, xs: std::ops::Range<usize>, acc: f32) -> f32 {
        debug_assert!(xs.end <= self.width);
        let span = &self.bytes[y * self.stride + xs.start * N..y * self.stride + xs.end * N];
        // 2^24 pixels of 255 at most per u32 sum.
        span.chunks(N << 24).fold(acc, |acc, chunk| {
            let mut sums = [0u32; N];
            for p in chunk.chunks_exact(N) {
                for (sum, &b) in sums.iter_mut().zip(p) {
                    *sum += u32::from(b);
                }
            }
            acc + self.value(sums)
        })
    }
}

/// Rows of a footprint summed in one pass (see [`Pixels`]).
const ROWS: usize = 8;

/// [`area_resize`] from any [`Source`].
#[inline]
fn area_resize_rows(
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    out: &mut [f32],
    source: &impl Source,
) {
    debug_assert_eq!(out.len(), out_width * out_height);
    let sx = width as f32 / out_width as f32;
    let sy = height as f32 / out_height as f32;
    // The sum over one row of an output pixel's footprint, from `start` (its first sample).
    let finish = |xs: &Span, y: usize, sum: f32| {
        if xs.end - xs.first > 1 {
            sum + source.sample(xs.end - 1, y) * xs.w_last
        } else {
            sum
        }
    };
    for oy in 0..out_height {
        let ys = Span::new(oy, sy, height);
        for ox in 0..out_width {
            let xs = Span::new(ox, sx, width);
            let middle = xs.first + 1..(xs.end - 1).max(xs.first + 1);
            let start = |y: usize| source.sample(xs.first, y) * xs.w_first;
            let mut acc = 0.0f32;
            let mut y = ys.first;
            while y + ROWS <= ys.end {
                let sums = source.add_spans::<ROWS>(y, middle.clone(), std::array::from_fn(|j| start(y + j)));
                for (j, sum) in sums.into_iter().enumerate() {
                    acc += ys.weight(y + j) * finish(&xs, y + j, sum);
                }
                y += ROWS;
            }
            for y in y..ys.end {
                acc += ys.weight(y) * finish(&xs, y, source.add_span(y, middle.clone(), start(y)));
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
    use rand::{Rng, SeedableRng};

    /// The area average of `sample` over each output pixel's footprint, in f64.
    fn exact_area_resize(
        (w, h): (usize, usize),
        (ow, oh): (usize, usize),
        sample: impl Fn(usize, usize) -> f64,
    ) -> Vec<f64> {
        let (sx, sy) = (w as f32 / ow as f32, h as f32 / oh as f32);
        let mut out = vec![0.0; ow * oh];
        for oy in 0..oh {
            let ys = Span::new(oy, sy, h);
            for ox in 0..ow {
                let xs = Span::new(ox, sx, w);
                let mut acc = 0.0;
                for y in ys.first..ys.end {
                    for x in xs.first..xs.end {
                        acc += f64::from(ys.weight(y)) * f64::from(xs.weight(x)) * sample(x, y);
                    }
                }
                out[oy * ow + ox] = acc / (f64::from(xs.len) * f64::from(ys.len));
            }
        }
        out
    }

    #[test]
    fn frame_planes_are_the_area_averages_of_each_channel() {
        // Every pixel format and colour rule, footprints from under one pixel to 20 rows tall,
        // against the area average computed sample by sample in f64.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let formats =
            [PixelFormat::Gray8, PixelFormat::Gray16, PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Rgba8];
        for case in 0..60 {
            let format = formats[case % formats.len()];
            let (w, h) = (rng.random_range(1..400), rng.random_range(1..400));
            let out = (rng.random_range(1..40), rng.random_range(1..40));
            let bpp = format.bytes_per_pixel();
            let stride = w * bpp + rng.random_range(0..5);
            let data: Vec<u8> = (0..stride * h).map(|_| rng.random()).collect();
            let frame = ImageView::new(&data, w, h, stride, format).unwrap();
            for colour in [ColourRule::Luma, ColourRule::Green, ColourRule::Rgb] {
                let mut got = vec![0.0f32; colour.channels() * out.0 * out.1];
                frame_planes(&frame, colour, out, &mut got);
                for (c, plane) in got.chunks_exact(out.0 * out.1).enumerate() {
                    let want = exact_area_resize((w, h), out, |x, y| {
                        let p = &data[y * stride + x * bpp..][..bpp];
                        match format {
                            PixelFormat::Gray8 => return f64::from(p[0]) / 255.0,
                            PixelFormat::Gray16 => return f64::from(u16::from_ne_bytes([p[0], p[1]])) / 65535.0,
                            _ => {}
                        }
                        let (r, g, b) =
                            if format == PixelFormat::Bgr8 { (p[2], p[1], p[0]) } else { (p[0], p[1], p[2]) };
                        let [r, g, b] = [r, g, b].map(|v| f64::from(v) / 255.0);
                        match colour {
                            ColourRule::Luma => 0.299 * r + 0.587 * g + 0.114 * b,
                            ColourRule::Green => g,
                            ColourRule::Rgb => [r, g, b][c],
                        }
                    });
                    let worst = plane.iter().zip(&want).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
                    assert!(
                        worst <= 2e-6,
                        "case {case}: {format:?} {w}×{h} → {out:?}, {colour:?} plane {c}: {worst:e}"
                    );
                }
            }
        }
    }

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
