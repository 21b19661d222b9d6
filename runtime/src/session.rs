//! A session segments one stream: it holds up to three shots' context and turns frames into
//! masks with one encoder and one decoder pass (two of each in ROI mode). All buffers are sized
//! at creation.

use std::time::{Duration, Instant};

use crate::backend::{DeviceTimings, Runner};
use crate::cache::{content_hash, ContextCache};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::image::{ImageView, MaskMut, OwnedImage, Rect};
use crate::manifest::MAX_SHOTS;
use crate::metrics::overlap;
use crate::postprocess::{logits_to_mask, threshold_logit};
use crate::preprocess::{check_mask, Preprocessor};
use crate::refine::{gate, GateReport, PixelBox, RefineOptions, RefineRunner, RefineTimings, Refiner};
use crate::roi::{logits_box, mask_box, RoiOptions};
use crate::shots::StoredShot;

/// What [`Session::set_shot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShotUpdate {
    /// The shot was encoded and stored.
    Encoded,
    /// The slot already held this shot; nothing ran.
    Unchanged,
    /// Another slot held this shot; its context was copied without running the encoder.
    Copied,
}

/// Wall-clock time of the last [`Session::segment`], by stage. In ROI mode each stage adds up
/// both passes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameTimings {
    /// Colour rule, resize and normalisation.
    pub preprocess: Duration,
    /// Encoder pass.
    pub encoder: Duration,
    /// Decoder pass.
    pub decoder: Duration,
    /// Upsampling and threshold (and, in ROI mode, finding the crop).
    pub postprocess: Duration,
    /// Of the above, the time the ROI pass took (crop through upsampling); zero when it did not
    /// run.
    pub roi_pass: Duration,
    /// The refinement pass (box, refiner encoder and decoder, upsampling); zero when it did not
    /// run. [`Session::refine_timings`] splits it by stage.
    pub refine: Duration,
}

impl FrameTimings {
    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.preprocess + self.encoder + self.decoder + self.postprocess + self.refine
    }
}

/// A session's refiner: its runner, options and the gate's last decision.
struct RefineState {
    runner: RefineRunner,
    options: RefineOptions,
    /// The gate's report and what it was made for: the context's generation and the first pass's
    /// threshold.
    report: Option<((u64, u32), GateReport)>,
}

/// One stream's state: context cache, runner and buffers. Not shared between threads.
///
/// # ROI mode
///
/// A structure of a few percent of the frame covers a handful of pixels at the engine's
/// resolution. With [`Session::set_roi`] on, [`Session::segment`] runs twice: pass 1 on the
/// whole frame, then pass 2 on a crop around pass 1's prediction (see [`crate::roi`]) with a
/// second context, made of the shots cropped around their own masks by the same rule. The mask
/// is 0 outside the crop. The session keeps a copy of each shot's pixels, so ROI mode can be
/// turned on, re-tuned or off at any time and its context is rebuilt from them.
///
/// # Refinement
///
/// With a refiner set ([`Session::set_refiner`]), the mask of pass 1 (ROI pass included) is
/// redrawn by the refiner from a box around it (see [`crate::refine`]). Which box rule and margin
/// to use, or whether to refine at all, is decided per task on the shots when the context has
/// changed (at the next frame, or [`Session::tune_refiner`]): with two or three shots, each shot is
/// segmented from the others (one shot: from itself) and refined by every candidate; refinement
/// stays on with the best candidate only if it beats pass 1 on the shots by
/// [`gate::MIN_GAIN`].
pub struct Session {
    engine: Engine,
    runner: Box<dyn Runner>,
    pre: Preprocessor,
    cache: ContextCache,
    /// The ROI context: in ROI mode the same slots and hashes as `cache`, else empty.
    roi_cache: ContextCache,
    roi: Option<RoiOptions>,
    /// The pixels of the shot in each slot of `cache`.
    shots: [Option<StoredShot>; MAX_SHOTS],
    image: Vec<f32>,
    mask: Vec<f32>,
    zero_mask: Vec<f32>,
    tokens: Vec<f32>,
    roi_tokens: Vec<f32>,
    logits: Vec<f32>,
    cut: f32,
    timings: FrameTimings,
    crop: Option<Rect>,
    refine: Option<RefineState>,
    /// Slots whose tokens the next passes must not see (the gate's leave-one-out passes).
    exclude: [bool; MAX_SHOTS],
    /// `ctx_valid` with the excluded slots zeroed.
    loo_valid: Vec<f32>,
    refine_box: Option<PixelBox>,
}

