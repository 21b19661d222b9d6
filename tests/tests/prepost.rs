//! Pre- and post-processing against hand-computed values, for every pixel format and odd strides.

use segicl::image::{ImageView, MaskMut, PixelFormat};
use segicl::manifest::{ColourRule, Normalisation};
use segicl::postprocess::logits_to_mask;
use segicl::preprocess::Preprocessor;

/// 4×2 test picture as RGB triples, row by row.
const RGB: [[u8; 3]; 8] =
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30], [30, 20, 10], [0, 0, 0], [100, 200, 50]];

/// Bytes of the picture in `format`, each row padded by 3 garbage bytes; returns (bytes, stride).
fn encode(format: PixelFormat) -> (Vec<u8>, usize) {
    let stride = 4 * format.bytes_per_pixel() + 3;
    let mut out = vec![0xAB; stride * 2];
    for (i, [r, g, b]) in RGB.iter().copied().enumerate() {
        let at = (i / 4) * stride + (i % 4) * format.bytes_per_pixel();
        let px: Vec<u8> = match format {
            PixelFormat::Gray8 => vec![r],
            PixelFormat::Gray16 => (r as u16 * 257).to_ne_bytes().to_vec(),
            PixelFormat::Rgb8 => vec![r, g, b],
            PixelFormat::Bgr8 => vec![b, g, r],
            PixelFormat::Rgba8 => vec![r, g, b, 0x5A],
        };
        out[at..at + px.len()].copy_from_slice(&px);
    }
    (out, stride)
}

/// Raw values (no normalisation): mean 0, std 1 per channel.
fn raw(channels: usize) -> Normalisation {
    Normalisation::MeanStd { mean: vec![0.0; channels], std: vec![1.0; channels] }
}

/// Expected 2×2 plane: the 4×2 picture → 2×2 averages horizontal pairs, one source row per output row.
fn expected(value: impl Fn([u8; 3]) -> f32) -> Vec<f32> {
    (0..4).map(|o| (value(RGB[(o / 2) * 4 + (o % 2) * 2]) + value(RGB[(o / 2) * 4 + (o % 2) * 2 + 1])) / 2.0).collect()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{what}: got {a:?}, expected {b:?}");
    }
}

fn luma([r, g, b]: [u8; 3]) -> f32 {
    (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32) / 255.0
}

#[test]
fn colour_formats_and_strides() {
    let gray = |p: [u8; 3]| p[0] as f32 / 255.0;
    for format in [PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Rgba8] {
        let (bytes, stride) = encode(format);
        let view = ImageView::new(&bytes, 4, 2, stride, format).unwrap();
        let mut out = vec![0.0; 4];
        Preprocessor::new(2, ColourRule::Luma, raw(1)).image(&view, &mut out);
        close(&out, &expected(luma), format.name());
        Preprocessor::new(2, ColourRule::Green, raw(1)).image(&view, &mut out);
        close(&out, &expected(|p| p[1] as f32 / 255.0), format.name());
        let mut planes = vec![0.0; 12];
        Preprocessor::new(2, ColourRule::Rgb, raw(3)).image(&view, &mut planes);
        for c in 0..3 {
            close(&planes[c * 4..(c + 1) * 4], &expected(|p| p[c] as f32 / 255.0), format.name());
        }
    }
    for format in [PixelFormat::Gray8, PixelFormat::Gray16] {
        let (bytes, stride) = encode(format);
        let view = ImageView::new(&bytes, 4, 2, stride, format).unwrap();
        let mut out = vec![0.0; 4];
        Preprocessor::new(2, ColourRule::Luma, raw(1)).image(&view, &mut out);
        close(&out, &expected(gray), format.name());
        let mut planes = vec![0.0; 12];
        Preprocessor::new(2, ColourRule::Rgb, raw(3)).image(&view, &mut planes);
        close(&planes[8..], &expected(gray), "gray repeats in every channel");
    }
}

