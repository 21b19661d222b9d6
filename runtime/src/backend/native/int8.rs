//! int8 convolutions: the convolutions of an int8 engine whose input is quantised (a
//! [`UnaryKind::Quantize`](crate::backend::plan::UnaryKind::Quantize) step) and whose weights
//! are int8 with one scale per output channel.
//!
//! - The input is quantised once per frame into a byte buffer: four input channels side by side
//!   (a *quad*), padded with the zero level, one grid per stride phase. Every tap of a tile then
//!   reads its 4 × [`NR`] bytes in place, contiguous, with no im2col. Each tile covers NR
//!   consecutive positions of a phase grid's rows; the positions past the output width are
//!   computed and dropped.
//! - Weights are packed at open in panels of [`MR`] output channels, 4 bytes per (quad, tap).
//! - A tile is MR × NR sums of u8 × i8 products in i32: `vpdpbusd` on AVX-512 VNNI (512-bit) or
//!   AVX-VNNI (256-bit, CPUs without AVX-512), `sdot` on aarch64 with the dot-product extension
//!   (Jetson Orin's Cortex-A78AE; the bytes flipped to i8 and the offset added back), plain Rust
//!   elsewhere. The sums are exact, so every kernel gives the same result bit for bit.
//! - The store scales each sum to f32 (input scale × the channel's weight scale) and fuses the
//!   bias, a residual and the activation.
//!
//! A NaN in the input (the only non-finite value that quantising would hide) makes the whole
//! output NaN, so that the runtime still refuses the frame.

use super::gemm::Activation;
use super::pool::Threads;
use crate::backend::plan::{Int8, Op, Window};

/// Output channels per tile.
pub const MR: usize = 8;
/// Grid positions per tile.
pub const NR: usize = 32;

/// Most bytes of quantised input a convolution may need (256 MiB): a hostile geometry (huge
/// padding with a huge stride) is left to the float path instead of allocating without bound.
const MAX_BUFFER: usize = 1 << 28;

/// 1.5 · 2²³: adding and subtracting it rounds an f32 of magnitude under 2²² to an integer,
/// ties to even (the FPU's default rounding), as ONNX QuantizeLinear rounds.
const ROUND: f32 = 12_582_912.0;

/// The tile kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI: sixteen 512-bit accumulators.
    Vnni,
    /// AVX-VNNI (256-bit, with AVX2): eight 256-bit accumulators per 8 positions.
    AvxVnni,
    /// aarch64 `sdot` (the dot-product extension): sixteen 128-bit accumulators per 8 positions.
    Dot,
    /// Plain Rust.
    Portable,
}

impl Kernel {
    /// The int8 kernel of the running CPU, if it has one faster than the f32 path (AVX-512 VNNI,
    /// AVX-VNNI, aarch64 `sdot`); none elsewhere, where the portable kernel is several times
    /// slower than the f32 tiles and int8 convolutions had better run in f32.
    pub fn detect() -> Option<Kernel> {
        [Kernel::Vnni, Kernel::AvxVnni, Kernel::Dot].into_iter().find(|k| k.supported())
    }

    /// Whether the running CPU can run this kernel.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Dot => std::arch::is_aarch64_feature_detected!("dotprod"),
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Vnni => "avx512-vnni",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Dot => "neon-dotprod",
            Kernel::Portable => "portable",
        }
    }
}

/// One int8 convolution, compiled.
#[derive(Debug, Clone)]
pub struct Conv8 {
    /// Input quantisation: 1 / scale and the levels' range; a byte holds level − min.
    inv_scale: f32,
    min: f32,
    max: f32,
    /// Input channels, output channels and the window.
    c_in: usize,
    c_out: usize,
    window: Window,
    /// Each stride phase's grid: rows, columns.
    grid: [usize; 2],
    /// Per (quad, tap), in 4-byte units: where its bytes for grid position 0 start.
    offsets: Vec<usize>,
    /// Per stride phase (row phase · s_w + column phase): whether a tap reads it (a 1×1
    /// convolution of stride 2 reads one phase in four; the others are never quantised).
    read: Vec<bool>,
    /// Weights: panels of MR channels, `[panel][quad · taps][MR][4]`, zero past the last channel.
    weights: Vec<i8>,
    /// Per output channel: input scale × weight scale, and min × Σ weights (added to each sum
    /// to undo the bytes' offset).
    scales: Vec<f32>,
    corrections: Vec<i32>,
    /// Bytes of the quantised input, with room for the last tile's reads.
    bytes: usize,
}

