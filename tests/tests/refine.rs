//! The refinement pass end to end: the stand-in refiner (its mask is the box) makes the box rule
//! and the gate observable; the committed LiteMedSAM refiner opens and refines real shots and
//! synthetic frames above Dice floors; damaged and mismatched refiner files are refused.

use std::path::{Path, PathBuf};

use segicl::format::{EngineWriter, Layout, Tag};
use segicl::metrics::overlap;
use segicl::refine::{RefinerManifest, RefinerMetadata};
use segicl::{BoxRule, Engine, EngineOptions, Error, OwnedImage, PixelFormat, RefineOptions, Refiner};
use segicl_eval::synthetic::Task;
use segicl_tests::{prototype, prototype_path, reference, sample, segment, set_shots};

/// Path of the committed refiner.
fn litemedsam_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/litemedsam-int8.refiner")
}

/// The stand-in refiner written to `dir`.
fn stand_in(dir: &Path) -> Refiner {
    let path = dir.join("box-fill.refiner");
    std::fs::write(&path, segicl_models::box_refiner::file().unwrap()).unwrap();
    Refiner::open(&path, &EngineOptions::default()).unwrap()
}

/// Bounding box (x0, y0, x1, y1), inclusive, of the foreground of a packed gray8 mask.
fn bounds(mask: &OwnedImage) -> Option<(usize, usize, usize, usize)> {
    let w = mask.width;
    let mut b: Option<(usize, usize, usize, usize)> = None;
    for (i, _) in mask.data.iter().enumerate().filter(|(_, &v)| v >= 128) {
        let (x, y) = (i % w, i / w);
        b = Some(b.map_or((x, y, x, y), |(x0, y0, x1, y1)| (x0.min(x), y0.min(y), x1.max(x), y1.max(y))));
    }
    b
}

/// Whether `mask` is the rectangle `(x0, y0, x1, y1)` up to `slack` pixels at its edges.
fn is_rectangle(mask: &OwnedImage, (x0, y0, x1, y1): (usize, usize, usize, usize), slack: usize) -> bool {
    (0..mask.height).all(|y| {
        (0..mask.width).all(|x| {
            let fg = mask.data[y * mask.width + x] >= 128;
            let inner = x >= x0 + slack && x + slack <= x1 && y >= y0 + slack && y + slack <= y1;
            let outer = x + slack < x0 || x > x1 + slack || y + slack < y0 || y > y1 + slack;
            (!inner || fg) && (!outer || !fg)
        })
    })
}

#[test]
fn without_the_gate_the_box_of_all_blobs_is_filled() {
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in(dir.path());
    let engine = prototype();
    let (mut plain, mut refined) = (engine.session().unwrap(), engine.session().unwrap());
    let options = RefineOptions { rule: BoxRule::AllBlobs, margin: Some(0.0), gate: false, ..Default::default() };
    refined.set_refiner(Some((&refiner, options))).unwrap();
    for s in [&mut plain, &mut refined] {
        set_shots(s, Task::UsLesion, &[1]);
    }
    let report = refined.tune_refiner().unwrap().unwrap().clone();
    assert_eq!((report.shots, report.chosen.map(|c| c.rule)), (0, Some(BoxRule::AllBlobs)), "{report:?}");
    let (frame, _) = sample(Task::UsLesion, 300);
    let first = segment(&mut plain, &frame);
    let b = bounds(&first).expect("pass 1 finds the lesion");
    let out = segment(&mut refined, &frame);
    // The stand-in's grid is 64 cells over the longer side: edges move by at most one cell.
    let cell = frame.width.max(frame.height).div_ceil(64);
    assert!(is_rectangle(&out, b, cell), "refined mask is not the box {b:?} of pass 1");
    let pb = refined.last_refine_box().unwrap();
    assert_eq!((pb.x0, pb.y0, pb.x1, pb.y1), (b.0 as f32, b.1 as f32, b.2 as f32, b.3 as f32));
    // A margin of 0.5 grows the box by half its size on each side (clipped to the frame).
    refined.set_refiner(Some((&refiner, RefineOptions { margin: Some(0.5), ..options }))).unwrap();
    segment(&mut refined, &frame);
    let grown = refined.last_refine_box().unwrap();
    let half = (b.2 - b.0 + 1) as f32 / 2.0;
    assert_eq!(grown.x0, (b.0 as f32 - half).max(0.0));
    assert_eq!(grown.x1, (b.2 as f32 + half).min(frame.width as f32 - 1.0));
}

