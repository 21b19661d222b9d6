//! The session API: shots, the context cache, default shots and every error case.

use segicl::{Error, ImageView, MaskMut, OwnedImage, PixelFormat, ShotUpdate};
use segicl_eval::synthetic::Task;
use segicl_tests::{prototype, sample, segment, set_shots};

#[test]
fn replacing_clearing_and_deduplicating_shots() {
    let engine = prototype();
    let mut s = engine.session().unwrap();
    let (a, am) = sample(Task::UsLesion, 1);
    let (b, bm) = sample(Task::UsLesion, 2);
    assert_eq!(s.set_shot(0, &a.view(), &am.view()).unwrap(), ShotUpdate::Encoded);
    let g = s.generation();
    assert_eq!(s.set_shot(0, &a.view(), &am.view()).unwrap(), ShotUpdate::Unchanged);
    assert_eq!(s.generation(), g, "the same shot again changes nothing");
    assert_eq!(s.set_shot(2, &a.view(), &am.view()).unwrap(), ShotUpdate::Copied);
    assert_eq!(s.shot_count(), 2);
    assert_eq!(s.set_shot(0, &b.view(), &bm.view()).unwrap(), ShotUpdate::Encoded);
    assert!(s.generation() > g);
    assert!(s.clear_shot(2).unwrap());
    assert!(!s.clear_shot(2).unwrap());
    assert!(!s.clear_shot(1).unwrap());
    assert_eq!(s.shot_count(), 1);

    // One shot of B alone and the context after replacement give the same mask.
    let (q, _) = sample(Task::UsLesion, 50);
    let replaced = segment(&mut s, &q);
    let mut fresh = engine.session().unwrap();
    fresh.set_shot(1, &b.view(), &bm.view()).unwrap();
    assert_eq!(segment(&mut fresh, &q), replaced, "slot position does not matter, content does");
    s.clear_shot(0).unwrap();
    let mut out = OwnedImage::zeros(q.width, q.height, PixelFormat::Gray8);
    let err = s.segment(&q.view(), &mut MaskMut::packed(&mut out.data, q.width, q.height).unwrap()).unwrap_err();
    assert!(matches!(err, Error::NoShots), "{err}");
}

#[test]
fn a_same_stride_padded_copy_is_the_same_shot() {
    let engine = prototype();
    let mut s = engine.session().unwrap();
    let (a, am) = sample(Task::FundusDisc, 3);
    s.set_shot(0, &a.view(), &am.view()).unwrap();
    let row = a.width * 3;
    let stride = row + 5;
    let mut padded = vec![0xEEu8; stride * a.height];
    for y in 0..a.height {
        padded[y * stride..y * stride + row].copy_from_slice(&a.data[y * row..(y + 1) * row]);
    }
    let view = ImageView::new(&padded, a.width, a.height, stride, PixelFormat::Rgb8).unwrap();
    assert_eq!(s.set_shot(0, &view, &am.view()).unwrap(), ShotUpdate::Unchanged);
}

#[test]
fn default_shots_work_out_of_the_box() {
    let engine = prototype();
    let mut s = engine.session().unwrap();
    assert_eq!(s.use_default_shots("fundus-disc").unwrap(), 3);
    assert_eq!(s.shot_count(), 3);
    let (q, truth) = sample(Task::FundusDisc, 77);
    let pred = segment(&mut s, &q);
    let dice = segicl::metrics::overlap(&pred.data, &truth.data).dice;
    assert!(dice > 0.8, "default shots give Dice {dice}");
    let err = s.use_default_shots("liver").unwrap_err().to_string();
    assert!(err.contains("liver") && err.contains("fundus-cup"), "{err}");
}

