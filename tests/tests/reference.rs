//! The shipped learned engine (models/segicl-ref.plan): tract reproduces PyTorch's logits, and it
//! segments its own default shots and synthetic samples in context above a Dice floor. A broken
//! export, a stale engine or a packing mistake fails here, without Python.

use segicl::metrics::{mean_std, overlap};
use segicl::{ImageView, PixelFormat};
use segicl_eval::synthetic::Task;
use segicl_tests::{reference, reference_path, segment, synthetic_dice};

/// Written by models/ref/export.py --parity with the weights of the shipped engine.
const PARITY: &[u8] = include_bytes!("../golden/segicl-ref-parity.bin");

#[test]
fn tract_reproduces_pytorch_logits() {
    let engine = reference();
    let r = engine.manifest().resolution;
    assert_eq!(&PARITY[..8], b"SEGPRTY1", "parity fixture header");
    assert_eq!(u32::from_le_bytes(PARITY[8..12].try_into().unwrap()) as usize, r, "fixture resolution");
    let plane = r * r;
    let bytes = |i: usize| &PARITY[12 + i * plane..12 + (i + 1) * plane];
    let torch: Vec<f32> =
        PARITY[12 + 3 * plane..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(torch.len(), plane, "fixture logits");
    let gray = |data| ImageView::packed(data, r, r, PixelFormat::Gray8).unwrap();
    let mut s = engine.session().unwrap();
    s.set_shot(0, &gray(bytes(0)), &gray(bytes(1))).unwrap();
    let mut out = vec![0u8; plane];
    s.segment(&gray(bytes(2)), &mut segicl::MaskMut::packed(&mut out, r, r).unwrap()).unwrap();
    let diff = s.logits().iter().zip(&torch).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = torch.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("max |tract − PyTorch| logit difference {diff:.2e} (max |logit| {scale:.2})");
    assert!(scale > 1.0, "the fixture's logits are all near zero: a degenerate fixture");
    assert!(diff < 1e-3, "tract's logits differ from PyTorch's by {diff:.2e}");
}

#[test]
fn default_shots_segment_each_other() {
    let engine = reference();
    let names: Vec<String> = engine.default_shots().names().map(str::to_string).collect();
    assert!(names.len() >= 4, "default shot tasks: {names:?}");
    let (mut report, mut means) = (Vec::new(), Vec::new());
    for task in &names {
        let shots = engine.default_shots().get(task).unwrap();
        assert_eq!(shots.len(), 3, "{task}: 3 default shots");
        let mut dice = Vec::new();
        for held in 0..shots.len() {
            let mut s = engine.session().unwrap();
            for (slot, shot) in shots.iter().enumerate().filter(|(i, _)| *i != held).map(|(_, s)| s).enumerate() {
                s.set_shot(slot, &shot.image.view(), &shot.mask.view()).unwrap();
            }
            let pred = segment(&mut s, &shots[held].image);
            dice.push(overlap(&pred.data, &shots[held].mask.data).dice);
        }
        let (mean, _) = mean_std(&dice);
        report.push(format!("{task} {mean:.3}"));
        means.push(mean);
        // Polyps differ so much from one another that two shots often miss much of the third.
        assert!(mean >= 0.3, "{task}: 2-shot leave-one-out Dice {mean:.3} < 0.3 ({dice:?})");
    }
    let (mean, _) = mean_std(&means);
    eprintln!("default shots, 2-shot leave-one-out Dice: {} (mean {mean:.3})", report.join(", "));
    assert!(mean >= 0.7, "mean over tasks {mean:.3} < 0.7: {}", report.join(", "));
}

#[test]
fn segments_synthetic_samples() {
    let engine = reference();
    let mut report = Vec::new();
    for task in [Task::UsLesion, Task::FundusDisc] {
        let dice = synthetic_dice(&engine, task, &[11, 12, 13], 200..208);
        let (mean, _) = mean_std(&dice);
        report.push(format!("{} {mean:.3}", task.name()));
        assert!(mean >= 0.85, "{}: 3-shot Dice {mean:.3} < 0.85 ({dice:?})", task.name());
    }
    eprintln!("synthetic 3-shot Dice: {}", report.join(", "));
}

#[test]
fn shipped_engine_fits_the_size_budget() {
    let size = std::fs::metadata(reference_path()).unwrap().len();
    assert!(size <= 8 << 20, "models/segicl-ref.plan is {size} bytes, over 8 MiB");
    assert_eq!(reference().manifest().name, "segicl-ref");
}