/// A gray8 frame with a bright shape (value 220 where `inside(x, y)`) on a dark, lightly
/// textured background, and its mask.
fn shape(w: usize, h: usize, seed: usize, inside: impl Fn(f32, f32) -> bool) -> (OwnedImage, OwnedImage) {
    let mut image = OwnedImage::zeros(w, h, PixelFormat::Gray8);
    let mut mask = OwnedImage::zeros(w, h, PixelFormat::Gray8);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let fg = inside(x as f32, y as f32);
            image.data[i] = if fg { 220 } else { 30 + ((x * 7 + y * 13 + seed * 31) % 17) as u8 };
            mask.data[i] = if fg { 255 } else { 0 };
        }
    }
    (image, mask)
}

/// Sets shots 0, 1, 2 of `session` from `make(0..3)`.
fn set_generated(session: &mut segicl::Session, make: impl Fn(usize) -> (OwnedImage, OwnedImage)) {
    for seed in 0..3 {
        let (image, mask) = make(seed);
        session.set_shot(seed, &image.view(), &mask.view()).unwrap();
    }
}

/// A ring centred at (cx, cy): refining it into its box fills the hole.
fn ring(seed: usize) -> (OwnedImage, OwnedImage) {
    let (cx, cy) = (70.0 + 10.0 * seed as f32, 60.0 + 5.0 * seed as f32);
    shape(160, 128, seed, move |x, y| {
        let r = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
        (18.0..30.0).contains(&r)
    })
}

#[test]
fn the_gate_switches_refinement_off_when_the_shots_say_it_hurts() {
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in(dir.path());
    let engine = prototype();
    let mut session = engine.session().unwrap();
    session.set_refiner(Some((&refiner, RefineOptions::default()))).unwrap();
    set_generated(&mut session, ring);
    let report = session.tune_refiner().unwrap().unwrap().clone();
    assert_eq!(report.shots, 3);
    assert!(report.pass1 > 0.5, "pass 1 should find the rings: {report:?}");
    assert_eq!(report.chosen, None, "filling a ring's box must lose to pass 1: {report:?}");
    assert!(report.candidates.iter().all(|(_, d)| *d <= report.pass1), "{report:?}");
    // With refinement off for these shots, a frame comes out exactly as pass 1 made it.
    let mut plain = engine.session().unwrap();
    set_generated(&mut plain, ring);
    let (frame, _) = ring(4);
    assert_eq!(segment(&mut session, &frame), segment(&mut plain, &frame));
    assert_eq!(session.last_refine_box(), None);
    // Without the gate the box is filled regardless.
    session.set_refiner(Some((&refiner, RefineOptions { gate: false, ..Default::default() }))).unwrap();
    assert_ne!(segment(&mut session, &frame), segment(&mut plain, &frame));
}

#[test]
fn with_one_shot_the_gate_scores_the_shot_from_itself() {
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in(dir.path());
    let mut session = prototype().session().unwrap();
    session.set_refiner(Some((&refiner, RefineOptions::default()))).unwrap();
    let (image, mask) = ring(0);
    session.set_shot(0, &image.view(), &mask.view()).unwrap();
    let report = session.tune_refiner().unwrap().unwrap().clone();
    assert_eq!(report.shots, 1);
    assert_eq!(report.chosen, None, "filling the ring's box loses on the shot itself: {report:?}");
}