impl Session {
    pub(crate) fn new(engine: Engine, runner: Box<dyn Runner>) -> Result<Session> {
        let m = engine.manifest();
        let pre = Preprocessor::from_manifest(m);
        let plane = m.resolution * m.resolution;
        Ok(Session {
            image: vec![0.0; pre.image_len()],
            mask: vec![0.0; plane],
            zero_mask: vec![0.0; plane],
            tokens: vec![0.0; m.tokens_per_shot * m.token_width],
            roi_tokens: vec![0.0; m.tokens_per_shot * m.token_width],
            logits: vec![0.0; plane],
            cache: ContextCache::new(m.tokens_per_shot, m.token_width),
            roi_cache: ContextCache::new(m.tokens_per_shot, m.token_width),
            roi: None,
            shots: Default::default(),
            crop: None,
            refine: None,
            exclude: [false; MAX_SHOTS],
            loo_valid: vec![0.0; MAX_SHOTS * m.tokens_per_shot],
            refine_box: None,
            cut: threshold_logit(m.threshold),
            pre,
            runner,
            engine,
            timings: FrameTimings::default(),
        })
    }

    /// The engine this session runs.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Sets the shot in `slot` (0, 1 or 2) from an image and its gray8 mask of the same size
    /// (≥ 128 is foreground). The same shot again costs only a hash. In ROI mode the shot's crop
    /// is encoded too.
    pub fn set_shot(&mut self, slot: usize, image: &ImageView, mask: &ImageView) -> Result<ShotUpdate> {
        check_slot(slot)?;
        let hash = content_hash(image, mask);
        // The hash finds a candidate; only the stored pixels make it the same shot.
        let holds =
            |shot: &Option<StoredShot>| shot.as_ref().is_some_and(|s| s.image.holds(image) && s.mask.holds(mask));
        if self.cache.hash(slot) == Some(hash) && holds(&self.shots[slot]) {
            return Ok(ShotUpdate::Unchanged);
        }
        self.pre.mask(mask, image, &mut self.mask)?;
        let same = self.cache.slots_with(hash).find(|&from| holds(&self.shots[from]));
        if let Some(from) = same {
            self.cache.copy(from, slot);
            if self.roi.is_some() {
                self.roi_cache.copy(from, slot);
            }
            self.shots[slot] = self.shots[from].clone();
            return Ok(ShotUpdate::Copied);
        }
        self.pre.image(image, &mut self.image);
        self.runner.encode(&self.image, &self.mask, &mut self.tokens)?;
        Error::check_finite(&self.tokens, "encoder", "the shot's context tokens")?;
        if let Some(roi) = self.roi {
            self.encode_crop(roi, image, mask)?;
            self.roi_cache.store(slot, hash, &self.roi_tokens);
        }
        self.cache.store(slot, hash, &self.tokens);
        self.shots[slot] = Some(StoredShot { image: OwnedImage::from_view(image), mask: OwnedImage::from_view(mask) });
        Ok(ShotUpdate::Encoded)
    }

    /// Encodes the crop of a shot (whose mask was checked) into `roi_tokens`.
    fn encode_crop(&mut self, roi: RoiOptions, image: &ImageView, mask: &ImageView) -> Result<()> {
        let bbox = mask_box(mask).expect("a checked mask has foreground");
        let crop = roi.crop(bbox, image.width(), image.height());
        let (image, mask) = (image.crop(crop)?, mask.crop(crop)?);
        self.pre.mask(&mask, &image, &mut self.mask)?;
        self.pre.image(&image, &mut self.image);
        self.runner.encode(&self.image, &self.mask, &mut self.roi_tokens)?;
        Error::check_finite(&self.roi_tokens, "encoder", "the shot crop's context tokens")
    }

