//! Support-side ensembling: the extra views of a shot an engine's manifest asks for
//! ([`ShotView`]), made from the shot's encoder inputs, and putting a mirrored view's grid tokens
//! back in order ([`TokenGrid`]). The session averages the tokens of the shot and its views.

use crate::manifest::{ShotView, TokenGrid};

/// Writes `view` of a shot's encoder inputs: `image` (C planes of R×R, normalised) and `mask`
/// (R×R) into `view_image` and `view_mask` of the same lengths.
pub fn apply(view: &ShotView, r: usize, image: &[f32], mask: &[f32], view_image: &mut [f32], view_mask: &mut [f32]) {
    debug_assert!(image.len() == view_image.len() && mask.len() == view_mask.len() && mask.len() == r * r);
    copy_rows(view.mirror, r, image, view_image);
    copy_rows(view.mirror, r, mask, view_mask);
    if view.gamma != 1.0 {
        // Min-max values are within 0..=1, so the power keeps them there (0 and 1 stay).
        view_image.iter_mut().for_each(|v| *v = v.max(0.0).powf(view.gamma));
    }
}

/// Copies planes of rows of `r` values, each row reversed when `mirror`.
fn copy_rows(mirror: bool, r: usize, from: &[f32], to: &mut [f32]) {
    if !mirror {
        to.copy_from_slice(from);
        return;
    }
    for (dst, src) in to.chunks_exact_mut(r).zip(from.chunks_exact(r)) {
        dst.iter_mut().zip(src.iter().rev()).for_each(|(d, s)| *d = *s);
    }
}

/// Reverses the columns of `grid`'s tokens in a shot's `tokens` (each `width` floats), so that a
/// mirrored view's grid tokens line up with the unmirrored shot's.
pub fn unmirror_grid(grid: TokenGrid, width: usize, tokens: &mut [f32]) {
    let side = grid.side;
    for row in 0..side {
        for column in 0..side / 2 {
            let a = (grid.first + row * side + column) * width;
            let b = (grid.first + row * side + side - 1 - column) * width;
            let (left, right) = tokens.split_at_mut(b);
            left[a..a + width].swap_with_slice(&mut right[..width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirrored_gamma_view_reverses_rows_and_raises_the_image() {
        let image = [0.0, 0.25, 1.0, 0.5, 0.5, 0.0, 1.0, 0.0, 0.25];
        let mask = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let (mut vi, mut vm) = ([9.0; 9], [9.0; 9]);
        apply(&ShotView { mirror: true, gamma: 2.0 }, 3, &image, &mask, &mut vi, &mut vm);
        assert_eq!(vi, [1.0, 0.0625, 0.0, 0.0, 0.25, 0.25, 0.0625, 0.0, 1.0]);
        assert_eq!(vm, [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
        apply(&ShotView { mirror: false, gamma: 1.0 }, 3, &image, &mask, &mut vi, &mut vm);
        assert_eq!((vi, vm), (image, mask));
    }

    #[test]
    fn unmirroring_reverses_the_columns_of_the_grid_only() {
        // One leading token, then a 3×3 grid, then one trailing token; width 2.
        let mut tokens: Vec<f32> = (0..11).flat_map(|t| [t as f32, -(t as f32)]).collect();
        unmirror_grid(TokenGrid { first: 1, side: 3 }, 2, &mut tokens);
        let order: Vec<f32> = tokens.chunks(2).map(|t| t[0]).collect();
        assert_eq!(order, [0.0, 3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0, 10.0]);
        assert!(tokens.chunks(2).all(|t| t[1] == -t[0]));
    }
}