/// One row per bad input: how it is made, and words its error must contain.
#[test]
fn bad_inputs_get_clear_errors_and_lose_nothing() {
    let engine = prototype();
    let mut s = engine.session().unwrap();
    set_shots(&mut s, Task::UsLesion, &[1]);
    let (q, _) = sample(Task::UsLesion, 60);
    let before = segment(&mut s, &q);
    let generation = s.generation();

    let (img, mask) = sample(Task::UsLesion, 2);
    let small_mask = OwnedImage::zeros(10, 10, PixelFormat::Gray8);
    let empty_mask = OwnedImage::zeros(img.width, img.height, PixelFormat::Gray8);
    let rgb_mask = OwnedImage::zeros(img.width, img.height, PixelFormat::Rgb8);
    let cases: Vec<(&str, segicl::Result<ShotUpdate>, &[&str])> = vec![
        ("4th shot", s.set_shot(3, &img.view(), &mask.view()), &["slot 3", "at most 3"]),
        ("mask size", s.set_shot(1, &img.view(), &small_mask.view()), &["10×10", "320×256"]),
        ("empty mask", s.set_shot(1, &img.view(), &empty_mask.view()), &["empty"]),
        ("rgb mask", s.set_shot(1, &img.view(), &rgb_mask.view()), &["rgb8", "gray8"]),
    ];
    for (name, result, words) in cases {
        let err = result.expect_err(name).to_string();
        for w in words {
            assert!(err.contains(w), "{name}: `{err}` lacks `{w}`");
        }
    }
    assert!(s.clear_shot(7).unwrap_err().to_string().contains("slot 7"));
    assert!(s.set_threshold(1.0).is_err() && s.set_threshold(0.0).is_err() && s.set_threshold(f32::NAN).is_err());

    let mut wrong = vec![0u8; 10 * 10];
    let err = s.segment(&q.view(), &mut MaskMut::packed(&mut wrong, 10, 10).unwrap()).unwrap_err().to_string();
    assert!(err.contains("10×10") && err.contains("320×256"), "{err}");

    let geometry: Vec<(&str, segicl::Result<ImageView>)> = vec![
        ("zero width", ImageView::packed(&[], 0, 5, PixelFormat::Gray8)),
        ("short buffer", ImageView::packed(&[0; 10], 4, 4, PixelFormat::Gray8)),
        ("small stride", ImageView::new(&[0; 100], 4, 4, 3, PixelFormat::Rgb8)),
        ("overflow", ImageView::packed(&[0; 4], usize::MAX, 2, PixelFormat::Rgba8)),
    ];
    for (name, result) in geometry {
        assert!(matches!(result, Err(Error::InvalidArgument(_))), "{name}");
    }

    assert_eq!(s.generation(), generation, "failed calls leave the context as it was");
    assert_eq!(segment(&mut s, &q), before);
}

#[test]
fn sessions_of_one_engine_are_independent_and_send() {
    let engine = prototype();
    let (q, _) = sample(Task::FundusCup, 5);
    let handles: Vec<_> = [Task::FundusDisc, Task::FundusCup]
        .into_iter()
        .map(|task| {
            let engine = engine.clone();
            let q = q.clone();
            std::thread::spawn(move || {
                let mut s = engine.session().unwrap();
                set_shots(&mut s, task, &[1, 2]);
                segment(&mut s, &q)
            })
        })
        .collect();
    let masks: Vec<OwnedImage> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_ne!(masks[0], masks[1], "disc and cup shots give different masks");
    let mut s = engine.session().unwrap();
    set_shots(&mut s, Task::FundusDisc, &[1, 2]);
    assert_eq!(segment(&mut s, &q), masks[0], "same context, same mask, whatever the thread");
}

#[test]
fn engine_is_shareable_and_sessions_can_move_between_threads() {
    fn shareable<T: Send + Sync>() {}
    fn movable<T: Send>() {}
    shareable::<segicl::Engine>();
    movable::<segicl::Session>();
}

#[test]
fn extreme_frame_sizes_and_every_format_work() {
    let engine = prototype();
    let mut s = engine.session().unwrap();
    set_shots(&mut s, Task::UsLesion, &[1]);
    let formats = [PixelFormat::Gray8, PixelFormat::Gray16, PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Rgba8];
    for (w, h) in [(1, 1), (1, 500), (500, 1), (3, 7), (1000, 13), (129, 127)] {
        for format in formats {
            let stride = w * format.bytes_per_pixel() + 1;
            let pixels: Vec<u8> = (0..stride * h).map(|i| (i * 37 % 251) as u8).collect();
            let frame = ImageView::new(&pixels, w, h, stride, format).unwrap();
            let mut out = vec![7u8; w * h];
            s.segment(&frame, &mut MaskMut::packed(&mut out, w, h).unwrap()).unwrap();
            assert!(out.iter().all(|&v| v == 0 || v == 255), "{w}×{h} {}", format.name());
            // The same picture as a shot, with a one-pixel mask.
            let mut mask = vec![0u8; w * h];
            mask[(h / 2) * w + w / 2] = 255;
            let mask = ImageView::packed(&mask, w, h, PixelFormat::Gray8).unwrap();
            s.set_shot(2, &frame, &mask).unwrap();
        }
    }
}