impl Conv8 {
    /// Compiles the convolution `op` (one group) of weights `weights`, reading an input quantised
    /// with `scale` to levels `min..=max`; `None` when it does not fit the kernel (several
    /// groups, a scale that is not per output channel, levels past a byte, sums that could
    /// overflow i32, a quantised input over [`MAX_BUFFER`]).
    pub fn new(op: &Op, weights: &Int8, [scale, min, max]: [f32; 3]) -> Option<Conv8> {
        let &Op::Conv { c_in, c_out, window, dilation, groups, .. } = op else { return None };
        let Window { h, w, kernel: [kh, kw], stride: [sh, sw], pad, out_h, out_w } = window;
        let (taps, k) = (kh * kw, c_in * kh * kw);
        let levels_fit = min <= 0.0 && max >= 0.0 && max - min <= 255.0 && min.fract() == 0.0;
        let sums_fit = (k as u64) * 255 * 128 < i32::MAX as u64 / 2;
        if groups != 1 || weights.values.len() != c_out * k || !levels_fit || !sums_fit || k == 0 || out_w == 0 {
            return None;
        }
        let channel_scale = |co: usize| {
            let s = weights.scale_of(co * k);
            (0..k).all(|i| weights.scale_of(co * k + i) == s).then_some(s)
        };
        let quads = c_in.div_ceil(4);
        let (ph, pw) = (h + pad[0] + pad[2], w + pad[1] + pad[3]);
        let grid = [ph.div_ceil(sh), pw.div_ceil(sw)];
        let phase_len = grid[0].checked_mul(grid[1])?;
        let grids = quads.checked_mul(sh)?.checked_mul(sw)?.checked_mul(phase_len)?;
        // Every read lies within a tile (NR) and a grid row past the last grid.
        if grids.checked_add(grid[1] + NR)?.checked_mul(4)? > MAX_BUFFER {
            return None;
        }
        let weight_scales: Vec<f32> = (0..c_out).map(channel_scale).collect::<Option<_>>()?;
        let panels = c_out.div_ceil(MR);
        let mut packed = vec![0i8; panels * quads * taps * MR * 4];
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..taps {
                    let at = ((co / MR * quads + ci / 4) * taps + t) * MR * 4 + co % MR * 4 + ci % 4;
                    packed[at] = weights.values[(co * c_in + ci) * taps + t];
                }
            }
        }
        let corrections =
            (0..c_out).map(|co| min as i32 * weights.values[co * k..][..k].iter().map(|&v| i32::from(v)).sum::<i32>());
        let mut offsets = Vec::with_capacity(quads * taps);
        let mut read = vec![false; sh * sw];
        for quad in 0..quads {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (y, x) = (ky * dilation[0], kx * dilation[1]);
                    let phase = (quad * sh + y % sh) * sw + x % sw;
                    offsets.push(phase * phase_len + y / sh * grid[1] + x / sw);
                    read[(y % sh) * sw + x % sw] = true;
                }
            }
        }
        let positions = out_h.checked_mul(grid[1])?.checked_next_multiple_of(NR)?;
        let reads = offsets.iter().max().map_or(Some(0), |&o| o.checked_add(positions))?;
        if reads > grids + grid[1] + NR {
            return None; // an output larger than the window allows (refused at compile anyway)
        }
        let units = reads.max(grids);
        Some(Conv8 {
            inv_scale: scale.recip(),
            min,
            max,
            c_in,
            c_out,
            window,
            grid,
            offsets,
            read,
            weights: packed,
            scales: weight_scales.iter().map(|&s| s * scale).collect(),
            corrections: corrections.collect(),
            bytes: units * 4,
        })
    }

    /// Bytes of scratch a run needs.
    pub fn scratch_bytes(&self) -> usize {
        self.bytes
    }

    /// Multiply-adds of one run, for the thread split.
    fn cost(&self) -> usize {
        self.c_out * self.offsets.len() * 4 * self.window.out_h * self.grid[1]
    }

    /// Runs the convolution on one image `x` (c_in × h × w) into `out` (c_out × out_h × out_w)
    /// with `bias` and `residual` (laid out as `out`) and `activation` fused, using `scratch`
    /// (at least [`Conv8::scratch_bytes`]) for the quantised input, the output channels split
    /// over `threads`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        kernel: Kernel,
        x: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        activation: Activation,
        out: &mut [f32],
        scratch: &mut [u8],
        threads: &Threads,
    ) {
        let Window { out_h, out_w, .. } = self.window;
        let p = out_h * out_w;
        assert!(out.len() >= self.c_out * p && residual.is_none_or(|r| r.len() >= self.c_out * p));
        let buffer = &mut scratch[..self.bytes];
        if !self.quantise(kernel, x, buffer, threads) {
            out[..self.c_out * p].fill(f32::NAN);
            return;
        }
        let buffer = &*buffer;
        let taps = self.offsets.len();
        let panels = self.c_out.div_ceil(MR);
        threads.split(&mut out[..self.c_out * p], MR * p, panels, self.cost(), |_, panels, out| {
            let mut acc = [0i32; MR * NR];
            for (panel, out) in panels.zip(out.chunks_mut(MR * p)) {
                let weights = &self.weights[panel * taps * MR * 4..][..taps * MR * 4];
                let channels = panel * MR..(panel * MR + MR).min(self.c_out);
                for start in (0..out_h * self.grid[1]).step_by(NR) {
                    tile(kernel, weights, buffer, &self.offsets, start, &mut acc);
                    self.store(&acc, channels.clone(), start, bias, residual, activation, out);
                }
            }
        });
    }

    /// Fills `buffer` with the bytes of `x`'s levels (padding at the zero level), the quads
    /// split over `threads` as the convolution is; false when `x` holds a NaN.
    fn quantise(&self, kernel: Kernel, x: &[f32], buffer: &mut [u8], threads: &Threads) -> bool {
        let Window { h, w, stride: [sh, sw], pad, .. } = self.window;
        let zero = (-self.min) as u8;
        // A quad's four bytes as one little-endian word (channel j in byte j); the buffer comes
        // from f32 scratch, so it is aligned. Each quad's phase grids are one run of words.
        let words: &mut [u32] = bytemuck::cast_slice_mut(buffer);
        let phase_len = self.grid[0] * self.grid[1];
        let (quads, quad_len) = (self.c_in.div_ceil(4), sh * sw * phase_len);
        let (grids, past) = words.split_at_mut(quads * quad_len);
        bytemuck::cast_slice_mut::<u32, u8>(past).fill(zero);
        let plane = |c: usize| (c < self.c_in).then(|| &x[c * h * w..][..h * w]);
        let levels = [self.inv_scale, self.min, self.max];
        let nan = std::sync::atomic::AtomicBool::new(false);
        threads.split(grids, quad_len, quads, self.cost(), |_, part, words| {
            bytemuck::cast_slice_mut::<u32, u8>(words).fill(zero);
            let mut found = false;
            for (quad, words) in part.zip(words.chunks_exact_mut(quad_len)) {
                let planes = [0, 1, 2, 3].map(|j| plane(quad * 4 + j));
                for y in 0..h {
                    let py = y + pad[0];
                    let line = py / sh * self.grid[1];
                    let rows = planes.map(|p| p.map(|p| &p[y * w..][..w]));
                    // The row's columns by phase: those with (x + pad) % sw == b are consecutive
                    // positions of phase b's grid row.
                    for b in 0..sw {
                        let first = (b + sw - pad[1] % sw) % sw;
                        if first >= w {
                            continue;
                        }
                        let phase = (py % sh) * sw + (first + pad[1]) % sw;
                        if !self.read[phase] {
                            continue;
                        }
                        let unit = phase * phase_len + line + (first + pad[1]) / sw;
                        let out = &mut words[unit..][..(w - first).div_ceil(sw)];
                        found |= quantise_words(kernel, rows, first, sw, levels, out);
                    }
                }
            }
            if found {
                nan.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
        !nan.into_inner()
    }

    /// Stores the tile `acc` (grid positions `start..start + NR` of channels `channels`) into
    /// `out`, which starts at the first channel of the tile's panel.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        acc: &[i32; MR * NR],
        channels: std::ops::Range<usize>,
        start: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        activation: Activation,
        out: &mut [f32],
    ) {
        let Window { out_h, out_w, .. } = self.window;
        let (gw, p) = (self.grid[1], out_h * out_w);
        let first = channels.start;
        for (r, co) in channels.enumerate() {
            let (scale, correction) = (self.scales[co], self.corrections[co]);
            let bias = bias.map_or(0.0, |b| b[co]);
            let value = |sum: i32| (sum + correction) as f32 * scale + bias;
            // The tile's positions by grid row: the first out_w of each are outputs.
            let sums = &acc[r * NR..][..NR];
            let mut j = 0;
            while j < NR {
                let (oy, ox) = ((start + j) / gw, (start + j) % gw);
                if oy >= out_h {
                    break;
                }
                let run = (gw - ox).min(NR - j);
                if ox < out_w {
                    let len = (out_w - ox).min(run);
                    let (at, sums) = (oy * out_w + ox, &sums[j..j + len]);
                    let dst = &mut out[(co - first) * p + at..][..len];
                    match residual {
                        Some(res) => {
                            let res = &res[co * p + at..][..len];
                            for ((o, &s), &r) in dst.iter_mut().zip(sums).zip(res) {
                                *o = activation.apply(value(s) + r);
                            }
                        }
                        None => {
                            for (o, &s) in dst.iter_mut().zip(sums) {
                                *o = activation.apply(value(s));
                            }
                        }
                    }
                }
                j += run;
            }
        }
    }
}

/// The level of `v`: round(v · inv) to even, clamped to [min, max] (integers of magnitude under
/// 2²²), as [`UnaryKind::Quantize`](crate::backend::plan::UnaryKind::Quantize) computes it; NaN
/// stays NaN.
#[inline(always)]
pub fn level(v: f32, inv: f32, min: f32, max: f32) -> f32 {
    ((v * inv).clamp(min, max) + ROUND) - ROUND
}

/// Writes into `out[i]` the levels' bytes of columns `first + i · step` of up to four channel
/// rows (channel j in byte j, little-endian; an absent channel at the zero level);
/// `[inv, min, max]` as [`level`]'s. True when one of the values is NaN.
fn quantise_words(
    kernel: Kernel,
    rows: [Option<&[f32]>; 4],
    first: usize,
    step: usize,
    [inv, min, max]: [f32; 3],
    out: &mut [u32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Vnni && step <= 2 {
        let rows = rows.map(|r| r.map(|r| &r[first..]));
        if rows.iter().flatten().all(|r| r.len().div_ceil(step) == out.len()) {
            // SAFETY: the CPU has AVX-512 F and BW (`Kernel::Vnni`); `out` holds a word per
            // `step`-th value of the rows (checked).
            return unsafe { x86::quantise_columns(rows, step, [inv, min, max], out) };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::AvxVnni && step <= 2 {
        // SAFETY: the CPU has AVX2 (`Kernel::AvxVnni`); the blocks read stay inside the rows.
        let (done, nan) = unsafe { x86::quantise_columns_avx2(rows, first, step, [inv, min, max], out) };
        let rest = quantise_words(Kernel::Portable, rows, first + done * step, step, [inv, min, max], &mut out[done..]);
        return nan | rest;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernel;
    let mut nan = false;
    let zero = (-min) as u32;
    for (i, word) in out.iter_mut().enumerate() {
        let mut bytes = 0;
        for (j, row) in rows.iter().enumerate() {
            let byte = row.map_or(zero, |r| {
                let v = r[first + i * step];
                nan |= v.is_nan();
                (level(v, inv, min, max) - min) as u32
            });
            bytes |= byte << (8 * j);
        }
        *word = bytes.to_le();
    }
    nan
}

/// One tile: `acc[r · NR + j]` = Σ over (quad, tap) q of the 4 products of `weights[q][r]` and
/// the bytes at `buffer[(offsets[q] + start + j) · 4..][..4]`.
fn tile(kernel: Kernel, weights: &[i8], buffer: &[u8], offsets: &[usize], start: usize, acc: &mut [i32; MR * NR]) {
    assert!(weights.len() >= offsets.len() * MR * 4, "a weight quad per tap and channel");
    let last = offsets.iter().max().map_or(0, |&o| (o + start + NR) * 4);
    assert!(last <= buffer.len(), "every read stays inside the buffer");
    match kernel {
        // SAFETY: the CPU has the features (`Kernel::detect`); the weights and every row read
        // are inside their slices (asserted above).
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => unsafe { tile_vnni(weights.as_ptr(), buffer.as_ptr(), offsets, start, acc) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => unsafe { tile_avx_vnni(weights.as_ptr(), buffer.as_ptr(), offsets, start, acc) },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Kernel::Dot => unsafe { arm::tile_dot(weights.as_ptr(), buffer.as_ptr(), offsets, start, acc) },
        _ => tile_portable(weights, buffer, offsets, start, acc),
    }
}

fn tile_portable(weights: &[i8], buffer: &[u8], offsets: &[usize], start: usize, acc: &mut [i32; MR * NR]) {
    acc.fill(0);
    for (q, &offset) in offsets.iter().enumerate() {
        let row = &buffer[(offset + start) * 4..][..NR * 4];
        let w = &weights[q * MR * 4..][..MR * 4];
        for (sums, w) in acc.chunks_exact_mut(NR).zip(w.chunks_exact(4)) {
            for (sum, b) in sums.iter_mut().zip(row.chunks_exact(4)) {
                *sum += (0..4).map(|i| i32::from(b[i]) * i32::from(w[i])).sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`quantise_words`](super::quantise_words) on every `step`-th value (`step` 1 or 2) of
    /// the rows, 16 columns at a time (the last block with masked loads), rounding by the CPU's
    /// default mode (to nearest, ties to even) as [`level`](super::level) does. True when one of
    /// the values is NaN.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW; every row's length, divided by `step` and rounded up, is
    /// `out.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantise_columns(
        rows: [Option<&[f32]>; 4],
        step: usize,
        [inv, min, max]: [f32; 3],
        out: &mut [u32],
    ) -> bool {
        let (vinv, vmin, vmax) = (_mm512_set1_ps(inv), _mm512_set1_ps(min), _mm512_set1_ps(max));
        let offset = _mm512_set1_epi32(-(min as i32));
        let zero = _mm_set1_epi8(-(min as i32) as u8 as i8);
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        // Lanes 0..n of a load.
        let lanes = |n: usize| if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as u16 };
        let mut nan: u16 = 0;
        for (block, out) in out.chunks_mut(16).enumerate() {
            let bytes = rows.map(|row| match row {
                None => zero,
                // SAFETY: masked loads read only lanes inside the row.
                Some(r) => unsafe {
                    let left = r.len() - block * 16 * step;
                    let at = r.as_ptr().add(block * 16 * step);
                    let v = if step == 1 {
                        _mm512_maskz_loadu_ps(lanes(left), at)
                    } else {
                        let low = _mm512_maskz_loadu_ps(lanes(left), at);
                        let high = if left > 16 { _mm512_maskz_loadu_ps(lanes(left - 16), at.add(16)) } else { low };
                        _mm512_permutex2var_ps(low, evens, high)
                    };
                    nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    let v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), vmin), vmax);
                    _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(v), offset))
                },
            });
            let (lo01, hi01) = (_mm_unpacklo_epi8(bytes[0], bytes[1]), _mm_unpackhi_epi8(bytes[0], bytes[1]));
            let (lo23, hi23) = (_mm_unpacklo_epi8(bytes[2], bytes[3]), _mm_unpackhi_epi8(bytes[2], bytes[3]));
            let words = [
                _mm_unpacklo_epi16(lo01, lo23),
                _mm_unpackhi_epi16(lo01, lo23),
                _mm_unpacklo_epi16(hi01, hi23),
                _mm_unpackhi_epi16(hi01, hi23),
            ];
            let mut all = [0u32; 16];
            for (i, w) in words.iter().enumerate() {
                // SAFETY: 4 words of the 16 of `all`.
                unsafe { _mm_storeu_si128(all.as_mut_ptr().add(i * 4).cast(), *w) };
            }
            out.copy_from_slice(&all[..out.len()]);
        }
        nan != 0
    }

    /// [`quantise_columns`] with AVX2, 8 columns at a time, for the whole blocks of 8 that every
    /// row holds from column `first` on: returns how many words it wrote (a multiple of 8; the
    /// caller quantises the rest) and whether one of the values read was NaN.
    ///
    /// # Safety
    /// The CPU has AVX2; `step` is 1 or 2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantise_columns_avx2(
        rows: [Option<&[f32]>; 4],
        first: usize,
        step: usize,
        [inv, min, max]: [f32; 3],
        out: &mut [u32],
    ) -> (usize, bool) {
        // Whole blocks: a block reads columns first + (8i .. 8i + 8) · step, the last one
        // `first + (8i + 7) · step`, inside every row.
        let len = rows.iter().flatten().map(|r| r.len().saturating_sub(first).div_ceil(step)).min();
        let blocks = len.unwrap_or(out.len()).min(out.len()) / 8;
        let (vinv, vmin, vmax) = (_mm256_set1_ps(inv), _mm256_set1_ps(min), _mm256_set1_ps(max));
        let offset = _mm256_set1_epi32(-(min as i32));
        let mut nan = 0;
        for block in 0..blocks {
            let mut word = _mm256_setzero_si256();
            for (j, row) in rows.iter().enumerate() {
                let level = match row {
                    None => offset,
                    // SAFETY: the block's columns are inside the row (counted above).
                    Some(r) => unsafe {
                        let at = r.as_ptr().add(first + block * 8 * step);
                        let v = if step == 1 {
                            _mm256_loadu_ps(at)
                        } else {
                            // The even columns of 16 (the last odd one is not read).
                            let (lo, hi) = (
                                _mm256_loadu_ps(at),
                                _mm256_maskload_ps(at.add(8), _mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0)),
                            );
                            let evens = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
                            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(evens)))
                        };
                        nan |= _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                        let v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, vinv), vmin), vmax);
                        _mm256_add_epi32(_mm256_cvtps_epi32(v), offset)
                    },
                };
                word = _mm256_or_si256(word, _mm256_sllv_epi32(level, _mm256_set1_epi32(8 * j as i32)));
            }
            // SAFETY: 8 words of `out` (block < out.len() / 8).
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(block * 8).cast(), word) };
        }
        (blocks * 8, nan != 0)
    }
}

