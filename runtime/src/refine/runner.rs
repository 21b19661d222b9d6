//! One session's refiner: its graph states and buffers, a memo of recent frames' embeddings, and
//! the refinement of one mask. Buffers are sized when the session takes the refiner; the memo's
//! entries and the blob search's scratch grow with the first frames, then are reused.

use std::time::{Duration, Instant};

use super::boxes::{BoxFinder, BoxRule, PixelBox, MAX_BLOBS};
use super::graphs::GraphStates;
use super::Refiner;
use crate::error::Result;
use crate::image::{ImageView, MaskMut, OwnedImage, PixelFormat};
use crate::postprocess::{region_into_mask, threshold_logit, Placement};
use crate::preprocess::{frame_planes, normalise};

/// Wall-clock time of the last refinement, by stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RefineTimings {
    /// Finding the box in the first pass's mask.
    pub boxing: Duration,
    /// Resize, padding and normalisation of the frame (zero when its embedding was memoised).
    pub preprocess: Duration,
    /// The image encoder (zero when the frame's embedding was memoised).
    pub encoder: Duration,
    /// The prompt and mask decoder (once per box).
    pub decoder: Duration,
    /// Upsampling the refined logits to the frame and the threshold.
    pub postprocess: Duration,
}

impl RefineTimings {
    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.boxing + self.preprocess + self.encoder + self.decoder + self.postprocess
    }
}

/// A frame whose embedding is kept: its pixels (compared byte for byte) and the embedding.
struct Memo {
    frame: OwnedImage,
    embedding: Vec<f32>,
    last_used: u64,
}

/// The refiner's graphs and buffers for one session.
pub(crate) struct RefineRunner {
    refiner: Refiner,
    graphs: GraphStates,
    /// The encoder's input, C planes of N×N.
    input: Vec<f32>,
    /// The resized frame's planes before padding.
    planes: Vec<f32>,
    /// The decoder's logits, M×M.
    logits: Vec<f32>,
    memo: Vec<Memo>,
    capacity: usize,
    clock: u64,
    finder: BoxFinder,
    cut: f32,
    timings: RefineTimings,
}

impl RefineRunner {
    /// A runner keeping the embeddings of up to `capacity` (≥ 1) recent frames.
    pub(crate) fn new(refiner: Refiner, capacity: usize) -> Result<RefineRunner> {
        let m = refiner.manifest();
        let (n, c, out) = (m.input_size, m.colour.channels(), m.output_size());
        Ok(RefineRunner {
            graphs: refiner.graphs().states(m)?,
            input: vec![0.0; c * n * n],
            planes: vec![0.0; c * n * n],
            logits: vec![0.0; out * out],
            memo: Vec::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            clock: 0,
            finder: BoxFinder::new(),
            cut: threshold_logit(m.threshold),
            timings: RefineTimings::default(),
            refiner,
        })
    }

    /// The refiner this runner runs.
    pub(crate) fn refiner(&self) -> &Refiner {
        &self.refiner
    }

    /// The refiner's logits (M×M, the whole square) of the last refinement.
    pub(crate) fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Stage timings of the last [`RefineRunner::refine`].
    pub(crate) fn timings(&self) -> RefineTimings {
        self.timings
    }

    /// Redraws `mask` (the first pass's, at `frame`'s size) inside the boxes around its
    /// foreground by `rule`, each grown by `margin`: inside them the mask becomes the union of the
    /// refiner's masks for each box; outside them it stays as it was. Returns the box holding
    /// them all; an empty mask stays empty (`None`).
    pub(crate) fn refine(
        &mut self,
        frame: &ImageView,
        mask: &mut MaskMut,
        rule: BoxRule,
        margin: f32,
    ) -> Result<Option<PixelBox>> {
        let (w, h) = (frame.width(), frame.height());
        debug_assert_eq!((mask.width(), mask.height()), (w, h));
        let mut t = RefineTimings::default();
        let started = Instant::now();
        let mut boxes = [PixelBox { x0: 0.0, y0: 0.0, x1: 0.0, y1: 0.0 }; MAX_BLOBS];
        let found = self.finder.find(mask, rule);
        let n = found.len();
        for (b, rect) in boxes.iter_mut().zip(found) {
            *b = PixelBox::of(*rect).with_margin(margin, w, h);
        }
        t.boxing = started.elapsed();
        if n == 0 {
            self.timings = t;
            return Ok(None);
        }
        let entry = self.embed(frame, &mut t)?;
        for b in &boxes[..n] {
            mask.crop(b.pixels())?.fill(0);
        }
        for b in &boxes[..n] {
            self.decode(entry, *b, w.max(h), &mut t)?;
            let started = Instant::now();
            let m = self.refiner.manifest();
            let (nw, nh) = fitted(w, h, m.input_size);
            let out = m.output_size();
            let region = |side: usize| (side * out).div_ceil(m.input_size).clamp(1, out);
            let rect = b.pixels();
            let place = Placement { frame: (w, h), at: (rect.x, rect.y) };
            region_into_mask(&self.logits, out, (region(nw), region(nh)), place, self.cut, &mut mask.crop(rect)?);
            t.postprocess += started.elapsed();
        }
        self.timings = t;
        Ok(Some(boxes[1..n].iter().fold(boxes[0], |all, b| all.union(*b))))
    }

