//! Quantized dot products, the inner loop of CPU inference.
//!
//! Weights stay in their GGUF block layout (read straight from the memory
//! map); activations are quantized per 32-value block to `i8` with an `f32`
//! scale, the way ggml pairs Q4_1 with Q8_1 and Q8_0 with Q8_0. candle's own
//! Q4_1 dot product is scalar, so the formats this crate's default model uses
//! get AVX2 versions here, chosen at run time, with portable fallbacks.

use half::f16;

/// Values per quantization block (Q4_0, Q4_1, Q8_0).
pub const QK: usize = 32;
/// Bytes of one Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of one Q4_0 block: f16 scale, 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 18;
/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;

/// A vector quantized to `i8` in blocks of [`QK`].
#[derive(Clone, Debug, Default)]
pub struct QVec {
    pub qs: Vec<i8>,
    /// Scale of each block.
    pub d: Vec<f32>,
    /// `d * sum(qs)` of each block, for the Q4_1 minimum term.
    pub s: Vec<f32>,
}

impl QVec {
    /// Quantizes `rows` rows of `x` (each `cols` long, a multiple of [`QK`]).
    pub fn quantize_rows(&mut self, x: &[f32], cols: usize) {
        let blocks = x.len() / QK;
        self.qs.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        debug_assert_eq!(cols % QK, 0);
        for (b, chunk) in x.chunks_exact(QK).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in self.qs[b * QK..(b + 1) * QK].iter_mut().zip(chunk) {
                let r = (v * inv).round() as i32;
                *q = r as i8;
                sum += r;
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
    }
}

#[inline]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Which dot-product implementation this CPU gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// Checks that `x` holds `nb` blocks from each start in `b0s`; the AVX2
/// code relies on it.
#[inline]
fn check<const N: usize>(x: &QVec, nb: usize, b0s: &[usize; N]) {
    for &b0 in b0s {
        assert!(x.d.len() >= b0 + nb && x.qs.len() >= (b0 + nb) * QK);
    }
}

/// Dot products of one Q4_1 row (`w`, whole blocks) with `N` activation
/// rows, the `i`-th starting at block `b0s[i]` of `x`. Each weight block is
/// read and unpacked once for all `N` rows, which is what makes batched
/// decoding and prompt processing cheaper per token. Every row's result is
/// computed with the same operations whatever `N` is, so a sequence's
/// output does not depend on what it was batched with.
#[inline]
pub fn dotn_q4_1<const N: usize>(isa: Isa, w: &[u8], x: &QVec, b0s: [usize; N]) -> [f32; N] {
    let nb = w.len() / Q4_1_BYTES;
    check(x, nb, &b0s);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C were detected at run time; lengths checked above.
        Isa::Avx2 => unsafe { avx2::dotn_q4_1(w, x, b0s) },
        Isa::Scalar => b0s.map(|b0| {
            let mut acc = 0f32;
            for b in 0..nb {
                let blk = &w[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let ys = &x.qs[(b0 + b) * QK..(b0 + b + 1) * QK];
                let mut sum = 0i32;
                for j in 0..QK / 2 {
                    sum += i32::from(blk[4 + j] & 0x0F) * i32::from(ys[j]);
                    sum += i32::from(blk[4 + j] >> 4) * i32::from(ys[j + QK / 2]);
                }
                acc += d * x.d[b0 + b] * sum as f32 + m * x.s[b0 + b];
            }
            acc
        }),
    }
}

/// [`dotn_q4_1`] for Q4_0 rows.
#[inline]
pub fn dotn_q4_0<const N: usize>(isa: Isa, w: &[u8], x: &QVec, b0s: [usize; N]) -> [f32; N] {
    let nb = w.len() / Q4_0_BYTES;
    check(x, nb, &b0s);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C were detected at run time; lengths checked above.
        Isa::Avx2 => unsafe { avx2::dotn_q4_0(w, x, b0s) },
        Isa::Scalar => b0s.map(|b0| {
            let mut acc = 0f32;
            for b in 0..nb {
                let blk = &w[b * Q4_0_BYTES..(b + 1) * Q4_0_BYTES];
                let ys = &x.qs[(b0 + b) * QK..(b0 + b + 1) * QK];
                let mut sum = 0i32;
                for j in 0..QK / 2 {
                    sum += (i32::from(blk[2 + j] & 0x0F) - 8) * i32::from(ys[j]);
                    sum += (i32::from(blk[2 + j] >> 4) - 8) * i32::from(ys[j + QK / 2]);
                }
                acc += f16_at(blk, 0) * x.d[b0 + b] * sum as f32;
            }
            acc
        }),
    }
}

