//! 3×3 stride-1 convolutions by Winograd's F(2×2, 3×3): each 2×2 block of outputs (a *tile*)
//! comes from the 4×4 input patch under it with 16 multiplies per input channel instead of 36.
//!
//! With G the 4×3 weight transform, Bᵀ the 4×4 input transform and Aᵀ the 2×4 output transform
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
//! - the weights are transformed once, at open, into 16 matrices U_ξν (c_out × c_in,
//!   U = G g Gᵀ per channel pair), packed for the tile kernel;
//! - per block of `nr` tiles (one B panel), each input channel's patches are transformed into 16
//!   panels V_ξν (V = Bᵀ d B), the 16 products M_ξν = U_ξν · V_ξν run on the f32 tile kernel, and
//!   every output tile is Aᵀ M A, stored with the bias, residual and activation.
//!
//! The transforms are AVX-512 code, 16 tiles of a tile row per vector (the patches' columns
//! deinterleaved from two loads of the padded input); convolutions on other CPUs run directly
//! ([`fits`] is false there). A block's panels stay in the cache between the input transform,
//! the products and the output transform. The transforms only add and subtract, so the sums
//! differ from the direct convolution's by rounding alone.

use super::gemm::{self, Epilogue, Isa, Panel};
use super::pool::Threads;
use crate::backend::plan::{Op, Window};

/// Tiles per vector of the transforms.
const LANES: usize = 16;

/// Whether the convolution `op` runs here: one group, 3×3 taps, stride 1, no dilation, at least
/// one whole tile, enough channels for the transforms to pay, on the AVX-512 tile kernel.
pub fn fits(op: &Op, isa: Isa) -> bool {
    let &Op::Conv { c_in, c_out, window, dilation, groups, .. } = op else { return false };
    let Window { kernel, stride, out_h, out_w, .. } = window;
    kernel == [3, 3]
        && stride == [1, 1]
        && dilation == [1, 1]
        && groups == 1
        && out_h >= 2
        && out_w >= 2
        && c_in >= 8
        && c_out >= isa.mr()
        && isa == Isa::Avx512
}

/// The 16 transformed weight matrices of `weights` (c_out × c_in × 3 × 3), each packed for the
/// tile kernel of `isa`: matrix ξ·4 + ν at ξ·4 + ν times [`gemm::packed_len`] (c_out, c_in).
pub fn pack_weights(weights: &[f32], c_out: usize, c_in: usize, isa: Isa) -> Vec<f32> {
    const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
    let mut u = vec![0f32; 16 * c_out * c_in];
    for (pair, g) in weights.chunks_exact(9).take(c_out * c_in).enumerate() {
        // G g Gᵀ, in f64 (the halves are exact; the sums round once).
        let gg: [[f64; 3]; 4] = G.map(|row| [0, 1, 2].map(|x| (0..3).map(|y| row[y] * f64::from(g[y * 3 + x])).sum()));
        for (xi, row) in gg.iter().enumerate() {
            for (nu, g_row) in G.iter().enumerate() {
                u[(xi * 4 + nu) * c_out * c_in + pair] = (0..3).map(|x| row[x] * g_row[x]).sum::<f64>() as f32;
            }
        }
    }
    let per = gemm::packed_len(c_out, c_in, isa.mr());
    let mut packed = vec![0f32; 16 * per];
    for (matrix, dst) in u.chunks_exact(c_out * c_in).zip(packed.chunks_exact_mut(per)) {
        gemm::pack_a(gemm::Matrix::dense(matrix, c_out, c_in), isa.mr(), dst);
    }
    packed
}

/// Height and width of the padded input planes: whole tiles plus the patch's overhang.
fn padded_plane(window: &Window) -> [usize; 2] {
    [2 * window.out_h.div_ceil(2) + 2, 2 * window.out_w.div_ceil(2) + 2]
}

/// Floats of shared scratch: the padded input.
pub fn shared_len(window: &Window, c_in: usize) -> usize {
    let [ph, pw] = padded_plane(window);
    c_in * ph * pw
}

/// Floats of each thread's own scratch: one block's 16 input panels and 16 product panels.
pub fn thread_len(c_in: usize, c_out: usize, isa: Isa) -> usize {
    16 * (c_in + c_out.next_multiple_of(isa.mr())) * isa.nr()
}

/// The tiles `first..first + n` of a row-major grid `tiles_w` tiles wide, in pieces of at most
/// [`LANES`] within a tile row: each (tile row, first tile column, position in the block, length).
fn runs(first: usize, n: usize, tiles_w: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let mut j = 0;
    std::iter::from_fn(move || {
        (j < n).then(|| {
            let t = first + j;
            let (ty, tx) = (t / tiles_w, t % tiles_w);
            let len = (tiles_w - tx).min(n - j).min(LANES);
            j += len;
            (ty, tx, j - len, len)
        })
    })
}

