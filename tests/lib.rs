//! Shared fixtures for the end-to-end tests: the committed prototype engine and synthetic shots.

use std::path::PathBuf;

use segicl::{Engine, EngineOptions, OwnedImage, PixelFormat, Session};
use segicl_eval::synthetic::{self, Task};

/// Path of the committed prototype engine.
pub fn prototype_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/prototype.plan")
}

/// The committed prototype engine on the default backend (the native CPU executor), one thread.
pub fn prototype() -> Engine {
    Engine::open(prototype_path(), &EngineOptions::default()).expect("models/prototype.plan opens")
}

/// A synthetic sample of `task` as (image, gray8 mask).
pub fn sample(task: Task, seed: u64) -> (OwnedImage, OwnedImage) {
    let (image, mask) = synthetic::sample(task, seed);
    let mask = OwnedImage { width: image.width, height: image.height, format: PixelFormat::Gray8, data: mask };
    (image, mask)
}

/// Sets shots of `task` from `seeds` in slots 0.. of `session`.
pub fn set_shots(session: &mut Session, task: Task, seeds: &[u64]) {
    for (slot, &seed) in seeds.iter().enumerate() {
        let (image, mask) = sample(task, seed);
        session.set_shot(slot, &image.view(), &mask.view()).expect("shot accepted");
    }
}

/// Segments `frame` and returns the mask.
pub fn segment(session: &mut Session, frame: &OwnedImage) -> OwnedImage {
    let mut out = OwnedImage::zeros(frame.width, frame.height, PixelFormat::Gray8);
    let mut view = segicl::MaskMut::packed(&mut out.data, frame.width, frame.height).unwrap();
    session.segment(&frame.view(), &mut view).expect("segment");
    out
}

/// Path of the committed reference engine (the learned model of models/ref/).
pub fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/segicl-ref.plan")
}

/// The committed reference engine on the default backend (the native CPU executor), one thread.
pub fn reference() -> Engine {
    Engine::open(reference_path(), &EngineOptions::default()).expect("models/segicl-ref.plan opens")
}

/// Dice of each synthetic query `queries` of `task`, segmented with shots `shots` in a fresh
/// session of `engine`.
pub fn synthetic_dice(engine: &Engine, task: Task, shots: &[u64], queries: std::ops::Range<u64>) -> Vec<f64> {
    let mut s = engine.session().expect("session");
    set_shots(&mut s, task, shots);
    queries
        .map(|seed| {
            let (q, truth) = sample(task, seed);
            segicl::metrics::overlap(&segment(&mut s, &q).data, &truth.data).dice
        })
        .collect()
}
