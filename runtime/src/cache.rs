//! The context cache: up to three shots' context tokens in one fixed buffer laid out as the
//! decoder's `ctx` input, with a validity row, a content hash per slot and a generation counter.

use std::hash::{Hash, Hasher};

use crate::image::ImageView;
use crate::manifest::MAX_SHOTS;

/// Cached context of up to [`MAX_SHOTS`] shots; sized once, never reallocated.
#[derive(Debug, Clone)]
pub struct ContextCache {
    tokens: usize,
    width: usize,
    ctx: Vec<f32>,
    valid: Vec<f32>,
    hashes: heapless::LinearMap<usize, u64, MAX_SHOTS>,
    generation: u64,
}

impl ContextCache {
    /// An empty cache for `tokens` tokens of `width` floats per shot.
    pub fn new(tokens: usize, width: usize) -> Self {
        ContextCache {
            tokens,
            width,
            ctx: vec![0.0; MAX_SHOTS * tokens * width],
            valid: vec![0.0; MAX_SHOTS * tokens],
            hashes: heapless::LinearMap::new(),
            generation: 0,
        }
    }

    /// The decoder's `ctx` input: S·T tokens of D floats, zeros in empty slots.
    pub fn ctx(&self) -> &[f32] {
        &self.ctx
    }

    /// The decoder's `ctx_valid` input: 1 for tokens of a set slot, 0 for padding.
    pub fn valid(&self) -> &[f32] {
        &self.valid
    }

    /// Shots currently set.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when no shot is set.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Bumped on every change of the context.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Content hash of the shot in `slot`, if set.
    pub fn hash(&self, slot: usize) -> Option<u64> {
        self.hashes.get(&slot).copied()
    }

    /// The slots holding a shot with content hash `hash` (a hash match is a candidate: compare
    /// the shots themselves before reusing one).
    pub fn slots_with(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        self.hashes.iter().filter(move |(_, h)| **h == hash).map(|(s, _)| *s)
    }

    /// The tokens of `slot` (T×D).
    pub fn tokens(&self, slot: usize) -> &[f32] {
        let n = self.tokens * self.width;
        &self.ctx[slot * n..(slot + 1) * n]
    }

    /// Stores `tokens` (T×D) with its content hash in `slot` (< [`MAX_SHOTS`]).
    pub fn store(&mut self, slot: usize, hash: u64, tokens: &[f32]) {
        let n = self.tokens * self.width;
        self.ctx[slot * n..(slot + 1) * n].copy_from_slice(tokens);
        self.valid[slot * self.tokens..(slot + 1) * self.tokens].fill(1.0);
        // The map has one key per slot and slot < MAX_SHOTS, so it never overflows.
        let _ = self.hashes.insert(slot, hash);
        self.generation += 1;
    }

    /// Copies the shot in `from` into `to`.
    pub fn copy(&mut self, from: usize, to: usize) {
        let n = self.tokens * self.width;
        let hash = self.hashes.get(&from).copied().expect("copy from a set slot");
        self.ctx.copy_within(from * n..(from + 1) * n, to * n);
        self.valid[to * self.tokens..(to + 1) * self.tokens].fill(1.0);
        let _ = self.hashes.insert(to, hash);
        self.generation += 1;
    }

    /// Empties `slot`; returns whether it held a shot.
    pub fn clear(&mut self, slot: usize) -> bool {
        if self.hashes.remove(&slot).is_none() {
            return false;
        }
        let n = self.tokens * self.width;
        self.ctx[slot * n..(slot + 1) * n].fill(0.0);
        self.valid[slot * self.tokens..(slot + 1) * self.tokens].fill(0.0);
        self.generation += 1;
        true
    }
}

/// A hash of a shot's pixels and mask (rows only, stride padding ignored), so that setting the
/// same shot again is recognised without running the encoder.
pub fn content_hash(image: &ImageView, mask: &ImageView) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for view in [image, mask] {
        (view.width(), view.height(), view.format()).hash(&mut h);
        for y in 0..view.height() {
            h.write(view.row(y));
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_clear_copy_keep_layout_and_generation() {
        let mut c = ContextCache::new(2, 3);
        assert!(c.is_empty());
        c.store(1, 42, &[1.0; 6]);
        assert_eq!(c.valid(), &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(&c.ctx()[6..12], &[1.0; 6]);
        assert_eq!(c.slots_with(42).collect::<Vec<_>>(), [1]);
        c.copy(1, 2);
        assert_eq!(c.tokens(2), &[1.0; 6]);
        assert_eq!(c.len(), 2);
        assert!(c.clear(1));
        assert!(!c.clear(1));
        assert_eq!(c.valid(), &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(c.generation(), 3);
    }
}
