//! f32 matrix products on packed panels, the core of the native executor's convolutions and
//! matrix products: C (m×n) = A (m×k) · B (k×n) with A packed as panels of `mr` rows ([k][mr])
//! and B as panels of `nr` columns ([k][nr]), and the epilogue (bias per row, a residual,
//! an activation) applied as each tile is stored.
//!
//! The tile kernels are `std::arch` code for AVX-512 (8×32) and AVX2 with FMA (6×16) on x86-64,
//! chosen once at open by [`Isa::detect`], and NEON (8×12) on aarch64; any other CPU runs a
//! portable 4×16 kernel in plain Rust that the compiler vectorises. Nothing here allocates.

/// The tile kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Each architecture detects (constructs) only its own kernels.
#[allow(dead_code)]
pub enum Isa {
    /// 8 rows × 32 columns, sixteen 512-bit accumulators.
    Avx512,
    /// 6 rows × 16 columns, twelve 256-bit accumulators.
    Avx2,
    /// aarch64: 8 rows × 12 columns, twenty-four 128-bit accumulators.
    Neon,
    /// 4 rows × 16 columns in plain Rust.
    Portable,
}

impl Isa {
    /// The best kernel the running CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Portable
    }

    /// Rows of a tile (and of an A panel).
    pub fn mr(self) -> usize {
        match self {
            Isa::Avx512 | Isa::Neon => 8,
            Isa::Avx2 => 6,
            Isa::Portable => 4,
        }
    }

    /// Columns of a tile (and of a B panel).
    pub fn nr(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 | Isa::Portable => 16,
            Isa::Neon => 12,
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2+fma",
            Isa::Neon => "neon",
            Isa::Portable => "portable",
        }
    }
}

/// The largest tile of any kernel, in elements.
const MAX_TILE: usize = 8 * 32;

/// Elements of `rows` packed as panels of `panel` (the last panel padded with zeros).
pub fn packed_len(rows: usize, k: usize, panel: usize) -> usize {
    rows.div_ceil(panel) * panel * k
}

/// A matrix in a slice: element (i, j) at `i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Matrix<'a> {
    /// A dense row-major `rows`×`cols` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Matrix { data, rows, cols, rs: cols, cs: 1 }
    }
}

/// Packs the m×k matrix `a` as panels of `mr` rows: `dst[(p * k + j) * mr + r]` = a(p·mr + r, j),
/// zero past the last row.
pub fn pack_a(a: Matrix, mr: usize, dst: &mut [f32]) {
    let Matrix { data: a, rows: m, cols: k, rs, cs } = a;
    for (p, panel) in dst[..packed_len(m, k, mr)].chunks_exact_mut(k * mr).enumerate() {
        for (j, column) in panel.chunks_exact_mut(mr).enumerate() {
            for (r, v) in column.iter_mut().enumerate() {
                let i = p * mr + r;
                *v = if i < m { a[i * rs + j * cs] } else { 0.0 };
            }
        }
    }
}

/// Packs columns `c0..c0 + nr` of the k×n matrix `b` as one panel: `dst[j * nr + c]`, zero past
/// the last column.
pub fn pack_b_panel(b: Matrix, c0: usize, nr: usize, dst: &mut [f32]) {
    let Matrix { data: b, rows: k, cols: n, rs, cs } = b;
    let width = nr.min(n - c0);
    for (j, row) in dst[..k * nr].chunks_exact_mut(nr).enumerate() {
        let src = j * rs + c0 * cs;
        if cs == 1 {
            row[..width].copy_from_slice(&b[src..src + width]);
        } else {
            for (c, v) in row[..width].iter_mut().enumerate() {
                *v = b[src + c * cs];
            }
        }
        row[width..].fill(0.0);
    }
}

/// The activation fused into a store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// None.
    Identity,
    /// max(x, 0).
    Relu,
    /// min(max(x, lo), hi).
    Clip(f32, f32),
}

