//! Image files on disk: loading frames and masks, and folders of `images/` + `masks/` pairs.

use std::path::{Path, PathBuf};

use image::ImageEncoder;

use segicl::error::{Error, Result};
use segicl::image::{OwnedImage, PixelFormat};

/// An image file and its mask file, paired by file stem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// File stem shared by both.
    pub stem: String,
    /// Path of the image.
    pub image: PathBuf,
    /// Path of the mask.
    pub mask: PathBuf,
}

/// Lists `dir/images/*` and `dir/masks/*` and pairs them by stem, sorted by stem.
pub fn pairs(dir: &Path) -> Result<Vec<Pair>> {
    let list = |sub: &str| -> Result<Vec<(String, PathBuf)>> {
        let d = dir.join(sub);
        let entries = std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&d, e))?.path();
            if path.is_file() {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    out.push((stem.to_string(), path.clone()));
                }
            }
        }
        out.sort();
        Ok(out)
    };
    let masks = list("masks")?;
    let pairs: Vec<Pair> = list("images")?
        .into_iter()
        .filter_map(|(stem, image)| {
            let mask = masks.iter().find(|(s, _)| *s == stem)?.1.clone();
            Some(Pair { stem, image, mask })
        })
        .collect();
    if pairs.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no image/mask pairs (expected images/NAME.* and masks/NAME.* with the same stem)",
            dir.display()
        )));
    }
    Ok(pairs)
}

/// Decodes an image file as gray8, gray16 or rgb8 (alpha dropped).
pub fn load_image(path: &Path) -> Result<OwnedImage> {
    let img = decode(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(match img {
        image::DynamicImage::ImageLuma8(b) => {
            OwnedImage { width: w, height: h, format: PixelFormat::Gray8, data: b.into_raw() }
        }
        image::DynamicImage::ImageLuma16(b) => OwnedImage {
            width: w,
            height: h,
            format: PixelFormat::Gray16,
            data: b.into_raw().iter().flat_map(|v| v.to_ne_bytes()).collect(),
        },
        other => OwnedImage { width: w, height: h, format: PixelFormat::Rgb8, data: other.into_rgb8().into_raw() },
    })
}

/// Decodes a mask file as gray8 (any format; ≥ 128 in luma is foreground).
pub fn load_mask(path: &Path) -> Result<OwnedImage> {
    let img = decode(path)?.into_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(OwnedImage { width: w, height: h, format: PixelFormat::Gray8, data: img.into_raw() })
}

fn decode(path: &Path) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    reader.decode().map_err(|e| Error::invalid(format!("{}: cannot decode image: {e}", path.display())))
}

/// Saves an 8-bit image (gray8 or rgb8) as PNG, written to a temporary file beside `path` and
/// renamed over it, so a failure (a full disk) never leaves a truncated file under its name.
pub fn save_png(path: &Path, img: &OwnedImage) -> Result<()> {
    let color = match img.format {
        PixelFormat::Gray8 => image::ExtendedColorType::L8,
        PixelFormat::Rgb8 => image::ExtendedColorType::Rgb8,
        other => return Err(Error::invalid(format!("cannot save {} as PNG here", other.name()))),
    };
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&img.data, img.width as u32, img.height as u32, color)
        .map_err(|e| Error::invalid(format!("{}: cannot encode PNG: {e}", path.display())))?;
    segicl::format::write_atomically(path, &png)
}