/// [`dotn_q4_1`] for Q8_0 rows.
#[inline]
pub fn dotn_q8_0<const N: usize>(isa: Isa, w: &[u8], x: &QVec, b0s: [usize; N]) -> [f32; N] {
    let nb = w.len() / Q8_0_BYTES;
    check(x, nb, &b0s);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C were detected at run time; lengths checked above.
        Isa::Avx2 => unsafe { avx2::dotn_q8_0(w, x, b0s) },
        Isa::Scalar => b0s.map(|b0| {
            let mut acc = 0f32;
            for b in 0..nb {
                let blk = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                let ys = &x.qs[(b0 + b) * QK..(b0 + b + 1) * QK];
                let mut sum = 0i32;
                for j in 0..QK {
                    sum += i32::from(blk[2 + j] as i8) * i32::from(ys[j]);
                }
                acc += f16_at(blk, 0) * x.d[b0 + b] * sum as f32;
            }
            acc
        }),
    }
}

/// Dequantizes one Q8_0 row into `out`.
pub fn dequant_q8_0(w: &[u8], out: &mut [f32]) {
    for (blk, o) in w.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        for (v, q) in o.iter_mut().zip(&blk[2..]) {
            *v = d * f32::from(*q as i8);
        }
    }
}

/// Dequantizes one Q4_1 row into `out`.
pub fn dequant_q4_1(w: &[u8], out: &mut [f32]) {
    for (blk, o) in w.chunks_exact(Q4_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        for j in 0..QK / 2 {
            o[j] = d * f32::from(blk[4 + j] & 0x0F) + m;
            o[j + QK / 2] = d * f32::from(blk[4 + j] >> 4) + m;
        }
    }
}

/// Dequantizes one Q4_0 row into `out`.
pub fn dequant_q4_0(w: &[u8], out: &mut [f32]) {
    for (blk, o) in w.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        for j in 0..QK / 2 {
            o[j] = d * (f32::from(blk[2 + j] & 0x0F) - 8.0);
            o[j + QK / 2] = d * (f32::from(blk[2 + j] >> 4) - 8.0);
        }
    }
}

/// `f32` dot product, with AVX2 code when the CPU has it.
#[inline]
pub fn dot_f32_isa(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA were detected at run time.
        Isa::Avx2 => unsafe { avx2::dot_f32(a, b) },
        Isa::Scalar => dot_f32(a, b),
    }
}

/// `y += a * x`, with AVX2 code when the CPU has it.
#[inline]
pub fn axpy_isa(isa: Isa, y: &mut [f32], a: f32, x: &[f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA were detected at run time.
        Isa::Avx2 => unsafe { avx2::axpy(y, a, x) },
        Isa::Scalar => axpy(y, a, x),
    }
}

