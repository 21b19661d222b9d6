//! The box prompts: which foreground of the first pass's mask each box surrounds, and its margin.
//! Blobs are 8-connected; the scratch buffers grow with the largest frame seen, then are reused.

use crate::image::{MaskMut, Rect};

/// Which foreground of the first pass's mask the refiner's box surrounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoxRule {
    /// The largest 8-connected blob (the first in raster order on a tie): ignores stray
    /// specks, the best single rule for disc, cup and ventricle.
    LargestBlob,
    /// Every foreground pixel: for a target the first pass splits into several blobs.
    AllBlobs,
    /// A box per blob, for targets of several objects (nuclei, glands, cells): the
    /// [`MAX_BLOBS`] largest blobs of at least [`MIN_BLOB_SHARE`] of the largest one's area.
    EachBlob,
}

/// Most blobs [`BoxRule::EachBlob`] refines (each costs a decoder pass); smaller ones keep their
/// first-pass mask.
pub const MAX_BLOBS: usize = 8;

/// Smallest blob [`BoxRule::EachBlob`] refines, as a share of the largest blob's area.
pub const MIN_BLOB_SHARE: usize = 10;

impl BoxRule {
    /// Every rule, the default first.
    pub const ALL: [BoxRule; 3] = [BoxRule::LargestBlob, BoxRule::AllBlobs, BoxRule::EachBlob];

    /// The rule's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BoxRule::LargestBlob => "largest-blob",
            BoxRule::AllBlobs => "all-blobs",
            BoxRule::EachBlob => "each-blob",
        }
    }
}

impl std::str::FromStr for BoxRule {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        BoxRule::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            crate::Error::invalid(format!("unknown box rule `{s}`: choose largest-blob, all-blobs or each-blob"))
        })
    }
}

/// A box in frame pixels: the first and last column and row it covers (inclusive), as floats
/// because a margin need not be a whole pixel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelBox {
    /// First column.
    pub x0: f32,
    /// First row.
    pub y0: f32,
    /// Last column.
    pub x1: f32,
    /// Last row.
    pub y1: f32,
}

impl PixelBox {
    /// The box of the pixels of `rect`.
    pub fn of(rect: Rect) -> PixelBox {
        let (x, y) = (rect.x as f32, rect.y as f32);
        PixelBox { x0: x, y0: y, x1: x + rect.width as f32 - 1.0, y1: y + rect.height as f32 - 1.0 }
    }

    /// The whole pixels the box covers (its corners rounded outward).
    pub fn pixels(&self) -> Rect {
        let (x0, y0) = (self.x0.floor() as usize, self.y0.floor() as usize);
        let (x1, y1) = (self.x1.ceil() as usize, self.y1.ceil() as usize);
        Rect { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 }
    }

    /// The smallest box holding both.
    pub fn union(self, other: PixelBox) -> PixelBox {
        PixelBox {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }

    /// The box grown by `margin` × its width on the left and right and × its height at the top
    /// and bottom, then clipped to a `width`×`height` frame.
    pub fn with_margin(self, margin: f32, width: usize, height: usize) -> PixelBox {
        let (dx, dy) = (margin * (self.x1 - self.x0 + 1.0), margin * (self.y1 - self.y0 + 1.0));
        let (xmax, ymax) = (width as f32 - 1.0, height as f32 - 1.0);
        PixelBox {
            x0: (self.x0 - dx).clamp(0.0, xmax),
            y0: (self.y0 - dy).clamp(0.0, ymax),
            x1: (self.x1 + dx).clamp(0.0, xmax),
            y1: (self.y1 + dy).clamp(0.0, ymax),
        }
    }
}

/// Finds the boxes of a mask by a [`BoxRule`]; holds the scratch of the blob search.
#[derive(Debug, Default)]
pub struct BoxFinder {
    /// Per pixel: 0 unvisited background or foreground, 1 visited.
    seen: Vec<u8>,
    /// Pixels waiting in the flood fill.
    stack: Vec<u32>,
    /// The largest blobs found, largest first: (area, box).
    top: heapless::Vec<(usize, Rect), MAX_BLOBS>,
    /// The boxes of the last [`BoxFinder::find`].
    boxes: heapless::Vec<Rect, MAX_BLOBS>,
}

impl BoxFinder {
    /// A finder with no scratch yet (it grows on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// The boxes of the foreground (255) of `mask` by `rule`: one box, or for
    /// [`BoxRule::EachBlob`] up to [`MAX_BLOBS`], largest blob first; none when the mask is empty.
    pub fn find(&mut self, mask: &mut MaskMut, rule: BoxRule) -> &[Rect] {
        self.boxes.clear();
        match rule {
            BoxRule::AllBlobs => self.boxes.extend(foreground_box(mask)),
            BoxRule::LargestBlob => {
                self.blobs(mask);
                self.boxes.extend(self.top.first().map(|&(_, r)| r));
            }
            BoxRule::EachBlob => {
                self.blobs(mask);
                let largest = self.top.first().map_or(0, |&(a, _)| a);
                self.boxes.extend(self.top.iter().filter(|(a, _)| a * MIN_BLOB_SHARE >= largest).map(|&(_, r)| r));
            }
        }
        &self.boxes
    }

