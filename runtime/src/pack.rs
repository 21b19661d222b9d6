//! Packing: a manifest, two ONNX graphs, a model card and default shots → one engine file; a
//! refiner's manifest, graphs and card → one refiner file.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{write_atomically, EngineWriter, Tag};
use crate::image::{ImageView, OwnedImage, PixelFormat};
use crate::manifest::Manifest;
use crate::preprocess::{area_resize, binarise_coverage, mask_coverage};
use crate::refine::RefinerManifest;
use crate::shots::{DefaultShots, StoredShot};

/// Everything an engine file holds.
#[derive(Debug, Clone)]
pub struct EngineParts {
    /// The manifest; its `default_shot_tasks` is filled from `shots` by [`EngineParts::to_bytes`].
    pub manifest: Manifest,
    /// Encoder ONNX bytes.
    pub encoder: Vec<u8>,
    /// Decoder ONNX bytes.
    pub decoder: Vec<u8>,
    /// Model card (Markdown).
    pub card: Option<String>,
    /// Default shots per task.
    pub shots: DefaultShots,
    /// Calibrated activation ranges of an int8 engine (CALIB section, JSON).
    pub calib: Option<Vec<u8>>,
}

impl EngineParts {
    /// Checks the manifest and lays out the engine file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut manifest = self.manifest.clone();
        manifest.default_shot_tasks = self.shots.names().map(str::to_string).collect();
        manifest.validate()?;
        let mut w = EngineWriter::new()
            .section(Tag::MANIFEST, manifest.to_json())
            .section(Tag::ENCODER, self.encoder.clone())
            .section(Tag::DECODER, self.decoder.clone());
        if let Some(card) = &self.card {
            w = w.section(Tag::CARD, card.as_bytes().to_vec());
        }
        if !self.shots.tasks.is_empty() {
            w = w.section(Tag::SHOTS, self.shots.to_bytes());
        }
        if let Some(calib) = &self.calib {
            w = w.section(Tag::CALIB, calib.clone());
        }
        Ok(w.to_bytes())
    }

    /// Checks the manifest and writes the engine file to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_bytes()?)
    }
}

/// Everything a refiner file holds (see [`crate::refine`]).
#[derive(Debug, Clone)]
pub struct RefinerParts {
    /// The refiner's manifest.
    pub manifest: RefinerManifest,
    /// Image encoder ONNX bytes.
    pub encoder: Vec<u8>,
    /// Prompt and mask decoder ONNX bytes.
    pub decoder: Vec<u8>,
    /// Model card (Markdown).
    pub card: Option<String>,
}

impl RefinerParts {
    /// Checks the manifest and lays out the refiner file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.manifest.validate()?;
        let mut w = EngineWriter::new()
            .section(Tag::MANIFEST, self.manifest.to_json())
            .section(Tag::ENCODER, self.encoder.clone())
            .section(Tag::DECODER, self.decoder.clone());
        if let Some(card) = &self.card {
            w = w.section(Tag::CARD, card.as_bytes().to_vec());
        }
        Ok(w.to_bytes())
    }
}

/// A shot resized to `r`×`r` for storage: the image as gray8 or rgb8, the mask as 0/255
/// (a pixel is foreground when at least half of its footprint is).
pub fn stored_shot(image: &ImageView, mask: &ImageView, r: usize) -> Result<StoredShot> {
    if (mask.width(), mask.height()) != (image.width(), image.height()) || mask.format() != PixelFormat::Gray8 {
        return Err(Error::invalid(format!(
            "mask ({}×{} {}) must be gray8 and the size of its image ({}×{})",
            mask.width(),
            mask.height(),
            mask.format().name(),
            image.width(),
            image.height()
        )));
    }
    let format = if image.format() == PixelFormat::Gray8 || image.format() == PixelFormat::Gray16 {
        PixelFormat::Gray8
    } else {
        PixelFormat::Rgb8
    };
    let channels = format.bytes_per_pixel();
    let mut plane = vec![0.0f32; r * r];
    let mut out = OwnedImage::zeros(r, r, format);
    for c in 0..channels {
        area_resize((image.width(), image.height()), (r, r), &mut plane, |x, y| image.rgb(x, y)[c]);
        for (i, v) in plane.iter().enumerate() {
            out.data[i * channels + c] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    mask_coverage(mask, (r, r), &mut plane);
    binarise_coverage(&mut plane);
    let mut m = OwnedImage::zeros(r, r, PixelFormat::Gray8);
    for (d, v) in m.data.iter_mut().zip(&plane) {
        *d = if *v > 0.0 { 255 } else { 0 };
    }
    if m.data.iter().all(|&v| v == 0) {
        return Err(Error::invalid("mask is empty: a shot needs at least one foreground pixel (value ≥ 128)"));
    }
    Ok(StoredShot { image: out, mask: m })
}
