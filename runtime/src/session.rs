//! A session segments one stream: it holds up to three shots' context and turns frames into
//! masks with one encoder and one decoder pass. All buffers are sized at creation.

use std::time::{Duration, Instant};

use crate::backend::Runner;
use crate::cache::{content_hash, ContextCache};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::image::{ImageView, MaskMut};
use crate::manifest::MAX_SHOTS;
use crate::postprocess::{logits_to_mask, threshold_logit};
use crate::preprocess::Preprocessor;

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

/// Wall-clock time of the last [`Session::segment`], by stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameTimings {
    /// Colour rule, resize and normalisation.
    pub preprocess: Duration,
    /// Encoder pass.
    pub encoder: Duration,
    /// Decoder pass.
    pub decoder: Duration,
    /// Upsampling and threshold.
    pub postprocess: Duration,
}

impl FrameTimings {
    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.preprocess + self.encoder + self.decoder + self.postprocess
    }
}

/// One stream's state: context cache, runner and buffers. Not shared between threads.
pub struct Session {
    engine: Engine,
    runner: Box<dyn Runner>,
    pre: Preprocessor,
    cache: ContextCache,
    image: Vec<f32>,
    mask: Vec<f32>,
    zero_mask: Vec<f32>,
    tokens: Vec<f32>,
    logits: Vec<f32>,
    cut: f32,
    timings: FrameTimings,
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
            logits: vec![0.0; plane],
            cache: ContextCache::new(m.tokens_per_shot, m.token_width),
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
    /// (≥ 128 is foreground). The same shot again costs only a hash.
    pub fn set_shot(&mut self, slot: usize, image: &ImageView, mask: &ImageView) -> Result<ShotUpdate> {
        check_slot(slot)?;
        let hash = content_hash(image, mask);
        if self.cache.hash(slot) == Some(hash) {
            return Ok(ShotUpdate::Unchanged);
        }
        self.pre.mask(mask, image, &mut self.mask)?;
        if let Some(from) = self.cache.slot_with(hash) {
            self.cache.copy(from, slot);
            return Ok(ShotUpdate::Copied);
        }
        self.pre.image(image, &mut self.image);
        self.runner.encode(&self.image, &self.mask, &mut self.tokens)?;
        self.cache.store(slot, hash, &self.tokens);
        Ok(ShotUpdate::Encoded)
    }

    /// Empties `slot`; returns whether it held a shot.
    pub fn clear_shot(&mut self, slot: usize) -> Result<bool> {
        check_slot(slot)?;
        Ok(self.cache.clear(slot))
    }

    /// Replaces the context with the engine's default shots for `task`; returns how many were set.
    pub fn use_default_shots(&mut self, task: &str) -> Result<usize> {
        let engine = self.engine.clone();
        let shots = engine.default_shots().get(task).ok_or_else(|| {
            let known: Vec<&str> = engine.default_shots().names().collect();
            Error::invalid(format!(
                "engine has no default shots for task `{task}` (it has: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })?;
        for (slot, shot) in shots.iter().enumerate() {
            self.set_shot(slot, &shot.image.view(), &shot.mask.view())?;
        }
        for slot in shots.len()..MAX_SHOTS {
            self.cache.clear(slot);
        }
        Ok(shots.len())
    }

    /// Shots currently set.
    pub fn shot_count(&self) -> usize {
        self.cache.len()
    }

    /// Changes whenever the context changes.
    pub fn generation(&self) -> u64 {
        self.cache.generation()
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
        let t0 = Instant::now();
        self.pre.image(frame, &mut self.image);
        let t1 = Instant::now();
        self.runner.encode(&self.image, &self.zero_mask, &mut self.tokens)?;
        let t2 = Instant::now();
        self.runner.decode(self.cache.ctx(), self.cache.valid(), &mut self.logits)?;
        let t3 = Instant::now();
        logits_to_mask(&self.logits, self.pre.resolution(), self.cut, out);
        let t4 = Instant::now();
        self.timings = FrameTimings { preprocess: t1 - t0, encoder: t2 - t1, decoder: t3 - t2, postprocess: t4 - t3 };
        Ok(())
    }

    /// Logits (R×R) of the last segmented frame.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Stage timings of the last segmented frame.
    pub fn timings(&self) -> FrameTimings {
        self.timings
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