#[test]
fn normalisations() {
    let (bytes, stride) = encode(PixelFormat::Gray8);
    let view = ImageView::new(&bytes, 4, 2, stride, PixelFormat::Gray8).unwrap();
    // Gray8 values averaged in pairs: (255+0)/2, (0+255)/2, (10+30)/2, (0+100)/2, over 255.
    let v = [127.5f32, 127.5, 20.0, 50.0].map(|x| x / 255.0);
    let mut out = vec![0.0; 4];
    Preprocessor::new(2, ColourRule::Luma, Normalisation::MinMax).image(&view, &mut out);
    close(&out, &v.map(|x| (x - v[2]) / (v[0] - v[2])), "min-max");
    Preprocessor::new(2, ColourRule::Luma, Normalisation::MeanStd { mean: vec![0.25], std: vec![0.5] })
        .image(&view, &mut out);
    close(&out, &v.map(|x| (x - 0.25) / 0.5), "mean/std");
    let flat = [9u8; 16];
    let view = ImageView::packed(&flat, 4, 4, PixelFormat::Gray8).unwrap();
    Preprocessor::new(2, ColourRule::Luma, Normalisation::MinMax).image(&view, &mut out);
    close(&out, &[0.0; 4], "a flat image becomes zeros");
}

#[test]
fn upsampling_a_small_frame() {
    // 1×1 source → 2×2: every output pixel is inside the single source pixel.
    let px = [51u8];
    let view = ImageView::packed(&px, 1, 1, PixelFormat::Gray8).unwrap();
    let mut out = vec![0.0; 4];
    Preprocessor::new(2, ColourRule::Luma, raw(1)).image(&view, &mut out);
    close(&out, &[0.2; 4], "1×1 → 2×2");
}

#[test]
fn mask_binarisation() {
    let image = [0u8; 8];
    let image = ImageView::packed(&image, 4, 2, PixelFormat::Gray8).unwrap();
    // Pairs → coverage 0.5 (kept), 0 (dropped), 1, 0.5; 127 is background, 128 foreground.
    let mask = [255u8, 0, 127, 0, 128, 200, 0, 130];
    let view = ImageView::packed(&mask, 4, 2, PixelFormat::Gray8).unwrap();
    let mut out = vec![9.0; 4];
    let pre = Preprocessor::new(2, ColourRule::Luma, Normalisation::MinMax);
    pre.mask(&view, &image, &mut out).unwrap();
    assert_eq!(out, [1.0, 0.0, 1.0, 1.0]);
    // A structure too small to half-cover any grid pixel keeps the pixels it touches.
    let big = [0u8; 64];
    let big_image = ImageView::packed(&big, 8, 8, PixelFormat::Gray8).unwrap();
    let mut tiny = [0u8; 64];
    tiny[8 * 5 + 6] = 255;
    let view = ImageView::packed(&tiny, 8, 8, PixelFormat::Gray8).unwrap();
    pre.mask(&view, &big_image, &mut out).unwrap();
    assert_eq!(out, [0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn logits_to_a_strided_mask() {
    // 2×2 logits → 4×4 mask; centres at −0.25, 0.25, 0.75, 1.25 source pixels, clamped.
    let logits = [-1.0, 1.0, 3.0, -3.0f32];
    let stride = 4 + 3;
    let mut buf = vec![0xCD; stride * 4];
    let mut mask = MaskMut::new(&mut buf, 4, 4, stride).unwrap();
    logits_to_mask(&logits, 2, 0.0, &mut mask);
    let rows: Vec<&[u8]> = buf.chunks(stride).collect();
    assert_eq!(rows[0], [0, 0, 255, 255, 0xCD, 0xCD, 0xCD]); // −1, −0.5, 0.5, 1
    assert_eq!(rows[1], [0, 0, 0, 0, 0xCD, 0xCD, 0xCD]); // all exactly 0: not above the cut
    assert_eq!(rows[2], [255, 255, 0, 0, 0xCD, 0xCD, 0xCD]); // 2, 1, −1, −2
    assert_eq!(rows[3], [255, 255, 0, 0, 0xCD, 0xCD, 0xCD]); // 3, 1.5, −1.5, −3
}