    /// Empties `slot`; returns whether it held a shot.
    pub fn clear_shot(&mut self, slot: usize) -> Result<bool> {
        check_slot(slot)?;
        Ok(self.clear(slot))
    }

    /// Empties `slot` in both contexts; returns whether it held a shot.
    fn clear(&mut self, slot: usize) -> bool {
        self.roi_cache.clear(slot);
        self.shots[slot] = None;
        self.cache.clear(slot)
    }

    /// Turns ROI mode on with `roi`, changes its options, or turns it off (`None`); see
    /// [`Session`]. Turning it on or changing the options encodes the crop of every shot set
    /// (one encoder pass per distinct shot); the same options again cost nothing. A bad margin
    /// is an error and changes nothing.
    pub fn set_roi(&mut self, roi: Option<RoiOptions>) -> Result<()> {
        if let Some(options) = &roi {
            options.check()?;
        }
        if roi == self.roi {
            return Ok(());
        }
        // Built aside, so that a failure leaves the context as it was.
        let mut context = self.roi_cache.clone();
        for slot in 0..MAX_SHOTS {
            context.clear(slot);
        }
        if let Some(options) = roi {
            let shots = std::mem::take(&mut self.shots);
            let built = self.encode_crops(options, &shots, &mut context);
            self.shots = shots;
            built?;
        }
        self.roi_cache = context;
        self.roi = roi;
        Ok(())
    }

    /// Encodes the crops of `shots` into `context`, each distinct shot once.
    fn encode_crops(
        &mut self,
        roi: RoiOptions,
        shots: &[Option<StoredShot>],
        context: &mut ContextCache,
    ) -> Result<()> {
        for (slot, shot) in shots.iter().enumerate() {
            let Some(shot) = shot else { continue };
            let hash = self.cache.hash(slot).expect("a stored shot is cached");
            let same = context.slots_with(hash).find(|&from| shots[from].as_ref() == Some(shot));
            if let Some(from) = same {
                context.copy(from, slot);
                continue;
            }
            self.encode_crop(roi, &shot.image.view(), &shot.mask.view())?;
            context.store(slot, hash, &self.roi_tokens);
        }
        Ok(())
    }

    /// The ROI options, when ROI mode is on.
    pub fn roi(&self) -> Option<RoiOptions> {
        self.roi
    }