#[test]
fn each_blob_refines_every_object_and_keeps_the_rest_of_pass_1() {
    // Two bright squares drawn as outlines: with a box per blob, both are filled.
    let two = |seed: usize| {
        let square =
            |x: f32, y: f32, x0: f32, y0: f32, side: f32| (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
        let outline = move |x, y, x0, y0| square(x, y, x0, y0, 30.0) && !square(x, y, x0 + 4.0, y0 + 4.0, 22.0);
        let (a, b) = (10.0 + 3.0 * seed as f32, 90.0 - 2.0 * seed as f32);
        let (image, _) = shape(160, 128, seed, move |x, y| outline(x, y, a, 20.0) || outline(x, y, b, 60.0));
        let (_, mask) = shape(160, 128, seed, move |x, y| square(x, y, a, 20.0, 30.0) || square(x, y, b, 60.0, 30.0));
        (image, mask)
    };
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in(dir.path());
    let engine = prototype();
    let each = RefineOptions { rule: BoxRule::EachBlob, margin: Some(0.0), gate: false, ..Default::default() };
    let largest = RefineOptions { rule: BoxRule::LargestBlob, ..each };
    let (frame, truth) = two(3);
    let mut dice = Vec::new();
    for options in [None, Some(largest), Some(each)] {
        let mut s = engine.session().unwrap();
        s.set_refiner(options.map(|o| (&refiner, o))).unwrap();
        set_generated(&mut s, two);
        dice.push(overlap(&segment(&mut s, &frame).data, &truth.data).dice);
    }
    // One box fills one square and keeps the other's outline; a box each fills both.
    assert!(dice[0] < dice[1] && dice[1] < dice[2], "pass 1, largest blob, each blob: {dice:?}");
    assert!(dice[2] > 0.85, "{dice:?}");
}

#[test]
fn the_gate_keeps_refinement_on_when_the_shots_say_it_helps() {
    // Squares drawn as a bright outline, the whole square the target: pass 1 finds the outline,
    // the box is the square.
    let square = |seed: usize| {
        let (x0, y0) = (40.0 + 8.0 * seed as f32, 30.0 + 6.0 * seed as f32);
        let (mut image, mask) =
            shape(160, 128, seed, move |x, y| (x0..x0 + 48.0).contains(&x) && (y0..y0 + 48.0).contains(&y));
        for (i, v) in image.data.iter_mut().enumerate() {
            let (x, y) = ((i % 160) as f32, (i / 160) as f32);
            if *v == 220 && (x0 + 4.0..x0 + 44.0).contains(&x) && (y0 + 4.0..y0 + 44.0).contains(&y) {
                *v = 35;
            }
        }
        (image, mask)
    };
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in(dir.path());
    let engine = prototype();
    let mut session = engine.session().unwrap();
    session.set_refiner(Some((&refiner, RefineOptions::default()))).unwrap();
    set_generated(&mut session, square);
    let report = session.tune_refiner().unwrap().unwrap().clone();
    let chosen = report.chosen.unwrap_or_else(|| panic!("the box should beat pass 1 on squares: {report:?}"));
    let best = report.candidates.iter().map(|(_, d)| *d).fold(f64::MIN, f64::max);
    assert!(best > report.pass1 && report.candidates.iter().any(|(c, d)| *c == chosen && *d == best), "{report:?}");
    let (frame, truth) = square(4);
    let mut plain = engine.session().unwrap();
    set_generated(&mut plain, square);
    let before = overlap(&segment(&mut plain, &frame).data, &truth.data).dice;
    let after = overlap(&segment(&mut session, &frame).data, &truth.data).dice;
    assert!(after > before, "refined {after:.3} ≤ pass 1 {before:.3}");
}

#[test]
fn an_empty_first_pass_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in(dir.path());
    let mut session = prototype().session().unwrap();
    session.set_refiner(Some((&refiner, RefineOptions { gate: false, ..Default::default() }))).unwrap();
    set_shots(&mut session, Task::UsLesion, &[1, 2]);
    session.set_threshold(0.999_999).unwrap();
    let (frame, _) = sample(Task::UsLesion, 301);
    let out = segment(&mut session, &frame);
    assert!(out.data.iter().all(|&v| v == 0), "pass 1 at this threshold finds nothing");
    assert_eq!(session.last_refine_box(), None);
}

#[test]
fn bad_options_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let refiner = stand_in(dir.path());
    let mut session = prototype().session().unwrap();
    for bad in [
        RefineOptions { margin: Some(-0.1), ..Default::default() },
        RefineOptions { margin: Some(f32::NAN), ..Default::default() },
        RefineOptions { memo_frames: 0, ..Default::default() },
    ] {
        let err = session.set_refiner(Some((&refiner, bad))).unwrap_err().to_string();
        assert!(err.contains("invalid argument"), "{err}");
        assert!(session.refiner().is_none());
    }
    // The gate needs shots.
    session.set_refiner(Some((&refiner, RefineOptions::default()))).unwrap();
    assert!(matches!(session.tune_refiner(), Err(Error::NoShots)));
    let cuda = Refiner::open(refiner.path(), &EngineOptions { backend: segicl::BackendChoice::Cuda, threads: 1 });
    assert!(cuda.unwrap_err().to_string().contains("use --backend cpu"));
}

