//! f32 matrix products on packed panels, the core of the native executor's convolutions and
//! matrix products: C (m×n) = A (m×k) · B (k×n) with A packed as panels of `mr` rows ([k][mr])
//! and B as panels of `nr` columns ([k][nr]), and the epilogue (bias per row, a residual,
//! an activation) applied as each tile is stored.
//!
//! The tile kernels are `std::arch` code for AVX-512 (8×32) and AVX2 with FMA (6×16), chosen
//! once at open by [`Isa::detect`]; any other CPU (aarch64 among them, for now) runs a portable
//! 4×16 kernel in plain Rust that the compiler vectorises. Nothing here allocates.

/// The tile kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 8 rows × 32 columns, sixteen 512-bit accumulators.
    Avx512,
    /// 6 rows × 16 columns, twelve 256-bit accumulators.
    Avx2,
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
        Isa::Portable
    }

    /// Rows of a tile (and of an A panel).
    pub fn mr(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 => 6,
            Isa::Portable => 4,
        }
    }

    /// Columns of a tile (and of a B panel).
    pub fn nr(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 | Isa::Portable => 16,
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2+fma",
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
    /// The function on one element.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Clip(lo, hi) => x.max(lo).min(hi),
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

/// C[rows 0..m, columns c0..c0 + nr] = A · B-panel, for every row panel of `a` (packed by
/// [`pack_a`] with the ISA's `mr`) and the one B panel `b` ([k][nr]); C has row stride `ldc`
/// and `n` columns in all (the panel's columns past `n` are dropped).
#[allow(clippy::too_many_arguments)]
pub fn panel_product(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    c0: usize,
    epilogue: Epilogue,
) {
    let (mr, nr) = (isa.mr(), isa.nr());
    assert!(a.len() >= packed_len(m, k, mr) && b.len() >= k * nr && c0 < n, "panels match the product");
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "C holds m rows of n columns");
    let width = nr.min(n - c0);
    let mut tile = [0f32; MAX_TILE];
    for p in 0..m.div_ceil(mr) {
        let panel = &a[p * k * mr..][..k * mr];
        // SAFETY: `panel` holds k × mr and `b` k × nr elements (checked above), and the tile
        // holds mr × nr; the kernel is only chosen when the CPU has its features.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => x86::tile_avx512(k, panel.as_ptr(), b.as_ptr(), tile.as_mut_ptr()),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => x86::tile_avx2(k, panel.as_ptr(), b.as_ptr(), tile.as_mut_ptr()),
                _ => tile_portable(k, panel, b, &mut tile),
            }
        }
        let rows = mr.min(m - p * mr);
        for r in 0..rows {
            let row = p * mr + r;
            let out = &mut c[row * ldc + c0..][..width];
            let acc = &tile[r * nr..][..width];
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

/// The portable 4×16 tile: `tile[r * 16 + c]` = Σ_j a[j * 4 + r] · b[j * 16 + c].
fn tile_portable(k: usize, a: &[f32], b: &[f32], tile: &mut [f32; MAX_TILE]) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0f32; NR]; MR];
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(k) {
        for r in 0..MR {
            for c in 0..NR {
                acc[r][c] += a[r] * b[c];
            }
        }
    }
    for r in 0..MR {
        tile[r * NR..][..NR].copy_from_slice(&acc[r]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 8×32 tile with AVX-512: `tile[r * 32 + c]` = Σ_j a[j * 8 + r] · b[j * 32 + c].
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` holds k × 8, `b` k × 32 and `tile` 256 elements.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512(k: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        for j in 0..k {
            let b0 = _mm512_loadu_ps(b.add(j * 32));
            let b1 = _mm512_loadu_ps(b.add(j * 32 + 16));
            let a = a.add(j * 8);
            for (r, acc) in acc.iter_mut().enumerate() {
                let ar = _mm512_set1_ps(*a.add(r));
                acc[0] = _mm512_fmadd_ps(ar, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ar, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.add(r * 32), acc[0]);
            _mm512_storeu_ps(tile.add(r * 32 + 16), acc[1]);
        }
    }

    /// 6×16 tile with AVX2 and FMA: `tile[r * 16 + c]` = Σ_j a[j * 6 + r] · b[j * 16 + c].
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds k × 6, `b` k × 16 and `tile` 96 elements.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2(k: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for j in 0..k {
            let b0 = _mm256_loadu_ps(b.add(j * 16));
            let b1 = _mm256_loadu_ps(b.add(j * 16 + 8));
            let a = a.add(j * 6);
            for (r, acc) in acc.iter_mut().enumerate() {
                let ar = _mm256_set1_ps(*a.add(r));
                acc[0] = _mm256_fmadd_ps(ar, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ar, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile.add(r * 16), acc[0]);
            _mm256_storeu_ps(tile.add(r * 16 + 8), acc[1]);
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
        let mut isas = vec![Isa::Portable];
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
                        panel_product(isa, m, n, k, &packed, &panel, &mut c, n, c0, epilogue);
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