impl Activation {
    /// The function on one element (NaN stays NaN, so that the runtime sees it).
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        let (lo, hi) = self.bounds();
        if x < lo {
            lo
        } else if x > hi {
            hi
        } else {
            x
        }
    }

    /// The clamp it is: (lo, hi).
    #[inline(always)]
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Activation::Identity => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Clip(lo, hi) => (lo, hi),
        }
    }
}

/// What is done to each element of C as it is stored: + bias[row], + residual (laid out as C),
/// then the activation.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Per row of C.
    pub bias: Option<&'a [f32]>,
    /// Laid out as C (same row stride).
    pub residual: Option<&'a [f32]>,
    /// Applied last.
    pub activation: Activation,
}

impl Epilogue<'_> {
    /// Plain C = A·B.
    pub const NONE: Epilogue<'static> = Epilogue { bias: None, residual: None, activation: Activation::Identity };
}

/// Where the k × nr B panel of a product is read from.
#[derive(Clone, Copy)]
pub enum Panel<'a> {
    /// Packed by [`pack_b_panel`]: row j at `j * nr`.
    Packed(&'a [f32]),
    /// In place: row j is the nr floats at `start + offsets[j]` of `data` (a convolution's input,
    /// read where it lies instead of copied into a panel).
    Rows {
        /// The matrix's memory.
        data: &'a [f32],
        /// Where each row starts, relative to `start`.
        offsets: &'a [usize],
        /// Where the panel starts.
        start: usize,
    },
}

/// C[rows 0..m, columns c0..c0 + nr] = A · B-panel, for every row panel of `a` (packed by
/// [`pack_a`] with the ISA's `mr`) and the one B panel `b`; C has row stride `ldc` and `n`
/// columns in all (the panel's columns past `n` are dropped).
#[allow(clippy::too_many_arguments)]
pub fn panel_product(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: Panel,
    c: &mut [f32],
    ldc: usize,
    c0: usize,
    epilogue: Epilogue,
) {
    let (mr, nr) = (isa.mr(), isa.nr());
    assert!(a.len() >= packed_len(m, k, mr) && c0 < n, "the A panels match the product");
    // The B rows' base and offsets (null offsets: packed, row j at j · nr).
    let (b_base, offsets) = match b {
        Panel::Packed(b) => {
            assert!(b.len() >= k * nr, "the B panel holds k rows");
            (b.as_ptr(), std::ptr::null())
        }
        Panel::Rows { data, offsets, start } => {
            let last = offsets[..k].iter().max().map_or(0, |&o| start + o + nr);
            assert!(last <= data.len(), "every B row lies inside its matrix");
            // SAFETY: `start` is inside `data` (or k is 0 and nothing is read) by the check above.
            (unsafe { data.as_ptr().add(start.min(data.len())) }, offsets.as_ptr())
        }
    };
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "C holds m rows of n columns");
    let width = nr.min(n - c0);
    let (lo, hi) = epilogue.activation.bounds();
    let mut buffer = [0f32; MAX_TILE];
    for p in 0..m.div_ceil(mr) {
        let panel = &a[p * k * mr..][..k * mr];
        let rows = mr.min(m - p * mr);
        let at = p * mr * ldc + c0;
        if rows == mr && width == nr {
            // A whole tile: the kernel applies the epilogue in registers and stores into C.
            let bias = epilogue.bias.map(|b| &b[p * mr..][..mr]);
            let residual = epilogue.residual.map(|r| &r[at..][..(mr - 1) * ldc + nr]);
            let out = &mut c[at..][..(mr - 1) * ldc + nr];
            let store =
                Store { c: out.as_mut_ptr(), ldc, bias: ptr_or_null(bias), residual: ptr_or_null(residual), lo, hi };
            // SAFETY: `panel` holds k × mr elements and every B row nr (checked above); `out`
            // (and `residual`) hold mr rows of nr columns `ldc` apart, `bias` mr values; the
            // kernel is only chosen when the CPU has its features.
            unsafe { tile(isa, k, panel, b_base, offsets, &store) };
            continue;
        }
        // A partial tile (or the portable kernel): into the buffer, then the epilogue here.
        let store = Store {
            c: buffer.as_mut_ptr(),
            ldc: nr,
            bias: std::ptr::null(),
            residual: std::ptr::null(),
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
        };
        // SAFETY: as above, with the tile buffer (mr × nr) as C.
        unsafe { tile(isa, k, panel, b_base, offsets, &store) };
        for r in 0..rows {
            let row = p * mr + r;
            let out = &mut c[row * ldc + c0..][..width];
            let acc = &buffer[r * nr..][..width];
            let bias = epilogue.bias.map_or(0.0, |b| b[row]);
            let act = epilogue.activation;
            match epilogue.residual {
                Some(res) => {
                    let res = &res[row * ldc + c0..][..width];
                    for ((o, &v), &s) in out.iter_mut().zip(acc).zip(res) {
                        *o = act.apply(v + bias + s);
                    }
                }
                None => {
                    for (o, &v) in out.iter_mut().zip(acc) {
                        *o = act.apply(v + bias);
                    }
                }
            }
        }
    }
}

