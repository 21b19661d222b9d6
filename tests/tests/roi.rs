//! ROI mode (two-pass refinement of small structures) through the session API: the mask is 0
//! outside the crop, small structures score at least a floor, and the ROI context follows every
//! change of the shots.

use segicl::metrics::{mean_std, overlap};
use segicl::roi::mask_box;
use segicl::{Error, ImageView, MaskMut, OwnedImage, PixelFormat, Rect, RoiOptions, Session, ShotUpdate};
use segicl_eval::synthetic::Task;
use segicl_tests::{prototype, sample, segment, set_shots};

const SHOTS: [u64; 3] = [11, 12, 13];
const QUERIES: std::ops::Range<u64> = 200..216;

fn roi_session(engine: &segicl::Engine, roi: RoiOptions) -> Session {
    let mut s = engine.session().unwrap();
    s.set_roi(Some(roi)).unwrap();
    s
}

/// Mean Dice of the session on QUERIES of `task`, each cut to a 288×240 frame around its
/// structure (not square, so that rows and columns cannot be mixed up); with ROI on, checks that
/// each mask is 0 outside the crop the session reports.
fn mean_dice(s: &mut Session, task: Task) -> f64 {
    let dice: Vec<f64> = QUERIES
        .map(|seed| {
            let (q, truth) = sample(task, seed);
            let bbox = mask_box(&truth.view()).unwrap();
            let (w, h) = (q.width, 240);
            let frame = Rect {
                x: 0,
                y: (bbox.y + bbox.height / 2).saturating_sub(h / 2).min(q.height - h),
                width: w,
                height: h,
            };
            let truth = OwnedImage::from_view(&truth.view().crop(frame).unwrap());
            let mut pred = vec![0u8; w * h];
            s.segment(&q.view().crop(frame).unwrap(), &mut MaskMut::packed(&mut pred, w, h).unwrap()).unwrap();
            if s.roi().is_some() {
                let crop = s.last_crop().unwrap_or_else(|| panic!("seed {seed}: pass 1 found no {}", task.name()));
                assert!(crop.width < w && crop.height < h, "seed {seed}: crop {crop:?} is not a crop");
                for (i, &v) in pred.iter().enumerate() {
                    assert!(v == 0 || crop.contains(i % w, i / w), "seed {seed}: pixel {i} outside {crop:?}");
                }
                let t = s.timings();
                assert!(t.roi_pass > std::time::Duration::ZERO && t.roi_pass < t.total(), "{t:?}");
            } else {
                assert_eq!(s.last_crop(), None);
            }
            overlap(&pred, &truth.data).dice
        })
        .collect();
    mean_std(&dice).0
}

/// Measured with the prototype engine: cup 0.849 without ROI, 0.904 with it; disc 0.925, 0.955.
#[test]
fn roi_refines_small_structures_and_writes_nothing_outside_the_crop() {
    let engine = prototype();
    for (task, floor) in [(Task::FundusCup, 0.89), (Task::FundusDisc, 0.94)] {
        let mut plain = engine.session().unwrap();
        set_shots(&mut plain, task, &SHOTS);
        let mut roi = roi_session(&engine, RoiOptions::default());
        set_shots(&mut roi, task, &SHOTS);
        let (without, with) = (mean_dice(&mut plain, task), mean_dice(&mut roi, task));
        eprintln!("{}: mean Dice {without:.3} without ROI, {with:.3} with", task.name());
        assert!(with >= floor, "{}: mean Dice with ROI {with:.3} < {floor}", task.name());
        assert!(with > without, "{}: ROI gives {with:.3}, no better than {without:.3}", task.name());
    }
}

#[test]
fn crops_of_padded_frames_and_masks_are_views_with_their_stride() {
    let engine = prototype();
    let mut s = roi_session(&engine, RoiOptions::default());
    set_shots(&mut s, Task::FundusCup, &SHOTS);
    let (q, _) = sample(Task::FundusCup, 201);
    let packed = segment(&mut s, &q);
    let (row, stride) = (q.width * 3, q.width * 3 + 7);
    let mut padded = vec![0x5Au8; stride * q.height];
    for y in 0..q.height {
        padded[y * stride..y * stride + row].copy_from_slice(&q.data[y * row..(y + 1) * row]);
    }
    let frame = ImageView::new(&padded, q.width, q.height, stride, PixelFormat::Rgb8).unwrap();
    let mask_stride = q.width + 3;
    let mut out = vec![0xEEu8; mask_stride * q.height];
    s.segment(&frame, &mut MaskMut::new(&mut out, q.width, q.height, mask_stride).unwrap()).unwrap();
    for y in 0..q.height {
        assert_eq!(&out[y * mask_stride..y * mask_stride + q.width], &packed.data[y * q.width..(y + 1) * q.width]);
        assert!(out[y * mask_stride + q.width..(y + 1) * mask_stride].iter().all(|&v| v == 0xEE), "row {y} padding");
    }
}