/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `weights` holds `offsets.len()` × MR × 4 bytes and
/// `buffer` every row `(offsets[q] + start) · 4 .. + NR · 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni(weights: *const i8, buffer: *const u8, offsets: &[usize], start: usize, acc: &mut [i32; MR * NR]) {
    use std::arch::x86_64::*;
    let mut c = [[_mm512_setzero_si512(); 2]; MR];
    for (q, &offset) in offsets.iter().enumerate() {
        // SAFETY: inside the buffer and the weights (the caller's contract).
        unsafe {
            let row = buffer.add((offset + start) * 4);
            let b = [_mm512_loadu_si512(row.cast()), _mm512_loadu_si512(row.add(64).cast())];
            let w = weights.add(q * MR * 4).cast::<i32>();
            for (r, c) in c.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(w.add(r).read_unaligned());
                c[0] = _mm512_dpbusd_epi32(c[0], b[0], a);
                c[1] = _mm512_dpbusd_epi32(c[1], b[1], a);
            }
        }
    }
    for (r, c) in c.iter().enumerate() {
        // SAFETY: `acc` holds MR rows of NR = 32 sums.
        unsafe {
            _mm512_storeu_si512(acc.as_mut_ptr().add(r * NR).cast(), c[0]);
            _mm512_storeu_si512(acc.as_mut_ptr().add(r * NR + 16).cast(), c[1]);
        }
    }
}