/// Runs the tile kernel of `isa`: A panel `a`, B rows at `b + offsets[j]` (or `b + j * nr`
/// when `offsets` is null), results through `store`.
///
/// # Safety
/// `a` holds k × mr elements, each B row nr, `offsets` (when not null) k entries; `store` as
/// each kernel requires; the CPU has the kernel's features.
unsafe fn tile(isa: Isa, k: usize, a: &[f32], b: *const f32, offsets: *const usize, store: &Store) {
    unsafe {
        match (isa, offsets.is_null()) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, true) => x86::tile_avx512::<false>(k, a.as_ptr(), b, offsets, store),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, false) => x86::tile_avx512::<true>(k, a.as_ptr(), b, offsets, store),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, true) => x86::tile_avx2::<false>(k, a.as_ptr(), b, offsets, store),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, false) => x86::tile_avx2::<true>(k, a.as_ptr(), b, offsets, store),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, true) => arm::tile_neon::<false>(k, a.as_ptr(), b, offsets, store),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, false) => arm::tile_neon::<true>(k, a.as_ptr(), b, offsets, store),
            _ => tile_portable(k, a, b, offsets, store),
        }
    }
}

/// Where a tile kernel stores its mr × nr results: row r at `c + r * ldc`, each value plus
/// `bias[r]` (when not null) plus the residual at the same place (when not null), clamped to
/// `lo..=hi`.
struct Store {
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    residual: *const f32,
    lo: f32,
    hi: f32,
}

fn ptr_or_null(s: Option<&[f32]>) -> *const f32 {
    s.map_or(std::ptr::null(), <[f32]>::as_ptr)
}