/// `f32` dot product written so the compiler vectorizes it.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a * x`, vectorizable.
#[inline(always)]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QVec, Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES, QK};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 16 bytes of nibbles → 32 unsigned bytes: low nibbles first, then high.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(p as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dotn_q4_1<const N: usize>(w: &[u8], x: &QVec, b0s: [usize; N]) -> [f32; N] {
        let nb = w.len() / Q4_1_BYTES;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut acc_m = [0f32; N];
        let wp = w.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * Q4_1_BYTES);
            let (dw, mw) = (half(blk), half(blk.add(2)));
            let q = nibbles(blk.add(4));
            for i in 0..N {
                let bi = b0s[i] + b;
                let y = _mm256_loadu_si256(x.qs.as_ptr().add(bi * QK) as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
                let scale = _mm256_set1_ps(dw * *x.d.get_unchecked(bi));
                acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[i]);
                acc_m[i] += mw * *x.s.get_unchecked(bi);
            }
        }
        let mut out = [0f32; N];
        for i in 0..N {
            out[i] = hsum(acc[i]) + acc_m[i];
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dotn_q8_0<const N: usize>(w: &[u8], x: &QVec, b0s: [usize; N]) -> [f32; N] {
        let nb = w.len() / Q8_0_BYTES;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let wp = w.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * Q8_0_BYTES);
            let dw = half(blk);
            let q = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            let ax = _mm256_sign_epi8(q, q);
            for i in 0..N {
                let bi = b0s[i] + b;
                let y = _mm256_loadu_si256(x.qs.as_ptr().add(bi * QK) as *const __m256i);
                let sy = _mm256_sign_epi8(y, q);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                let scale = _mm256_set1_ps(dw * *x.d.get_unchecked(bi));
                acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[i]);
            }
        }
        let mut out = [0f32; N];
        for i in 0..N {
            out[i] = hsum(acc[i]);
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dotn_q4_0<const N: usize>(w: &[u8], x: &QVec, b0s: [usize; N]) -> [f32; N] {
        let nb = w.len() / Q4_0_BYTES;
        let ones = _mm256_set1_epi16(1);
        let eight = _mm256_set1_epi8(8);
        let mut acc = [_mm256_setzero_ps(); N];
        let wp = w.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * Q4_0_BYTES);
            let dw = half(blk);
            let q = _mm256_sub_epi8(nibbles(blk.add(2)), eight);
            let ax = _mm256_sign_epi8(q, q);
            for i in 0..N {
                let bi = b0s[i] + b;
                let y = _mm256_loadu_si256(x.qs.as_ptr().add(bi * QK) as *const __m256i);
                let sy = _mm256_sign_epi8(y, q);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                let scale = _mm256_set1_ps(dw * *x.d.get_unchecked(bi));
                acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[i]);
            }
        }
        let mut out = [0f32; N];
        for i in 0..N {
            out[i] = hsum(acc[i]);
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        super::dot_f32(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        super::axpy(y, a, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn blocks(kind: usize, nb: usize, seed: &mut u64) -> Vec<u8> {
        let mut w = Vec::new();
        for _ in 0..nb {
            let d = f16::from_f32(lcg(seed).abs() * 0.1 + 0.01)
                .to_bits()
                .to_le_bytes();
            w.extend_from_slice(&d);
            if kind == Q4_1_BYTES {
                w.extend_from_slice(&f16::from_f32(lcg(seed) * 0.5).to_bits().to_le_bytes());
            }
            let n = if kind == Q8_0_BYTES { 32 } else { 16 };
            for _ in 0..n {
                w.push(((lcg(seed) + 1.0) * 127.9) as u8);
            }
        }
        w
    }

    /// Every dot product agrees with dequantize-then-multiply on every ISA,
    /// and a row's result is bit-identical whether it is computed alone or
    /// in a group (batched and sequential decoding must agree exactly).
    #[test]
    fn dot_products_match_dequantized_reference() {
        let mut seed = 7;
        let nb = 18;
        let xs: Vec<f32> = (0..3 * nb * QK).map(|_| lcg(&mut seed)).collect();
        let mut q = QVec::default();
        q.quantize_rows(&xs, nb * QK);
        type Deq = fn(&[u8], &mut [f32]);
        type Dot1 = fn(Isa, &[u8], &QVec, [usize; 1]) -> [f32; 1];
        type Dot3 = fn(Isa, &[u8], &QVec, [usize; 3]) -> [f32; 3];
        let cases: [(usize, Dot1, Dot3, Deq); 3] = [
            (Q4_1_BYTES, dotn_q4_1::<1>, dotn_q4_1::<3>, dequant_q4_1),
            (Q4_0_BYTES, dotn_q4_0::<1>, dotn_q4_0::<3>, dequant_q4_0),
            (Q8_0_BYTES, dotn_q8_0::<1>, dotn_q8_0::<3>, dequant_q8_0),
        ];
        for (kind, dot1, dot3, deq) in cases {
            let w = blocks(kind, nb, &mut seed);
            let mut wf = vec![0f32; nb * QK];
            deq(&w, &mut wf);
            for isa in [Isa::Scalar, Isa::detect()] {
                let three = dot3(isa, &w, &q, [0, nb, 2 * nb]);
                for (row, got3) in three.iter().enumerate() {
                    let xq: Vec<f32> = (row * nb * QK..(row + 1) * nb * QK)
                        .map(|i| q.d[i / QK] * f32::from(q.qs[i]))
                        .collect();
                    let want = dot_f32(&wf, &xq);
                    let [got] = dot1(isa, &w, &q, [row * nb]);
                    assert_eq!(got.to_bits(), got3.to_bits(), "kind {kind} {isa:?}");
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "kind {kind} {isa:?}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