/// [`tile_vnni`] with 256-bit registers: blocks of 8 positions, each keeping its MR sums in
/// eight registers.
///
/// # Safety
/// The CPU has AVX2 and AVX-VNNI; `weights` holds `offsets.len()` × MR × 4 bytes and `buffer`
/// every row `(offsets[q] + start) · 4 .. + NR · 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_avx_vnni(
    weights: *const i8,
    buffer: *const u8,
    offsets: &[usize],
    start: usize,
    acc: &mut [i32; MR * NR],
) {
    use std::arch::x86_64::*;
    const BLOCK: usize = 8;
    const { assert!(NR.is_multiple_of(BLOCK)) };
    for block in 0..NR / BLOCK {
        let mut c = [_mm256_setzero_si256(); MR];
        for (q, &offset) in offsets.iter().enumerate() {
            // SAFETY: inside the buffer and the weights (the caller's contract).
            unsafe {
                let b = _mm256_loadu_si256(buffer.add((offset + start + block * BLOCK) * 4).cast());
                let w = weights.add(q * MR * 4).cast::<i32>();
                for (r, c) in c.iter_mut().enumerate() {
                    *c = _mm256_dpbusd_avx_epi32(*c, b, _mm256_set1_epi32(w.add(r).read_unaligned()));
                }
            }
        }
        for (r, c) in c.iter().enumerate() {
            // SAFETY: `acc` holds MR rows of NR sums; 8 of row r from block · 8.
            unsafe { _mm256_storeu_si256(acc.as_mut_ptr().add(r * NR + block * BLOCK).cast(), *c) };
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{MR, NR};
    use std::arch::aarch64::*;

    /// Positions per block: an 8 × 8 block keeps its sums in 16 registers.
    const BLOCK: usize = 8;

    /// `acc` + the dot product of each 4-byte group of `b` with group `L` of `w` (`sdot` by
    /// element: stable Rust has no intrinsic for it yet).
    ///
    /// # Safety
    /// The CPU has the dot-product extension.
    #[inline(always)]
    unsafe fn sdot<const L: i32>(acc: int32x4_t, b: int8x16_t, w: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: a register-only instruction the CPU has (the caller's contract).
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {b:v}.16b, {w:v}.4b[{l}]",
                acc = inout(vreg) acc,
                b = in(vreg) b,
                w = in(vreg) w,
                l = const L,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }

    /// [`tile`](super::tile) with `sdot`: the bytes (u8) are flipped to i8 (b − 128) as they are
    /// loaded, and 128 × Σ weights is added back to each sum, so the sums equal the other
    /// kernels' exactly.
    ///
    /// # Safety
    /// The CPU has the dot-product extension; `weights` holds `offsets.len()` × MR × 4 bytes
    /// and `buffer` every row `(offsets[q] + start) · 4 .. + NR · 4`.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn tile_dot(
        weights: *const i8,
        buffer: *const u8,
        offsets: &[usize],
        start: usize,
        acc: &mut [i32; MR * NR],
    ) {
        const { assert!(MR == 8 && NR.is_multiple_of(BLOCK)) };
        let flip = vdupq_n_u8(0x80);
        // Σ weights of each channel (channels 0..4, 4..8), by pairwise widening adds.
        let mut sums = [vdupq_n_s32(0); 2];
        for q in 0..offsets.len() {
            for (half, sum) in sums.iter_mut().enumerate() {
                // SAFETY: inside the weights (the caller's contract).
                let w = unsafe { vld1q_s8(weights.add(q * MR * 4 + half * 16)) };
                *sum = vpadalq_s16(*sum, vpaddlq_s8(w));
            }
        }
        let offset = sums.map(|s| vshlq_n_s32::<7>(s));
        for block in 0..NR / BLOCK {
            // c[r][h]: channel r, positions 4h..4h + 4 of the block.
            let mut c = [[vdupq_n_s32(0); 2]; MR];
            for (q, &at) in offsets.iter().enumerate() {
                // SAFETY: inside the buffer and the weights (the caller's contract).
                let (b, w) = unsafe {
                    let row = buffer.add((at + start + block * BLOCK) * 4);
                    let flipped = |p: *const u8| vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), flip));
                    let w = weights.add(q * MR * 4);
                    ([flipped(row), flipped(row.add(16))], [vld1q_s8(w), vld1q_s8(w.add(16))])
                };
                for h in 0..2 {
                    // SAFETY: the CPU has the extension (the caller's contract).
                    unsafe {
                        c[0][h] = sdot::<0>(c[0][h], b[h], w[0]);
                        c[1][h] = sdot::<1>(c[1][h], b[h], w[0]);
                        c[2][h] = sdot::<2>(c[2][h], b[h], w[0]);
                        c[3][h] = sdot::<3>(c[3][h], b[h], w[0]);
                        c[4][h] = sdot::<0>(c[4][h], b[h], w[1]);
                        c[5][h] = sdot::<1>(c[5][h], b[h], w[1]);
                        c[6][h] = sdot::<2>(c[6][h], b[h], w[1]);
                        c[7][h] = sdot::<3>(c[7][h], b[h], w[1]);
                    }
                }
            }
            for (r, c) in c.iter().enumerate() {
                let back = match r % 4 {
                    0 => vdupq_laneq_s32::<0>(offset[r / 4]),
                    1 => vdupq_laneq_s32::<1>(offset[r / 4]),
                    2 => vdupq_laneq_s32::<2>(offset[r / 4]),
                    _ => vdupq_laneq_s32::<3>(offset[r / 4]),
                };
                for (h, c) in c.iter().enumerate() {
                    // SAFETY: `acc` holds MR rows of NR sums; 4 of row r from block · 8 + 4h.
                    unsafe { vst1q_s32(acc.as_mut_ptr().add(r * NR + block * BLOCK + h * 4), vaddq_s32(*c, back)) };
                }
            }
        }
    }
}