/// The portable 4×16 tile, stored as the x86 kernels store.
///
/// # Safety
/// As [`tile`]'s, for mr = 4 and nr = 16.
unsafe fn tile_portable(k: usize, a: &[f32], b: *const f32, offsets: *const usize, store: &Store) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0f32; NR]; MR];
    for (j, a) in a.chunks_exact(MR).take(k).enumerate() {
        // SAFETY: row j of B holds NR floats (the caller's contract).
        let row = unsafe {
            let at = if offsets.is_null() { j * NR } else { *offsets.add(j) };
            std::slice::from_raw_parts(b.add(at), NR)
        };
        for r in 0..MR {
            for c in 0..NR {
                acc[r][c] += a[r] * row[c];
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let bias = if store.bias.is_null() { 0.0 } else { unsafe { *store.bias.add(r) } };
        for (c, &v) in acc.iter().enumerate() {
            let at = r * store.ldc + c;
            let residual = if store.residual.is_null() { 0.0 } else { unsafe { *store.residual.add(at) } };
            let v = v + bias + residual;
            // SAFETY: the store holds MR rows of NR floats `ldc` apart (the caller's contract).
            unsafe {
                *store.c.add(at) = if v < store.lo {
                    store.lo
                } else if v > store.hi {
                    store.hi
                } else {
                    v
                }
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Store;

    /// 8×32 tile with AVX-512: row r of the result (Σ_j a[j * 8 + r] · B[j][c], B row j at
    /// `b + offsets[j]` with `ROWS`, else at `b + j * 32`) goes through `store`'s epilogue to
    /// `store.c + r * store.ldc`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` holds k × 8 elements, each B row 32 (and `offsets` k entries
    /// with `ROWS`); `store` points at 8 rows of 32 writable (and, for the residual, readable)
    /// floats and at 8 biases when not null.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512<const ROWS: bool>(
        k: usize,
        a: *const f32,
        b: *const f32,
        offsets: *const usize,
        store: &Store,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        for j in 0..k {
            let row = if ROWS { b.add(*offsets.add(j)) } else { b.add(j * 32) };
            let b0 = _mm512_loadu_ps(row);
            let b1 = _mm512_loadu_ps(row.add(16));
            let a = a.add(j * 8);
            for (r, acc) in acc.iter_mut().enumerate() {
                let ar = _mm512_set1_ps(*a.add(r));
                acc[0] = _mm512_fmadd_ps(ar, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ar, b1, acc[1]);
            }
        }
        let (lo, hi) = (_mm512_set1_ps(store.lo), _mm512_set1_ps(store.hi));
        for (r, acc) in acc.iter().enumerate() {
            let bias = if store.bias.is_null() { _mm512_setzero_ps() } else { _mm512_set1_ps(*store.bias.add(r)) };
            for (half, &v) in acc.iter().enumerate() {
                let at = r * store.ldc + half * 16;
                let mut v = _mm512_add_ps(v, bias);
                if !store.residual.is_null() {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(store.residual.add(at)));
                }
                // max/min return their second operand when one is NaN: NaN stays NaN.
                _mm512_storeu_ps(store.c.add(at), _mm512_min_ps(hi, _mm512_max_ps(lo, v)));
            }
        }
    }

    /// 6×16 tile with AVX2 and FMA, stored as [`tile_avx512`] stores.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds k × 6 elements, each B row 16 (and `offsets` k entries
    /// with `ROWS`); `store` points at 6 rows of 16 writable (and, for the residual, readable)
    /// floats and at 6 biases when not null.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2<const ROWS: bool>(
        k: usize,
        a: *const f32,
        b: *const f32,
        offsets: *const usize,
        store: &Store,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for j in 0..k {
            let row = if ROWS { b.add(*offsets.add(j)) } else { b.add(j * 16) };
            let b0 = _mm256_loadu_ps(row);
            let b1 = _mm256_loadu_ps(row.add(8));
            let a = a.add(j * 6);
            for (r, acc) in acc.iter_mut().enumerate() {
                let ar = _mm256_set1_ps(*a.add(r));
                acc[0] = _mm256_fmadd_ps(ar, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ar, b1, acc[1]);
            }
        }
        let (lo, hi) = (_mm256_set1_ps(store.lo), _mm256_set1_ps(store.hi));
        for (r, acc) in acc.iter().enumerate() {
            let bias = if store.bias.is_null() { _mm256_setzero_ps() } else { _mm256_set1_ps(*store.bias.add(r)) };
            for (half, &v) in acc.iter().enumerate() {
                let at = r * store.ldc + half * 8;
                let mut v = _mm256_add_ps(v, bias);
                if !store.residual.is_null() {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(store.residual.add(at)));
                }
                _mm256_storeu_ps(store.c.add(at), _mm256_min_ps(hi, _mm256_max_ps(lo, v)));
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::Store;

    /// 8×12 tile with NEON, stored as the x86 kernels store: each step multiplies B's row (three
    /// registers) by each of A's 8 values (two registers, by lane).
    ///
    /// # Safety
    /// The CPU has NEON; `a` holds k × 8 elements, each B row 12 (and `offsets` k entries with
    /// `ROWS`); `store` points at 8 rows of 12 writable (and, for the residual, readable) floats
    /// and at 8 biases when not null.
    #[target_feature(enable = "neon")]
    pub unsafe fn tile_neon<const ROWS: bool>(
        k: usize,
        a: *const f32,
        b: *const f32,
        offsets: *const usize,
        store: &Store,
    ) {
        let mut acc = [[vdupq_n_f32(0.0); 3]; 8];
        for j in 0..k {
            let row = if ROWS { b.add(*offsets.add(j)) } else { b.add(j * 12) };
            let bs = [vld1q_f32(row), vld1q_f32(row.add(4)), vld1q_f32(row.add(8))];
            let (a0, a1) = (vld1q_f32(a.add(j * 8)), vld1q_f32(a.add(j * 8 + 4)));
            for (c, &b) in bs.iter().enumerate() {
                acc[0][c] = vfmaq_laneq_f32::<0>(acc[0][c], b, a0);
                acc[1][c] = vfmaq_laneq_f32::<1>(acc[1][c], b, a0);
                acc[2][c] = vfmaq_laneq_f32::<2>(acc[2][c], b, a0);
                acc[3][c] = vfmaq_laneq_f32::<3>(acc[3][c], b, a0);
                acc[4][c] = vfmaq_laneq_f32::<0>(acc[4][c], b, a1);
                acc[5][c] = vfmaq_laneq_f32::<1>(acc[5][c], b, a1);
                acc[6][c] = vfmaq_laneq_f32::<2>(acc[6][c], b, a1);
                acc[7][c] = vfmaq_laneq_f32::<3>(acc[7][c], b, a1);
            }
        }
        let (lo, hi) = (vdupq_n_f32(store.lo), vdupq_n_f32(store.hi));
        for (r, acc) in acc.iter().enumerate() {
            let bias = vdupq_n_f32(if store.bias.is_null() { 0.0 } else { *store.bias.add(r) });
            for (part, &v) in acc.iter().enumerate() {
                let at = r * store.ldc + part * 4;
                let mut v = vaddq_f32(v, bias);
                if !store.residual.is_null() {
                    v = vaddq_f32(v, vld1q_f32(store.residual.add(at)));
                }
                // FMAX and FMIN return NaN when either operand is NaN: NaN stays NaN.
                vst1q_f32(store.c.add(at), vminq_f32(hi, vmaxq_f32(lo, v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        c
    }

    fn isas() -> Vec<Isa> {
        #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_mut))]
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "aarch64")]
        isas.push(Isa::Neon);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    /// Every kernel the CPU has, on odd sizes, with every epilogue, against the naive product.
    #[test]
    fn products_match_the_naive_product() {
        let noise = crate::backend::plan::reference::noise;
        for isa in isas() {
            for (i, &(m, n, k)) in
                [(1, 1, 1), (3, 5, 7), (8, 32, 16), (13, 37, 29), (50, 70, 3), (6, 17, 100)].iter().enumerate()
            {
                let (a, b) = (noise(m * k, i as u64, [-1.0, 1.0]), noise(k * n, 100 + i as u64, [-1.0, 1.0]));
                let (bias, residual) = (noise(m, 7, [-1.0, 1.0]), noise(m * n, 8, [-1.0, 1.0]));
                let mut packed = vec![f32::NAN; packed_len(m, k, isa.mr())];
                pack_a(Matrix::dense(&a, m, k), isa.mr(), &mut packed);
                let mut panel = vec![f32::NAN; k * isa.nr()];
                let expected = naive(m, n, k, &a, &b);
                for activation in [Activation::Identity, Activation::Relu, Activation::Clip(-0.3, 0.4)] {
                    let epilogue = Epilogue { bias: Some(&bias), residual: Some(&residual), activation };
                    let mut c = vec![f32::NAN; m * n];
                    for c0 in (0..n).step_by(isa.nr()) {
                        pack_b_panel(Matrix::dense(&b, k, n), c0, isa.nr(), &mut panel);
                        panel_product(isa, m, n, k, &packed, Panel::Packed(&panel), &mut c, n, c0, epilogue);
                    }
                    for (at, (&got, &want)) in c.iter().zip(&expected).enumerate() {
                        let want = activation.apply(want + bias[at / n] + residual[at]);
                        assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{isa:?} {m}×{n}×{k} at {at}");
                    }
                }
            }
        }
    }
}
