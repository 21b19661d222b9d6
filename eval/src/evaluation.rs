//! Labelled samples (an image with its reference mask) and scoring a session on them: what
//! `eval`, `demo`, `bench` and `segicl-quantize`'s report share.

use std::path::Path;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::{load_image, load_mask, pairs, save_png};
use crate::synthetic::{self, Task};
use segicl::error::{Error, Result};
use segicl::image::{MaskMut, OwnedImage, PixelFormat};
use segicl::metrics::{overlap, Overlap};
use segicl::session::Session;

/// An image with its reference mask (gray8, same size).
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The image.
    pub image: OwnedImage,
    /// Its mask.
    pub mask: OwnedImage,
}

/// Synthetic samples of `task`, seeds `first..first + n`.
pub fn synthetic_samples(task: Task, first: u64, n: usize) -> Vec<Labelled> {
    (first..first + n as u64)
        .map(|seed| {
            let (image, mask) = synthetic::sample(task, seed);
            let mask = OwnedImage { width: image.width, height: image.height, format: PixelFormat::Gray8, data: mask };
            Labelled { image, mask }
        })
        .collect()
}

/// Writes synthetic samples of `task`, `seeds`, as `dir/images/SEED.png` and `dir/masks/SEED.png`
/// (the folder layout `eval` and `segicl-quantize --calib` read).
pub fn write_synthetic(dir: &Path, task: Task, seeds: std::ops::Range<u64>) -> Result<()> {
    for sub in ["images", "masks"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    for (seed, s) in seeds.clone().zip(synthetic_samples(task, seeds.start, seeds.count())) {
        save_png(&dir.join(format!("images/{seed}.png")), &s.image)?;
        save_png(&dir.join(format!("masks/{seed}.png")), &s.mask)?;
    }
    Ok(())
}

/// The image/mask pairs of `dir` (`images/` + `masks/`, paired by stem), or a seeded random
/// subset of `limit` of them; a mask whose size differs from its image's is an error.
pub fn load_labelled(dir: &Path, limit: Option<usize>, seed: u64) -> Result<Vec<Labelled>> {
    let mut all = pairs(dir)?;
    if let Some(n) = limit.filter(|&n| n < all.len()) {
        let keep = sample(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed), all.len(), n).into_vec();
        all = keep.into_iter().map(|i| all[i].clone()).collect();
    }
    all.iter()
        .map(|p| {
            let image = load_image(&p.image)?;
            let mask = load_mask(&p.mask)?;
            if (image.width, image.height) != (mask.width, mask.height) {
                return Err(Error::invalid(format!(
                    "{}: mask is {}×{} but the image is {}×{}",
                    p.mask.display(),
                    mask.width,
                    mask.height,
                    image.width,
                    image.height
                )));
            }
            Ok(Labelled { image, mask })
        })
        .collect()
}

/// Segments `query` with the session's context and scores it against its mask; returns the
/// predicted mask too.
pub fn score(session: &mut Session, query: &Labelled) -> Result<(Overlap, OwnedImage)> {
    let (w, h) = (query.image.width, query.image.height);
    let mut pred = OwnedImage::zeros(w, h, PixelFormat::Gray8);
    session.segment(&query.image.view(), &mut MaskMut::packed(&mut pred.data, w, h)?)?;
    Ok((overlap(&pred.data, &query.mask.data), pred))
}

/// Replaces the session's context with the shots `chosen` of `data` (slots 0.., the rest cleared).
pub fn set_shots(session: &mut Session, data: &[Labelled], chosen: &[usize]) -> Result<()> {
    for slot in 0..segicl::manifest::MAX_SHOTS {
        session.clear_shot(slot)?;
    }
    for (slot, &i) in chosen.iter().enumerate() {
        session.set_shot(slot, &data[i].image.view(), &data[i].mask.view())?;
    }
    Ok(())
}