    /// Replaces the context with the engine's default shots for `task`; returns how many were set.
    /// Every stored shot is checked first: one that fails (an empty mask) is an error and leaves
    /// the context as it was.
    pub fn use_default_shots(&mut self, task: &str) -> Result<usize> {
        let engine = self.engine.clone();
        let shots = engine.default_shots().get(task).ok_or_else(|| {
            let known: Vec<&str> = engine.default_shots().names().collect();
            Error::invalid(format!(
                "engine has no default shots for task `{task}` (it has: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })?;
        // Every shot is checked before any slot changes, so a bad stored shot changes nothing.
        for shot in shots {
            check_mask(&shot.mask.view(), &shot.image.view())?;
        }
        for (slot, shot) in shots.iter().enumerate() {
            self.set_shot(slot, &shot.image.view(), &shot.mask.view())?;
        }
        for slot in shots.len()..MAX_SHOTS {
            self.clear(slot);
        }
        Ok(shots.len())
    }

    /// Shots currently set.
    pub fn shot_count(&self) -> usize {
        self.cache.len()
    }

    /// Changes whenever the context changes (the ROI context included).
    pub fn generation(&self) -> u64 {
        self.cache.generation() + self.roi_cache.generation()
    }

    /// Sets the probability threshold of the mask (strictly between 0 and 1).
    pub fn set_threshold(&mut self, threshold: f32) -> Result<()> {
        if !(threshold > 0.0 && threshold < 1.0) {
            return Err(Error::invalid(format!("threshold {threshold} is not strictly between 0 and 1")));
        }
        self.cut = threshold_logit(threshold);
        Ok(())
    }

    /// Segments `frame` with the cached context into `out`, which must have the frame's size.
    /// In ROI mode, refines the prediction on a crop (see [`Session`]); when pass 1 finds no
    /// foreground, its empty mask is the result. With a refiner, the mask is refined when the
    /// gate keeps refinement on for these shots (the gate runs first if the context changed).
    pub fn segment(&mut self, frame: &ImageView, out: &mut MaskMut) -> Result<()> {
        if self.cache.is_empty() {
            return Err(Error::NoShots);
        }
        if (out.width(), out.height()) != (frame.width(), frame.height()) {
            return Err(Error::invalid(format!(
                "output mask is {}×{} but the frame is {}×{}",
                out.width(),
                out.height(),
                frame.width(),
                frame.height()
            )));
        }
        let chosen = self.tune_refiner()?.and_then(|report| report.chosen);
        let mut t = FrameTimings::default();
        self.first_pass(frame, out, &mut t)?;
        self.refine_box = None;
        if let (Some(c), Some(state)) = (chosen, self.refine.as_mut()) {
            let started = Instant::now();
            self.refine_box = state.runner.refine(frame, out, c.rule, c.margin)?;
            t.refine = started.elapsed();
        }
        self.timings = t;
        Ok(())
    }

    /// Pass 1 (and the ROI pass in ROI mode) on `frame` into `out`, adding the stages' times to `t`.
    fn first_pass(&mut self, frame: &ImageView, out: &mut MaskMut, t: &mut FrameTimings) -> Result<()> {
        let (r, w, h) = (self.pre.resolution(), frame.width(), frame.height());
        self.crop = None;
        self.infer(frame, false, t)?;
        let started = Instant::now();
        let crop = self.roi.and_then(|roi| Some(roi.crop(logits_box(&self.logits, r, self.cut, w, h)?, w, h)));
        t.postprocess += started.elapsed();
        let Some(crop) = crop else {
            let started = Instant::now();
            logits_to_mask(&self.logits, r, self.cut, out);
            t.postprocess += started.elapsed();
            return Ok(());
        };
        let started = Instant::now();
        self.infer(&frame.crop(crop)?, true, t)?;
        let upsampling = Instant::now();
        out.fill(0);
        logits_to_mask(&self.logits, r, self.cut, &mut out.crop(crop)?);
        t.postprocess += upsampling.elapsed();
        t.roi_pass = started.elapsed();
        self.crop = Some(crop);
        Ok(())
    }

    /// Takes `refiner` with `options`, replacing the refiner or options the session had, or
    /// drops it (`None`). The same refiner keeps its memo of embeddings. The gate runs at the
    /// next frame (or [`Session::tune_refiner`]). Bad options are an error and change nothing.
    pub fn set_refiner(&mut self, refiner: Option<(&Refiner, RefineOptions)>) -> Result<()> {
        let Some((refiner, options)) = refiner else {
            self.refine = None;
            return Ok(());
        };
        options.check()?;
        let reusable = self
            .refine
            .as_ref()
            .is_some_and(|s| s.runner.refiner().same(refiner) && s.options.memo_frames == options.memo_frames);
        let runner = match reusable {
            true => self.refine.take().expect("checked above").runner,
            false => RefineRunner::new(refiner.clone(), options.memo_frames)?,
        };
        self.refine = Some(RefineState { runner, options, report: None });
        Ok(())
    }

    /// The refiner and its options, when one is set.
    pub fn refiner(&self) -> Option<(&Refiner, RefineOptions)> {
        self.refine.as_ref().map(|s| (s.runner.refiner(), s.options))
    }

    /// Runs the gate for the current shots unless it already ran for them (see [`Session`]) and
    /// returns its report; `None` without a refiner. With the gate on this costs, per distinct
    /// shot, one pass 1, one refiner encoder pass (unless memoised) and, per candidate, one
    /// decoder pass per box.
    pub fn tune_refiner(&mut self) -> Result<Option<&GateReport>> {
        let key = (self.generation(), self.cut.to_bits());
        let stale = match &self.refine {
            None => return Ok(None),
            Some(state) => state.report.as_ref().is_none_or(|(k, _)| *k != key),
        };
        if stale {
            if self.cache.is_empty() {
                return Err(Error::NoShots);
            }
            let report = self.run_gate()?;
            self.refine.as_mut().expect("checked above").report = Some((key, report));
        }
        Ok(self.refine.as_ref().and_then(|s| s.report.as_ref()).map(|(_, r)| r))
    }

    /// Scores pass 1 and every candidate on each distinct shot, segmented from the others (a
    /// single shot from itself).
    fn run_gate(&mut self) -> Result<GateReport> {
        let state = self.refine.as_ref().expect("a refiner is set");
        let default = state.options.candidate(state.runner.refiner());
        if !state.options.gate {
            return Ok(GateReport { shots: 0, pass1: f64::NAN, candidates: Vec::new(), chosen: Some(default) });
        }
        let hashes: Vec<Option<u64>> = (0..MAX_SHOTS).map(|slot| self.cache.hash(slot)).collect();
        let mut distinct: Vec<usize> = Vec::new();
        for slot in 0..MAX_SHOTS {
            if hashes[slot].is_some() && !distinct.iter().any(|&d| hashes[d] == hashes[slot]) {
                distinct.push(slot);
            }
        }
        // Each shot from the others; a single shot from itself (the only estimate there is).
        let alone = distinct.len() == 1;
        let candidates = gate::candidates(default);
        let mut sums = vec![0.0; candidates.len()];
        let mut pass1 = 0.0;
        for &slot in &distinct {
            let shot = self.shots[slot].clone().expect("a cached slot has its shot");
            let (image, w, h) = (shot.image.view(), shot.image.width, shot.image.height);
            let mut first = vec![0u8; w * h];
            self.exclude = std::array::from_fn(|s| !alone && hashes[s] == hashes[slot]);
            let done = self.first_pass(&image, &mut MaskMut::packed(&mut first, w, h)?, &mut FrameTimings::default());
            self.exclude = [false; MAX_SHOTS];
            done?;
            pass1 += overlap(&first, &shot.mask.data).dice;
            let runner = &mut self.refine.as_mut().expect("a refiner is set").runner;
            let mut refined = vec![0u8; w * h];
            for (c, sum) in candidates.iter().zip(&mut sums) {
                refined.copy_from_slice(&first);
                runner.refine(&image, &mut MaskMut::packed(&mut refined, w, h)?, c.rule, c.margin)?;
                *sum += overlap(&refined, &shot.mask.data).dice;
            }
        }
        let n = distinct.len() as f64;
        let scored: Vec<_> = candidates.into_iter().zip(sums.into_iter().map(|s| s / n)).collect();
        let pass1 = pass1 / n;
        let chosen = gate::choose(pass1, &scored);
        log::info!("refine gate on {} shots: pass 1 {pass1:.3}, chosen {chosen:?}", distinct.len());
        Ok(GateReport { shots: distinct.len(), pass1, chosen, candidates: scored })
    }

    /// The box (frame pixels) the last segmented frame was refined in (with a box per blob, the
    /// box holding them all); `None` when it was not refined (no refiner, refinement off for the
    /// task, or an empty pass-1 mask).
    pub fn last_refine_box(&self) -> Option<PixelBox> {
        self.refine_box
    }

    /// The refiner's logits (M×M over its whole input square, the frame in its top-left corner)
    /// of the last refinement, when a refiner is set.
    pub fn refined_logits(&self) -> Option<&[f32]> {
        self.refine.as_ref().map(|s| s.runner.logits())
    }

    /// Stage timings of the last refinement (of a frame, or of the gate's last candidate).
    pub fn refine_timings(&self) -> Option<RefineTimings> {
        self.refine.as_ref().map(|s| s.runner.timings())
    }

    /// Runs the encoder on `view` and the decoder with the full or the ROI context into
    /// `logits`, adding the stages' times to `t`.
    fn infer(&mut self, view: &ImageView, roi: bool, t: &mut FrameTimings) -> Result<()> {
        let t0 = Instant::now();
        self.pre.image(view, &mut self.image);
        let t1 = Instant::now();
        self.runner.encode(&self.image, &self.zero_mask, &mut self.tokens)?;
        let t2 = Instant::now();
        let context = if roi { &self.roi_cache } else { &self.cache };
        let valid = if self.exclude.contains(&true) {
            let t = self.engine.manifest().tokens_per_shot;
            self.loo_valid.copy_from_slice(context.valid());
            for (slot, tokens) in self.loo_valid.chunks_exact_mut(t).enumerate() {
                if self.exclude[slot] {
                    tokens.fill(0.0);
                }
            }
            &self.loo_valid
        } else {
            context.valid()
        };
        self.runner.decode(context.ctx(), valid, &mut self.logits)?;
        Error::check_finite(&self.logits, "decoder", "the logits")?;
        let t3 = Instant::now();
        t.preprocess += t1 - t0;
        t.encoder += t2 - t1;
        t.decoder += t3 - t2;
        Ok(())
    }

    /// Logits (R×R) of the last segmented frame: of its crop when the ROI pass ran.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The crop the ROI pass of the last segmented frame ran on, in frame pixels; `None` when
    /// ROI mode is off or pass 1 found no foreground. The mask is 0 outside it.
    pub fn last_crop(&self) -> Option<Rect> {
        self.crop
    }

    /// Stage timings of the last segmented frame.
    pub fn timings(&self) -> FrameTimings {
        self.timings
    }

    /// Device-side times of the last encoder and decoder pass (for a segmented frame: its pass,
    /// the second one in ROI mode), from backends that measure them (CUDA); `None` otherwise.
    pub fn device_timings(&self) -> Option<DeviceTimings> {
        self.runner.device_timings()
    }
}

fn check_slot(slot: usize) -> Result<()> {
    if slot >= MAX_SHOTS {
        return Err(Error::invalid(format!(
            "shot slot {slot} is out of range: a context holds at most {MAX_SHOTS} shots (slots 0 to {})",
            MAX_SHOTS - 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PixelFormat;
    use crate::EngineOptions;

    /// A 96×80 grey frame with a bright disc whose place depends on `seed`, and its mask.
    fn shot(seed: u64) -> (OwnedImage, OwnedImage) {
        let (w, h) = (96, 80);
        let (cx, cy, r) = (30 + 7 * (seed % 5) as usize, 28 + 5 * (seed % 4) as usize, 14);
        let mut image = OwnedImage::zeros(w, h, PixelFormat::Gray8);
        let mut mask = OwnedImage::zeros(w, h, PixelFormat::Gray8);
        for y in 0..h {
            for x in 0..w {
                let inside = x.abs_diff(cx).pow(2) + y.abs_diff(cy).pow(2) <= r * r;
                image.data[y * w + x] = if inside { 200 } else { 60 + ((x * 7 + y * 3) % 23) as u8 };
                mask.data[y * w + x] = if inside { 255 } else { 0 };
            }
        }
        (image, mask)
    }

    /// Two different shots whose content hashes collide (forged here by storing the second's hash
    /// with the first's tokens) are still told apart by their pixels.
    #[test]
    fn a_hash_collision_does_not_make_a_different_shot_unchanged() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/prototype.plan");
        let mut session = Engine::open(path, &EngineOptions::default()).unwrap().session().unwrap();
        let ((a, a_mask), (b, b_mask)) = (shot(1), shot(2));
        assert_eq!(session.set_shot(0, &a.view(), &a_mask.view()).unwrap(), ShotUpdate::Encoded);
        let forged = content_hash(&b.view(), &b_mask.view());
        let tokens = session.cache.tokens(0).to_vec();
        session.cache.store(0, forged, &tokens);
        assert_eq!(session.set_shot(1, &b.view(), &b_mask.view()).unwrap(), ShotUpdate::Encoded, "copied from A");
        session.cache.store(0, forged, &tokens);
        // Slot 0 claims B's hash but holds A: B is copied from slot 1, which holds it.
        assert_eq!(session.set_shot(0, &b.view(), &b_mask.view()).unwrap(), ShotUpdate::Copied, "kept A");
        assert_eq!(session.set_shot(0, &b.view(), &b_mask.view()).unwrap(), ShotUpdate::Unchanged);
    }
}