    /// The [`MAX_BLOBS`] largest 8-connected blobs into `top`, largest first (the first in
    /// raster order on a tie).
    fn blobs(&mut self, mask: &mut MaskMut) {
        let (w, h) = (mask.width(), mask.height());
        assert!(w.checked_mul(h).is_some_and(|n| n <= u32::MAX as usize), "mask of {w}×{h} is too large");
        self.seen.clear();
        self.seen.resize(w * h, 0);
        self.top.clear();
        for y in 0..h {
            for x in 0..w {
                if self.seen[y * w + x] != 0 || mask.row_mut(y)[x] != 255 {
                    continue;
                }
                let (area, rect) = self.flood(mask, x, y);
                let at = self.top.iter().position(|&(a, _)| area > a).unwrap_or(self.top.len());
                if at < MAX_BLOBS {
                    if self.top.is_full() {
                        self.top.pop();
                    }
                    self.top.insert(at, (area, rect)).expect("room was made");
                }
            }
        }
    }

    /// Marks the blob that holds (x, y) as seen; returns its area and bounding box.
    fn flood(&mut self, mask: &mut MaskMut, x: usize, y: usize) -> (usize, Rect) {
        let w = mask.width();
        let h = mask.height();
        let (mut x0, mut y0, mut x1, mut y1, mut area) = (x, y, x, y, 0usize);
        self.stack.clear();
        self.stack.push((y * w + x) as u32);
        self.seen[y * w + x] = 1;
        while let Some(i) = self.stack.pop() {
            let (px, py) = (i as usize % w, i as usize / w);
            area += 1;
            (x0, y0, x1, y1) = (x0.min(px), y0.min(py), x1.max(px), y1.max(py));
            for ny in py.saturating_sub(1)..(py + 2).min(h) {
                let first = px.saturating_sub(1);
                let row = &mask.row_mut(ny)[first..(px + 2).min(w)];
                for (nx, &v) in (first..).zip(row) {
                    let j = ny * w + nx;
                    if self.seen[j] == 0 && v == 255 {
                        self.seen[j] = 1;
                        self.stack.push(j as u32);
                    }
                }
            }
        }
        (area, Rect { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 })
    }
}

/// Bounding box of every foreground (255) pixel of `mask`; `None` when it has none.
fn foreground_box(mask: &mut MaskMut) -> Option<Rect> {
    let mut bounds: Option<(usize, usize, usize, usize)> = None;
    for y in 0..mask.height() {
        let row = mask.row_mut(y);
        let Some(first) = row.iter().position(|&v| v == 255) else { continue };
        let last = row.iter().rposition(|&v| v == 255).expect("the row has a foreground pixel");
        bounds = Some(match bounds {
            None => (first, y, last, y),
            Some((x0, y0, x1, _)) => (x0.min(first), y0, x1.max(last), y),
        });
    }
    bounds.map(|(x0, y0, x1, y1)| Rect { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask from rows of `#` (foreground) and `.`.
    fn mask(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let data = rows.iter().flat_map(|r| r.bytes().map(|b| if b == b'#' { 255 } else { 0 })).collect();
        (data, rows[0].len(), rows.len())
    }

    /// The boxes by each rule: largest blob, all blobs, each blob.
    fn boxes(rows: &[&str]) -> [Vec<Rect>; 3] {
        let (mut data, w, h) = mask(rows);
        let mut finder = BoxFinder::new();
        let mut view = MaskMut::packed(&mut data, w, h).unwrap();
        BoxRule::ALL.map(|rule| finder.find(&mut view, rule).to_vec())
    }

    fn rect(x: usize, y: usize, width: usize, height: usize) -> Rect {
        Rect { x, y, width, height }
    }

    #[test]
    fn one_blob_gives_the_same_box_by_both_rules() {
        let b = boxes(&["......", "..##..", "..###.", "......"]);
        assert_eq!(b, [vec![rect(2, 1, 3, 2)], vec![rect(2, 1, 3, 2)], vec![rect(2, 1, 3, 2)]]);
    }

    #[test]
    fn several_blobs_largest_or_all() {
        // A 2-pixel speck top left, a 6-pixel blob bottom right; a diagonal neighbour joins.
        let b = boxes(&["##......", "........", ".....##.", "....##..", "......##"]);
        assert_eq!(b[0], [rect(4, 2, 4, 3)]);
        assert_eq!(b[1], [rect(0, 0, 8, 5)]);
        assert_eq!(b[2], [rect(4, 2, 4, 3), rect(0, 0, 2, 1)], "each blob, largest first");
        // On a tie the first blob in raster order wins.
        let b = boxes(&["#..#", "....", "...."]);
        assert_eq!(b, [vec![rect(0, 0, 1, 1)], vec![rect(0, 0, 4, 1)], vec![rect(0, 0, 1, 1), rect(3, 0, 1, 1)]]);
    }

    #[test]
    fn an_empty_mask_has_no_box() {
        assert!(boxes(&["....", "...."]).iter().all(Vec::is_empty));
    }

    #[test]
    fn each_blob_keeps_the_largest_blobs_above_a_share_of_the_largest() {
        // Ten blobs: one of 12 pixels (a 6×2 bar), nine single pixels (under a tenth of 12: 1.2).
        let rows = ["######.#.#.#.#", "######........", "..............", "#.#.#.#.#.....", ".............."];
        let b = boxes(&rows);
        assert_eq!(b[2], [rect(0, 0, 6, 2)]);
        // Twelve equal blobs: the first eight in raster order.
        let rows = ["#.#.#.#.#.#.", "............", "#.#.#.#.#.#."];
        let b = boxes(&rows);
        let expected: Vec<Rect> =
            (0..6).map(|i| rect(2 * i, 0, 1, 1)).chain((0..2).map(|i| rect(2 * i, 2, 1, 1))).collect();
        assert_eq!(b[2], expected);
    }

    #[test]
    fn blobs_touching_the_border() {
        let b = boxes(&["###", "#..", "#.#"]);
        assert_eq!(b[..2], [vec![rect(0, 0, 3, 3)], vec![rect(0, 0, 3, 3)]]);
        assert_eq!(b[2], [rect(0, 0, 3, 3), rect(2, 2, 1, 1)], "the speck holds a fifth of the largest blob's area");
        let b = boxes(&["#.#", "...", "#.#"]);
        assert_eq!(b[..2], [vec![rect(0, 0, 1, 1)], vec![rect(0, 0, 3, 3)]]);
        assert_eq!(b[2].len(), 4);
        // A whole frame of foreground.
        assert_eq!(boxes(&["##", "##"]), [vec![rect(0, 0, 2, 2)], vec![rect(0, 0, 2, 2)], vec![rect(0, 0, 2, 2)]]);
    }

    #[test]
    fn margins_grow_by_the_box_size_and_clip_to_the_frame() {
        // Columns 10..=29 (20 wide) and rows 5..=14 (10 high): 5 % is 1 and 0.5 pixels.
        let b = PixelBox::of(Rect { x: 10, y: 5, width: 20, height: 10 });
        assert_eq!(b, PixelBox { x0: 10.0, y0: 5.0, x1: 29.0, y1: 14.0 });
        assert_eq!(b.with_margin(0.05, 100, 100), PixelBox { x0: 9.0, y0: 4.5, x1: 30.0, y1: 14.5 });
        assert_eq!(b.with_margin(1.0, 40, 20), PixelBox { x0: 0.0, y0: 0.0, x1: 39.0, y1: 19.0 });
        assert_eq!(b.with_margin(0.0, 100, 100), b);
        assert_eq!(b.with_margin(0.05, 100, 100).pixels(), Rect { x: 9, y: 4, width: 22, height: 12 });
        let other = PixelBox { x0: 0.0, y0: 20.0, x1: 3.0, y1: 30.0 };
        assert_eq!(b.union(other), PixelBox { x0: 0.0, y0: 5.0, x1: 29.0, y1: 30.0 });
    }

    #[test]
    fn rules_by_name() {
        assert_eq!("all-blobs".parse::<BoxRule>().unwrap(), BoxRule::AllBlobs);
        assert_eq!("each-blob".parse::<BoxRule>().unwrap(), BoxRule::EachBlob);
        assert!("biggest".parse::<BoxRule>().unwrap_err().to_string().contains("largest-blob"));
    }
}