/// One row per kind of bad refiner file: its bytes, and words its error must contain.
#[test]
fn damaged_and_mismatched_refiner_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = segicl_models::box_refiner::file().unwrap();
    let layout = Layout::verify(&good, Path::new("r")).unwrap();
    let flip = |tag: Tag| {
        let mut b = good.clone();
        b[layout.find(tag).unwrap().offset as usize + 3] ^= 0x10;
        b
    };
    let repack = |f: &dyn Fn(&mut RefinerManifest)| {
        let mut m = segicl_models::box_refiner::manifest();
        f(&mut m);
        EngineWriter::new()
            .section(Tag::MANIFEST, m.to_json())
            .section(Tag::ENCODER, segicl_models::box_refiner::encoder())
            .section(Tag::DECODER, segicl_models::box_refiner::decoder())
            .to_bytes()
    };
    let engine = std::fs::read(prototype_path()).unwrap();
    let table: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("manifest.refiner", flip(Tag::MANIFEST), &["section MANIFEST checksum"]),
        ("encoder.refiner", flip(Tag::ENCODER), &["section ENCODER checksum"]),
        ("decoder.refiner", flip(Tag::DECODER), &["section DECODER checksum"]),
        ("cut.refiner", good[..good.len() - 100].to_vec(), &["truncated"]),
        ("engine.plan", engine, &["in-context engine, not a refiner"]),
        ("logits.refiner", repack(&|m| m.tensors[4].shape = vec![1, 1, 32, 32]), &["refiner decoder", "logits"]),
        (
            "embedding.refiner",
            repack(&|m| {
                m.tensors[1].shape = vec![1, 2, 64, 64];
                m.tensors[2].shape = vec![1, 2, 64, 64];
            }),
            &["refiner encoder", "embedding"],
        ),
        ("box.refiner", repack(&|m| m.tensors[3].name = "boxes".into()), &["named `box`"]),
    ];
    for (name, bytes, words) in table {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = Refiner::open(&path, &EngineOptions::default()).unwrap_err().to_string();
        for w in words {
            assert!(err.contains(w), "{name}: `{err}` lacks `{w}`");
        }
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
    }
    let missing = Refiner::open(dir.path().join("nope.refiner"), &EngineOptions::default()).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("nope.refiner"));
    // A refiner given as an engine says what it is.
    let path = dir.path().join("r.refiner");
    std::fs::write(&path, &good).unwrap();
    let err = Engine::open(&path, &EngineOptions::default()).unwrap_err().to_string();
    assert!(err.contains("is a refiner") && err.contains("--refiner"), "{err}");
    assert_eq!(RefinerMetadata::open(&path).unwrap().manifest.name, "box-fill");
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "LiteMedSAM costs 75 GFLOP a frame: too slow under qemu; run on the device"
)]
fn the_committed_refiner_redraws_a_synthetic_disc_segmented_from_itself() {
    let refiner = Refiner::open(litemedsam_path(), &EngineOptions::default()).expect("the committed refiner opens");
    assert!(refiner.manifest().precision.encoder == segicl::manifest::DType::I8);
    // One shot: no gate; the box is the shot's own mask's when the frame is the shot.
    let mut session = reference().session().unwrap();
    session.set_refiner(Some((&refiner, RefineOptions::default()))).unwrap();
    let mut dice = Vec::new();
    for seed in [400, 401] {
        let (image, truth) = sample(Task::FundusDisc, seed);
        session.set_shot(0, &image.view(), &truth.view()).unwrap();
        let out = segment(&mut session, &image);
        dice.push(overlap(&out.data, &truth.data).dice);
    }
    assert!(dice.iter().all(|&d| d > 0.8), "refined Dice {dice:?}");
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "LiteMedSAM costs 75 GFLOP a frame: too slow under qemu; run on the device"
)]
fn the_committed_refiner_refines_the_default_optic_disc_shots() {
    let refiner = Refiner::open(litemedsam_path(), &EngineOptions::default()).unwrap();
    let engine = reference();
    let shots = engine.default_shots().get("optic-disc").expect("the engine stores optic-disc shots").to_vec();
    let mut session = engine.session().unwrap();
    session.set_refiner(Some((&refiner, RefineOptions { gate: false, ..Default::default() }))).unwrap();
    // Each stored shot segmented from the other two, refined.
    let mut dice = Vec::new();
    for held in 0..shots.len() {
        for slot in 0..3 {
            session.clear_shot(slot).unwrap();
        }
        for (slot, shot) in shots.iter().enumerate().filter(|&(i, _)| i != held).map(|(_, s)| s).enumerate() {
            session.set_shot(slot, &shot.image.view(), &shot.mask.view()).unwrap();
        }
        let out = segment(&mut session, &shots[held].image);
        dice.push(overlap(&out.data, &shots[held].mask.data).dice);
    }
    assert!(dice.iter().sum::<f64>() / dice.len() as f64 > 0.85, "refined optic-disc Dice {dice:?}");
}

#[test]
fn committed_stand_in_refiner_is_what_the_builder_makes() {
    let committed = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/box-fill.refiner")).unwrap();
    assert!(
        segicl_models::box_refiner::file().unwrap() == committed,
        "tests/golden/box-fill.refiner is stale: run `cargo run -p segicl-models --bin make-prototype`"
    );
}