    /// Runs the decoder on the embedding of memo `entry` with `pixel_box` (frame pixels of a frame
    /// whose longer side is `longer`) into `self.logits`.
    fn decode(&mut self, entry: usize, pixel_box: PixelBox, longer: usize, t: &mut RefineTimings) -> Result<()> {
        let started = Instant::now();
        let scale = self.refiner.manifest().input_size as f32 / longer as f32;
        let b = [pixel_box.x0 * scale, pixel_box.y0 * scale, pixel_box.x1 * scale, pixel_box.y1 * scale];
        self.graphs.decode(&self.memo[entry].embedding, &b, &mut self.logits)?;
        t.decoder += started.elapsed();
        Ok(())
    }

    /// The memo entry holding `frame`'s embedding, running the encoder when no entry does.
    fn embed(&mut self, frame: &ImageView, t: &mut RefineTimings) -> Result<usize> {
        self.clock += 1;
        if let Some(i) = self.memo.iter().position(|e| e.frame.holds(frame)) {
            self.memo[i].last_used = self.clock;
            return Ok(i);
        }
        let started = Instant::now();
        self.prepare(frame);
        t.preprocess = started.elapsed();
        let started = Instant::now();
        let (memo, capacity, clock) = (&mut self.memo, self.capacity, self.clock);
        let mut slot = 0;
        self.graphs.encode(&self.input, |embedding| {
            slot = if memo.len() < capacity {
                memo.push(Memo {
                    frame: OwnedImage::zeros(0, 0, PixelFormat::Gray8),
                    embedding: vec![0.0; embedding.len()],
                    last_used: 0,
                });
                memo.len() - 1
            } else {
                (0..memo.len()).min_by_key(|&i| memo[i].last_used).expect("capacity ≥ 1")
            };
            let entry = &mut memo[slot];
            entry.embedding.copy_from_slice(embedding);
            entry.frame.copy_from(frame);
            entry.last_used = clock;
        })?;
        t.encoder = started.elapsed();
        Ok(slot)
    }

    /// Writes the encoder's input for `frame`: resized to fit N×N with its aspect ratio, in the
    /// top-left corner, normalised over the resized frame, zero elsewhere.
    fn prepare(&mut self, frame: &ImageView) {
        let m = self.refiner.manifest();
        let (n, c) = (m.input_size, m.colour.channels());
        let (nw, nh) = fitted(frame.width(), frame.height(), n);
        let planes = &mut self.planes[..c * nw * nh];
        frame_planes(frame, m.colour, (nw, nh), planes);
        normalise(&m.normalisation, nw * nh, planes);
        self.input.fill(0.0);
        for (dst, src) in self.input.chunks_exact_mut(n * n).zip(planes.chunks_exact(nw * nh)) {
            for (d, s) in dst.chunks_exact_mut(n).zip(src.chunks_exact(nw)) {
                d[..nw].copy_from_slice(s);
            }
        }
    }
}

/// Width and height of a `width`×`height` frame resized so that its longer side is `n`.
pub(crate) fn fitted(width: usize, height: usize, n: usize) -> (usize, usize) {
    let longer = width.max(height);
    let side = |s: usize| ((s * n) as f64 / longer as f64).round().clamp(1.0, n as f64) as usize;
    (side(width), side(height))
}

#[cfg(test)]
mod tests {
    use super::fitted;

    #[test]
    fn frames_are_fitted_by_their_longer_side() {
        assert_eq!(fitted(320, 256, 256), (256, 205));
        assert_eq!(fitted(100, 400, 256), (64, 256));
        assert_eq!(fitted(64, 64, 256), (256, 256));
        assert_eq!(fitted(5000, 1, 256), (256, 1));
    }
}