/// Runs the convolution: `x` (c_in planes of `window`'s h × w) into `out` (c_out planes of
/// out_h × out_w) with `u` from [`pack_weights`] and the epilogue's bias (one per channel),
/// residual (laid out as `out`) and activation. `scratch` holds at least [`shared_len`] floats;
/// each thread's panel at least [`thread_len`]. Output channels are split over `threads` in
/// whole panels of the tile kernel's rows.
#[allow(clippy::too_many_arguments)]
pub fn run(
    isa: Isa,
    window: &Window,
    [c_in, c_out]: [usize; 2],
    x: &[f32],
    u: &[f32],
    epilogue: Epilogue,
    out: &mut [f32],
    scratch: &mut [f32],
    threads: &Threads,
) {
    let Window { h, w, out_h, out_w, .. } = *window;
    let (mr, nr) = (isa.mr(), isa.nr());
    assert!(isa == Isa::Avx512, "Winograd convolutions run on AVX-512 only");
    let [ph, pw] = padded_plane(window);
    let (tiles_h, tiles_w) = (out_h.div_ceil(2), out_w.div_ceil(2));
    let tiles = tiles_h * tiles_w;
    let p = out_h * out_w;
    let cost = 16 * c_out * c_in * tiles;
    let per = gemm::packed_len(c_out, c_in, mr);
    assert!(u.len() >= 16 * per && x.len() >= c_in * h * w, "the operands match the convolution");
    let padded = &mut scratch[..c_in * ph * pw];
    let unstrided = Window { stride: [1, 1], ..*window };
    threads.split(padded, ph * pw, c_in, cost, |_, cs, dst| {
        super::kernels::phase_planes(&x[cs.start * h * w..], cs.len(), &unstrided, [ph, pw], dst);
    });
    let padded = &*padded;
    let (lo, hi) = epilogue.activation.bounds();
    threads.split(out, mr * p, c_out.div_ceil(mr), cost, |index, panels, out| {
        let channels = panels.start * mr..(panels.end * mr).min(c_out);
        let k_out = channels.len();
        let mut buffer = threads.panel(index);
        let (v, m) = buffer[..thread_len(c_in, c_out, isa)].split_at_mut(16 * c_in * nr);
        for first in (0..tiles).step_by(nr) {
            let n = nr.min(tiles - first);
            // V: each input channel's patches, a piece of a tile row at a time, as Bᵀ d B.
            for c in 0..c_in {
                let plane = &padded[c * ph * pw..][..ph * pw];
                for (ty, tx, j, len) in runs(first, n, tiles_w) {
                    // The patches' four rows, each from column 2 · tx on (2 · len + 2 floats).
                    let rows: [&[f32]; 4] =
                        std::array::from_fn(|r| &plane[(2 * ty + r) * pw + 2 * tx..][..2 * len + 2]);
                    let at = c * nr + j;
                    assert!(16 * c_in * nr <= v.len() && at + len <= c_in * nr, "the panels hold the tiles");
                    // SAFETY: AVX-512 is present (asserted above); every row holds 2 · len + 2
                    // floats and each of the 16 panels (c_in · nr floats apart) len from `at`.
                    unsafe { x86::input(rows, len, v[at..].as_mut_ptr(), c_in * nr) };
                }
            }
            // M = U · V for each of the 16 (ξ, ν), on this part's channels (in the last block,
            // the columns past its tiles hold what earlier blocks left: their products are
            // never read).
            for (i, (v, m)) in v.chunks_exact(c_in * nr).zip(m.chunks_exact_mut(k_out * nr)).enumerate() {
                let a = &u[i * per + panels.start * c_in * mr..][..(panels.end - panels.start) * c_in * mr];
                gemm::panel_product(isa, k_out, nr, c_in, a, Panel::Packed(v), m, nr, 0, Epilogue::NONE);
            }
            // Y = Aᵀ M A, stored with the epilogue.
            let m = &*m;
            for k in 0..k_out {
                let co = channels.start + k;
                let bias = epilogue.bias.map_or(0.0, |b| b[co]);
                for (ty, tx, j, len) in runs(first, n, tiles_w) {
                    let (ox, width) = (2 * tx, (2 * len).min(out_w - 2 * tx));
                    let products = &m[k * nr + j..];
                    assert!(products.len() >= 15 * k_out * nr + len, "the products hold the tiles");
                    for a in 0..2.min(out_h - 2 * ty) {
                        let at = (2 * ty + a) * out_w + ox;
                        let dst = &mut out[k * p + at..][..width];
                        let residual = epilogue.residual.map(|r| &r[co * p + at..][..width]);
                        let store =
                            x86::Store { bias, lo, hi, residual: residual.map_or(std::ptr::null(), <[f32]>::as_ptr) };
                        // SAFETY: AVX-512 is present; the products hold 16 rows (k_out · nr floats
                        // apart) of len; `dst` (and the residual) hold `width` ≤ 2 · len floats.
                        unsafe { x86::output(products.as_ptr(), k_out * nr, len, a, dst, &store) };
                    }
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// What the output transform adds to each value before it clamps it to `lo..=hi`.
    pub struct Store {
        pub bias: f32,
        pub lo: f32,
        pub hi: f32,
        /// Laid out as the destination, or null.
        pub residual: *const f32,
    }

    /// The first `n` (≤ 32) bits set.
    fn mask(n: usize) -> u32 {
        if n >= 32 {
            u32::MAX
        } else {
            (1u32 << n) - 1
        }
    }

    /// Bᵀ's rows over four vectors: x0 − x2, x1 + x2, x2 − x1, x1 − x3.
    #[inline(always)]
    unsafe fn input_rows([x0, x1, x2, x3]: [__m512; 4]) -> [__m512; 4] {
        [_mm512_sub_ps(x0, x2), _mm512_add_ps(x1, x2), _mm512_sub_ps(x2, x1), _mm512_sub_ps(x1, x3)]
    }

    /// Aᵀ's rows over four vectors: x0 + x1 + x2, x1 − x2 − x3.
    #[inline(always)]
    unsafe fn output_rows([x0, x1, x2, x3]: [__m512; 4]) -> [__m512; 2] {
        [_mm512_add_ps(_mm512_add_ps(x0, x1), x2), _mm512_sub_ps(_mm512_sub_ps(x1, x2), x3)]
    }

    /// V = Bᵀ d B of `len` (≤ 16) consecutive tiles of a tile row, whose patches' rows start at
    /// `rows` (tile t's patch at columns 2t..2t + 4); element ξ·4 + ν goes to `v + (ξ·4 + ν) ·
    /// stride`, tile t at offset t.
    ///
    /// # Safety
    /// The CPU has AVX-512F; each row holds 2 · len + 2 floats; `v` has room for 16 runs of len
    /// floats `stride` apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn input(rows: [&[f32]; 4], len: usize, v: *mut f32, stride: usize) {
        let (evens, odds) = (_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), {
            _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
        });
        let (lo, hi) = (mask(2 * len) as u16, (mask(2 * len) >> 16) as u16);
        // d[r] = the patch elements (r, 0..4) of every tile: columns 2t + q.
        let d = rows.map(|row| {
            let load = |at: usize| {
                let p = row.as_ptr().add(at);
                (_mm512_maskz_loadu_ps(lo, p), _mm512_maskz_loadu_ps(hi, p.add(16)))
            };
            let ((a0, a1), (b0, b1)) = (load(0), load(2));
            [
                _mm512_permutex2var_ps(a0, evens, a1),
                _mm512_permutex2var_ps(a0, odds, a1),
                _mm512_permutex2var_ps(b0, evens, b1),
                _mm512_permutex2var_ps(b0, odds, b1),
            ]
        });
        let k = mask(len) as u16;
        let columns: [[__m512; 4]; 4] = std::array::from_fn(|q| input_rows([d[0][q], d[1][q], d[2][q], d[3][q]]));
        let rows: [[__m512; 4]; 4] =
            std::array::from_fn(|xi| input_rows([columns[0][xi], columns[1][xi], columns[2][xi], columns[3][xi]]));
        for (xi, row) in rows.iter().enumerate() {
            for (nu, &value) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(v.add((xi * 4 + nu) * stride), k, value);
            }
        }
    }

    /// Row `a` of Y = Aᵀ M A for `len` (≤ 16) tiles, whose products M_ξν lie at `m + (ξ·4 + ν) ·
    /// stride`, tile t at offset t: the first `dst.len()` (≤ 2 · len) values, tile t's two at
    /// 2t and 2t + 1, stored through `store`'s epilogue.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `m` holds 16 runs of len floats `stride` apart; `store.residual`
    /// is null or holds `dst.len()` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn output(m: *const f32, stride: usize, len: usize, a: usize, dst: &mut [f32], store: &Store) {
        let k = mask(len) as u16;
        let product = |i: usize| _mm512_maskz_loadu_ps(k, m.add(i * stride));
        // s = Aᵀ M: row a of it, for each column ν; then y = s A.
        let s: [__m512; 4] =
            std::array::from_fn(|nu| output_rows([product(nu), product(4 + nu), product(8 + nu), product(12 + nu)])[a]);
        let [y0, y1] = output_rows(s);
        // Interleaved: y0[0], y1[0], y0[1], y1[1], ...
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let (bias, lo, hi) = (_mm512_set1_ps(store.bias), _mm512_set1_ps(store.lo), _mm512_set1_ps(store.hi));
        let width = dst.len().min(2 * len);
        for (half, index) in [low, high].into_iter().enumerate() {
            let k = (mask(width.saturating_sub(16 * half)) & 0xffff) as u16;
            if k == 0 {
                break;
            }
            let mut v = _mm512_add_ps(_mm512_permutex2var_ps(y0, index, y1), bias);
            if !store.residual.is_null() {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, store.residual.add(16 * half)));
            }
            // max/min return their second operand when one is NaN: NaN stays NaN.
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(16 * half), k, _mm512_min_ps(hi, _mm512_max_ps(lo, v)));
        }
    }
}