#[test]
fn the_roi_context_follows_the_shots() {
    let engine = prototype();
    let task = Task::FundusCup;
    let (q, _) = sample(task, 205);
    let shot = |seed| sample(task, seed);
    let options = RoiOptions::default();
    // The mask (as its CRC-32) and the crop of the query.
    let observe = |s: &mut Session| (crc32fast::hash(&segment(s, &q).data), s.last_crop());
    // The same of a fresh session with ROI set before its shots, shots given as (slot, seed).
    let fresh = |roi: Option<RoiOptions>, shots: &[(usize, u64)]| {
        let mut s = engine.session().unwrap();
        s.set_roi(roi).unwrap();
        for &(slot, seed) in shots {
            let (image, mask) = shot(seed);
            s.set_shot(slot, &image.view(), &mask.view()).unwrap();
        }
        observe(&mut s)
    };

    // ROI turned on after the shots: the crops are encoded from the kept shots.
    let mut s = engine.session().unwrap();
    set_shots(&mut s, task, &[11, 12]);
    let g = s.generation();
    s.set_roi(Some(options)).unwrap();
    assert!(s.generation() > g, "turning ROI on changes the context");
    assert_eq!(s.roi(), Some(options));
    let g = s.generation();
    s.set_roi(Some(options)).unwrap();
    assert_eq!(s.generation(), g, "the same options again change nothing");
    let on_after = observe(&mut s);
    assert!(on_after.1.is_some());
    assert_eq!(on_after, fresh(Some(options), &[(0, 11), (1, 12)]), "ROI on before or after the shots");

    // A shot copied to another slot, then a slot cleared: both contexts follow.
    let (image, mask) = shot(11);
    assert_eq!(s.set_shot(2, &image.view(), &mask.view()).unwrap(), ShotUpdate::Copied);
    assert_eq!(observe(&mut s), fresh(Some(options), &[(0, 11), (1, 12), (2, 11)]));
    let g = s.generation();
    assert!(s.clear_shot(1).unwrap());
    assert!(s.generation() > g);
    assert_eq!(observe(&mut s), fresh(Some(options), &[(0, 11), (2, 11)]));

    // A shot replaced.
    let (image, mask) = shot(14);
    assert_eq!(s.set_shot(0, &image.view(), &mask.view()).unwrap(), ShotUpdate::Encoded);
    let replaced = observe(&mut s);
    assert_eq!(replaced, fresh(Some(options), &[(0, 14), (2, 11)]));

    // Other options re-encode the crops; ROI off gives the plain masks.
    let wide = RoiOptions { margin: 1.5, min_side: 32 };
    let g = s.generation();
    s.set_roi(Some(wide)).unwrap();
    assert!(s.generation() > g);
    let widened = observe(&mut s);
    assert_ne!(widened.1, replaced.1, "a wider margin gives a wider crop");
    assert_eq!(widened, fresh(Some(wide), &[(0, 14), (2, 11)]));
    let g = s.generation();
    s.set_roi(None).unwrap();
    assert!(s.generation() > g, "turning ROI off changes the context");
    assert_eq!(s.roi(), None);
    let off = observe(&mut s);
    assert_eq!(off.1, None);
    assert_eq!(off, fresh(None, &[(0, 14), (2, 11)]));
    assert_ne!(off.0, replaced.0, "ROI changes the mask");

    // Default shots in ROI mode.
    s.set_roi(Some(options)).unwrap();
    assert_eq!(s.use_default_shots("fundus-cup").unwrap(), 3);
    let (q, truth) = sample(task, 77);
    let dice = overlap(&segment(&mut s, &q).data, &truth.data).dice;
    assert!(s.last_crop().is_some() && dice > 0.8, "default shots with ROI: Dice {dice}");
}

#[test]
fn bad_roi_options_are_clear_errors_and_change_nothing() {
    let engine = prototype();
    let mut s = roi_session(&engine, RoiOptions::default());
    set_shots(&mut s, Task::FundusDisc, &SHOTS);
    let g = s.generation();
    for margin in [-0.5, f32::NAN, f32::INFINITY] {
        let err = s.set_roi(Some(RoiOptions { margin, min_side: 64 })).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("margin")), "{err}");
    }
    assert_eq!((s.roi(), s.generation()), (Some(RoiOptions::default()), g));
}

#[test]
fn no_foreground_in_pass_1_gives_its_empty_mask() {
    let engine = prototype();
    let mut s = roi_session(&engine, RoiOptions::default());
    set_shots(&mut s, Task::FundusCup, &SHOTS);
    // A black frame: the prototype finds no cup in it.
    let black = OwnedImage::zeros(300, 200, PixelFormat::Rgb8);
    let mask = segment(&mut s, &black);
    assert!(mask.data.iter().all(|&v| v == 0));
    assert_eq!(s.last_crop(), None);
    assert_eq!(s.timings().roi_pass, std::time::Duration::ZERO);
}
