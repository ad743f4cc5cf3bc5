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

/// Which kernels run: the portable loops or one of the x86-64 vector paths.
/// Results are deterministic for a given ISA; different ISAs may differ in
/// the last bits (summation order), which sampling can turn into other text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 with AVX-VNNI's fused `u8 × i8` dot product.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX-VNNI, and AVX-512 for attention (16 lanes, 32 registers).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The environment variable that forces the kernels onto one ISA path
/// (`scalar`, `avx2`, `avxvnni`, `avx512`), so tests cover the paths of
/// CPUs other than the one they run on.
pub const ISA_ENV: &str = "CAI_LOCAL_ISA";

/// An ISA path that was asked for and cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    #[error("{value:?} is not an ISA path; expected one of scalar, avx2, avxvnni, avx512")]
    Unknown { value: String },
    #[error(
        "this CPU cannot run the {wanted} kernels (it can run: {})",
        available_names()
    )]
    Unsupported { wanted: Isa },
}

fn available_names() -> String {
    Isa::available()
        .iter()
        .map(|i| i.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = IsaError;

    /// Parses a name of [`Isa::name`] (any case). Whether the CPU can run
    /// it is [`Isa::check`]'s question.
    fn from_str(s: &str) -> Result<Self, IsaError> {
        let name = s.trim().to_ascii_lowercase();
        if name == "scalar" {
            return Ok(Isa::Scalar);
        }
        #[cfg(target_arch = "x86_64")]
        match name.as_str() {
            "avx2" => return Ok(Isa::Avx2),
            "avxvnni" | "avx-vnni" | "avx_vnni" => return Ok(Isa::AvxVnni),
            "avx512" | "avx-512" => return Ok(Isa::Avx512),
            _ => {}
        }
        Err(IsaError::Unknown {
            value: s.to_string(),
        })
    }
}

impl Isa {
    /// The fastest path this CPU can run.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                if std::is_x86_feature_detected!("avxvnni") {
                    if std::is_x86_feature_detected!("avx512f") {
                        return Isa::Avx512;
                    }
                    return Isa::AvxVnni;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every path this CPU can run, slowest first. Each one's features
    /// include the previous one's, so the best detected path implies all.
    pub fn available() -> Vec<Isa> {
        match Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => vec![Isa::Scalar, Isa::Avx2],
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => vec![Isa::Scalar, Isa::Avx2, Isa::AvxVnni],
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => vec![Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512],
            Isa::Scalar => vec![Isa::Scalar],
        }
    }

    /// `self` when this CPU can run it.
    pub fn check(self) -> Result<Isa, IsaError> {
        if Isa::available().contains(&self) {
            Ok(self)
        } else {
            Err(IsaError::Unsupported { wanted: self })
        }
    }

    /// The path [`ISA_ENV`] asks for (checked against this CPU), or the
    /// detected one when it is unset or empty. The variable is read once per
    /// process: the kernels of every model loaded later agree.
    pub fn from_env() -> Result<Isa, (String, IsaError)> {
        static CHOSEN: std::sync::OnceLock<Result<Isa, (String, IsaError)>> =
            std::sync::OnceLock::new();
        CHOSEN
            .get_or_init(|| match std::env::var(ISA_ENV) {
                Ok(v) if !v.trim().is_empty() => v
                    .parse::<Isa>()
                    .and_then(Isa::check)
                    .map_err(|e| (v.clone(), e)),
                _ => Ok(Isa::detect()),
            })
            .clone()
    }

    /// The name [`ISA_ENV`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => "avxvnni",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether AVX2, FMA and F16C may be used.
    pub fn avx2(self) -> bool {
        self != Isa::Scalar
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

/// A quantized matrix repacked at load for the kernels: each row's blocks'
/// quants back to back (16 bytes of nibbles or 32 signed bytes), their
/// scales as `f32`, and for 4-bit formats each block's minimum as `f32`
/// (Q4_0's fixed offset of -8 becomes the minimum `-8 × scale`, so both
/// 4-bit formats share one kernel). No half-precision conversion is left
/// in the inner loop, and the minimum term is a short `f32` dot product
/// over blocks instead of two instructions per block.
pub struct Packed {
    /// Blocks per row.
    pub nb: usize,
    pub q: Vec<u8>,
    pub d: Vec<f32>,
    /// Empty for 8-bit weights.
    pub m: Vec<f32>,
}

/// One row of a [`Packed`] matrix.
#[derive(Clone, Copy)]
pub struct PackedRow<'a> {
    pub q: &'a [u8],
    pub d: &'a [f32],
    pub m: &'a [f32],
}

impl Packed {
    /// Repacks `rows` rows of `nb` GGUF blocks of `block_bytes` bytes each
    /// ([`Q4_0_BYTES`], [`Q4_1_BYTES`] or [`Q8_0_BYTES`]).
    pub fn from_blocks(block_bytes: usize, data: &[u8], rows: usize, nb: usize) -> Self {
        let four = block_bytes != Q8_0_BYTES;
        let blocks = rows * nb;
        let mut p = Packed {
            nb,
            q: Vec::with_capacity(blocks * if four { 16 } else { 32 }),
            d: Vec::with_capacity(blocks),
            m: Vec::with_capacity(if four { blocks } else { 0 }),
        };
        for blk in data[..blocks * block_bytes].chunks_exact(block_bytes) {
            let d = f16_at(blk, 0);
            p.d.push(d);
            match block_bytes {
                Q4_1_BYTES => {
                    p.m.push(f16_at(blk, 2));
                    p.q.extend_from_slice(&blk[4..20]);
                }
                Q4_0_BYTES => {
                    p.m.push(-8.0 * d);
                    p.q.extend_from_slice(&blk[2..18]);
                }
                _ => p.q.extend_from_slice(&blk[2..34]),
            }
        }
        p
    }

    pub fn row(&self, r: usize) -> PackedRow<'_> {
        let four = !self.m.is_empty();
        let qb = if four { 16 } else { 32 };
        let m = if four {
            &self.m[r * self.nb..(r + 1) * self.nb]
        } else {
            &[][..]
        };
        PackedRow {
            q: &self.q[r * self.nb * qb..(r + 1) * self.nb * qb],
            d: &self.d[r * self.nb..(r + 1) * self.nb],
            m,
        }
    }
}

/// Dot products of one packed row with `N` activation rows, the `i`-th
/// starting at block `b0s[i]` of `x`. Each weight block is read once for
/// all `N` rows, which is what makes batched decoding and prompt
/// processing cheaper per token. Every row's result is computed with the
/// same operations whatever `N` is, so a sequence's output does not depend
/// on what it was batched with.
#[inline]
pub fn dotn_packed<const N: usize>(
    isa: Isa,
    w: PackedRow<'_>,
    x: &QVec,
    b0s: [usize; N],
) -> [f32; N] {
    let nb = w.d.len();
    check(x, nb, &b0s);
    let four = !w.m.is_empty();
    assert_eq!(w.q.len(), nb * if four { 16 } else { 32 });
    match (isa, four) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C were detected at run time; lengths checked above.
        (Isa::Avx2, true) => unsafe { avx2::packed4(w, x, b0s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, false) => unsafe { avx2::packed8(w, x, b0s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-VNNI too.
        (Isa::AvxVnni | Isa::Avx512, true) => unsafe { avx2::packed4_vnni(w, x, b0s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::AvxVnni | Isa::Avx512, false) => unsafe { avx2::packed8_vnni(w, x, b0s) },
        (Isa::Scalar, _) => b0s.map(|b0| {
            let mut acc = 0f32;
            for b in 0..nb {
                let ys = &x.qs[(b0 + b) * QK..(b0 + b + 1) * QK];
                let mut sum = 0i32;
                if four {
                    let qs = &w.q[b * 16..(b + 1) * 16];
                    for j in 0..QK / 2 {
                        sum += i32::from(qs[j] & 0x0F) * i32::from(ys[j]);
                        sum += i32::from(qs[j] >> 4) * i32::from(ys[j + QK / 2]);
                    }
                } else {
                    for (q, y) in w.q[b * 32..(b + 1) * 32].iter().zip(ys) {
                        sum += i32::from(*q as i8) * i32::from(*y);
                    }
                }
                acc += w.d[b] * (sum as f32 * x.d[b0 + b]);
            }
            for (b, m) in w.m.iter().enumerate() {
                acc += m * x.s[b0 + b];
            }
            acc
        }),
    }
}

/// Appends `src` to `dst` as IEEE half-precision bits (see [`to_f16`]).
#[cfg(test)]
pub fn extend_f16(isa: Isa, dst: &mut Vec<u16>, src: &[f32]) {
    let at = dst.len();
    dst.resize(at + src.len(), 0);
    to_f16(isa, src, &mut dst[at..]);
}

/// Writes `src` into `out` (of the same length) as IEEE half-precision
/// bits: the KV cache's storage, half the memory and memory traffic of
/// `f32`, as llama.cpp keeps it.
pub fn to_f16(isa: Isa, src: &[f32], out: &mut [u16]) {
    assert_eq!(src.len(), out.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: F16C was detected at run time; lengths are equal.
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 => unsafe { avx2::to_f16(src, out) },
        Isa::Scalar => {
            for (o, v) in out.iter_mut().zip(src) {
                *o = f16::from_f32(*v).to_bits();
            }
        }
    }
}

/// `x = cap·tanh(x/cap)` (Gemma 2's soft-capping of attention scores and
/// logits): values stay within ±cap, small ones barely move.
pub fn soft_cap(xs: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for x in xs {
        *x = cap * (*x * inv).tanh();
    }
}

type ScoresFn = unsafe fn(&[f32], &[u16], usize, usize, usize, usize, usize, f32, &mut [f32]);
type WeighFn = unsafe fn(&[f32], &[u16], usize, usize, usize, usize, usize, usize, &mut [f32]);

/// The vector kernels [`attend`] runs: scores, the softmax's `exp` and sum,
/// and the weighting of values.
#[derive(Clone, Copy)]
struct AttendKernels {
    scores: ScoresFn,
    exp_shifted: unsafe fn(&mut [f32], f32) -> f32,
    weigh: WeighFn,
}

/// The kernels for this ISA and head shape (at most 8 query heads per
/// key/value head, heads a multiple of 8 values; AVX-512 for multiples of
/// 16); `None` leaves [`attend`] to its portable loops. Only kernels whose
/// features `isa` guarantees are returned.
fn attend_kernels(isa: Isa, hd: usize, group: usize) -> Option<AttendKernels> {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() && hd.is_multiple_of(8) && group <= 8 {
        let wide = isa == Isa::Avx512 && hd.is_multiple_of(16);
        return Some(AttendKernels {
            scores: if wide { avx512::scores } else { avx2::scores },
            exp_shifted: avx2::exp_shifted,
            weigh: if wide { avx512::weigh } else { avx2::weigh },
        });
    }
    let _ = (isa, hd, group);
    None
}

/// One part of one row's attention for the `group` query heads sharing a
/// key/value head: positions `j0..j1` of the cache `k`/`v` (f16 rows of
/// `stride` values, this head's `hd` values at `off`). Every key and value
/// is read once for all the heads. For head `h`, `out[h * (hd + 2)..]`
/// receives the un-normalised weighted sum of values (`hd` values), then
/// the largest score and the sum of `exp(score - largest)`, so parts are
/// merged exactly like one long softmax. A score is `scale·q·k`, then
/// `cap·tanh(score/cap)` when `softcap` is `Some(cap)` (Gemma 2). `scores`
/// is scratch of at least `group * (j1 - j0)` values.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    isa: Isa,
    qs: &[f32],
    (k, v): (&[u16], &[u16]),
    (stride, off, hd): (usize, usize, usize),
    (j0, j1): (usize, usize),
    (scale, softcap): (f32, Option<f32>),
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = qs.len() / hd;
    let n = j1 - j0;
    assert!(scores.len() >= group * n && out.len() >= group * (hd + 2));
    assert!(k.len() >= (j1 - 1) * stride + off + hd && v.len() >= (j1 - 1) * stride + off + hd);
    let fast = attend_kernels(isa, hd, group);
    // Scores, head-major: scores[h * n + j].
    if let Some(f) = fast {
        // SAFETY: the CPU has the kernels' features (`attend_kernels`);
        // bounds asserted above.
        unsafe { (f.scores)(qs, k, stride, off, hd, j0, j1, scale, scores) }
    } else {
        for j in 0..n {
            let row = &k[(j0 + j) * stride + off..(j0 + j) * stride + off + hd];
            for h in 0..group {
                let q = &qs[h * hd..(h + 1) * hd];
                let dot: f32 = q
                    .iter()
                    .zip(row)
                    .map(|(a, b)| a * f16::from_bits(*b).to_f32())
                    .sum();
                scores[h * n + j] = dot * scale;
            }
        }
    }
    if let Some(cap) = softcap {
        // Portable on every path: tanh is rare (Gemma 2 only) and cheap
        // next to the dot products.
        soft_cap(&mut scores[..group * n], cap);
    }
    for h in 0..group {
        let s = &mut scores[h * n..(h + 1) * n];
        let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum = match fast {
            // SAFETY: as above.
            Some(f) => unsafe { (f.exp_shifted)(s, max) },
            None => {
                let mut sum = 0f32;
                for x in s.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                sum
            }
        };
        out[h * (hd + 2) + hd] = max;
        out[h * (hd + 2) + hd + 1] = sum;
    }
    if let Some(f) = fast {
        // SAFETY: as above.
        unsafe { (f.weigh)(scores, v, stride, off, hd, j0, j1, group, out) }
    } else {
        for h in 0..group {
            let o = &mut out[h * (hd + 2)..h * (hd + 2) + hd];
            o.fill(0.0);
            for j in 0..n {
                let p = scores[h * n + j];
                let row = &v[(j0 + j) * stride + off..(j0 + j) * stride + off + hd];
                for (x, b) in o.iter_mut().zip(row) {
                    *x += p * f16::from_bits(*b).to_f32();
                }
            }
        }
    }
}

/// Calls `$f::<G>` with the group size as a constant (so the per-head
/// accumulators live in registers), for groups of 1 to 8 heads (the caller
/// checked).
#[cfg(target_arch = "x86_64")]
macro_rules! by_group {
    ($group:expr, $f:ident ( $($arg:expr),* )) => {
        match $group {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
}

/// The attention kernels for one vector width: `scores` (each key row
/// converted once for all the heads of a group) and `weigh` (each value row
/// converted once, four vectors of a head at a time, every head's
/// accumulators in registers). The module invoking it provides `load_f16`
/// (`$lanes` halves to floats) and the reduction `$sum`.
#[cfg(target_arch = "x86_64")]
macro_rules! attention_kernels {
    ($features:literal, $vec:ty, $lanes:expr, $zero:path, $loadu:path, $fma:path,
     $set1:path, $storeu:path, $sum:path) => {
        /// `scores[h * n + j] = scale * q_h · k_(j0 + j)` for every head of
        /// the group; `hd` is a multiple of the vector width.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub unsafe fn scores(
            qs: &[f32],
            k: &[u16],
            stride: usize,
            off: usize,
            hd: usize,
            j0: usize,
            j1: usize,
            scale: f32,
            scores: &mut [f32],
        ) {
            by_group!(
                qs.len() / hd,
                scores_g(qs, k, stride, off, hd, j0, j1, scale, scores)
            );
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        unsafe fn scores_g<const G: usize>(
            qs: &[f32],
            k: &[u16],
            stride: usize,
            off: usize,
            hd: usize,
            j0: usize,
            j1: usize,
            scale: f32,
            scores: &mut [f32],
        ) {
            let n = j1 - j0;
            for j in 0..n {
                let kp = k.as_ptr().add((j0 + j) * stride + off);
                let mut acc: [$vec; G] = [$zero(); G];
                let mut c = 0;
                while c < hd {
                    let kv = load_f16(kp.add(c));
                    for (h, a) in acc.iter_mut().enumerate() {
                        *a = $fma($loadu(qs.as_ptr().add(h * hd + c)), kv, *a);
                    }
                    c += $lanes;
                }
                for (h, a) in acc.iter().enumerate() {
                    *scores.get_unchecked_mut(h * n + j) = $sum(*a) * scale;
                }
            }
        }

        /// `out[h * (hd + 2) + i] = sum_j p[h * n + j] * v_(j0 + j)[i]`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub unsafe fn weigh(
            p: &[f32],
            v: &[u16],
            stride: usize,
            off: usize,
            hd: usize,
            j0: usize,
            j1: usize,
            group: usize,
            out: &mut [f32],
        ) {
            by_group!(group, weigh_g(p, v, stride, off, hd, j0, j1, out));
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        unsafe fn weigh_g<const G: usize>(
            p: &[f32],
            v: &[u16],
            stride: usize,
            off: usize,
            hd: usize,
            j0: usize,
            j1: usize,
            out: &mut [f32],
        ) {
            const CHUNKS: usize = 4;
            let n = j1 - j0;
            let mut c0 = 0;
            while c0 < hd {
                let width = ((hd - c0) / $lanes).min(CHUNKS);
                let mut acc: [[$vec; CHUNKS]; G] = [[$zero(); CHUNKS]; G];
                for j in 0..n {
                    let row = v.as_ptr().add((j0 + j) * stride + off + c0);
                    let mut vv: [$vec; CHUNKS] = [$zero(); CHUNKS];
                    for (c, x) in vv.iter_mut().enumerate().take(width) {
                        *x = load_f16(row.add($lanes * c));
                    }
                    for (h, a) in acc.iter_mut().enumerate() {
                        let w = $set1(*p.get_unchecked(h * n + j));
                        for c in 0..width {
                            a[c] = $fma(w, vv[c], a[c]);
                        }
                    }
                }
                for (h, a) in acc.iter().enumerate() {
                    for (c, x) in a.iter().enumerate().take(width) {
                        $storeu(out.as_mut_ptr().add(h * (hd + 2) + c0 + $lanes * c), *x);
                    }
                }
                c0 += $lanes * width;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QVec, QK};
    use std::arch::x86_64::*;

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

    /// Sums of `u8 × i8` products in groups of four, as `i32` lanes: two
    /// instructions on AVX2 (exact here: the products never saturate the
    /// `i16` pairs), one with AVX-VNNI.
    macro_rules! idot_avx2 {
        ($u:expr, $i:expr) => {
            _mm256_madd_epi16(_mm256_maddubs_epi16($u, $i), _mm256_set1_epi16(1))
        };
    }
    macro_rules! idot_vnni {
        ($u:expr, $i:expr) => {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), $u, $i)
        };
    }

    /// [`super::dotn_packed`]'s loop: per block, the weights' scale is
    /// broadcast once and their quants unpacked once for all `N` rows; the
    /// 4-bit minimum term is summed eight blocks at a time afterwards.
    macro_rules! packed_kernel {
        ($name:ident, $features:literal, $idot:ident, $four:expr) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const N: usize>(
                w: super::PackedRow<'_>,
                x: &QVec,
                b0s: [usize; N],
            ) -> [f32; N] {
                let nb = w.d.len();
                let qp = w.q.as_ptr();
                let xq = x.qs.as_ptr();
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    let dw = _mm256_broadcast_ss(w.d.get_unchecked(b));
                    let (u, sign) = if $four {
                        (nibbles(qp.add(b * 16)), _mm256_setzero_si256())
                    } else {
                        let q = _mm256_loadu_si256(qp.add(b * 32) as *const __m256i);
                        (_mm256_sign_epi8(q, q), q)
                    };
                    for i in 0..N {
                        let bi = b0s[i] + b;
                        let y = _mm256_loadu_si256(xq.add(bi * QK) as *const __m256i);
                        let y = if $four { y } else { _mm256_sign_epi8(y, sign) };
                        let t = _mm256_mul_ps(
                            _mm256_cvtepi32_ps($idot!(u, y)),
                            _mm256_broadcast_ss(x.d.get_unchecked(bi)),
                        );
                        acc[i] = _mm256_fmadd_ps(dw, t, acc[i]);
                    }
                }
                let mut out = [0f32; N];
                for i in 0..N {
                    out[i] = hsum(acc[i]);
                }
                if $four {
                    let mp = w.m.as_ptr();
                    let sp = x.s.as_ptr();
                    let mut am = [_mm256_setzero_ps(); N];
                    let mut b = 0;
                    while b + 8 <= nb {
                        let mv = _mm256_loadu_ps(mp.add(b));
                        for i in 0..N {
                            am[i] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(sp.add(b0s[i] + b)), am[i]);
                        }
                        b += 8;
                    }
                    for i in 0..N {
                        let mut tail = hsum(am[i]);
                        for bb in b..nb {
                            tail += *mp.add(bb) * *sp.add(b0s[i] + bb);
                        }
                        out[i] += tail;
                    }
                }
                out
            }
        };
    }

    packed_kernel!(packed4, "avx2,fma,f16c", idot_avx2, true);
    packed_kernel!(packed8, "avx2,fma,f16c", idot_avx2, false);
    packed_kernel!(packed4_vnni, "avx2,fma,f16c,avxvnni", idot_vnni, true);
    packed_kernel!(packed8_vnni, "avx2,fma,f16c,avxvnni", idot_vnni, false);

    /// `f32` → IEEE half bits, round to nearest even.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn to_f16(src: &[f32], out: &mut [u16]) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
            i += 8;
        }
        while i < n {
            out[i] = half::f16::from_f32(src[i]).to_bits();
            i += 1;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    attention_kernels!(
        "avx2,fma,f16c",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_set1_ps,
        _mm256_storeu_ps,
        hsum
    );

    /// `x = exp(x - max)` for every value, returning their sum: a
    /// degree-6 polynomial on the reduced argument (within 2 ulp of `exp`
    /// over the softmax's range; values below -87 give 0).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(xs: &mut [f32], max: f32) -> f32 {
        let n = xs.len();
        let m = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let p = xs.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
            _mm256_storeu_ps(p, e);
            sum = _mm256_add_ps(sum, e);
            i += 8;
        }
        let mut total = hsum(sum);
        if i < n {
            let mut tail = [f32::NEG_INFINITY; 8];
            tail[..n - i].copy_from_slice(&xs[i..]);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), m));
            _mm256_storeu_ps(tail.as_mut_ptr(), e);
            xs[i..].copy_from_slice(&tail[..n - i]);
            total += tail[..n - i].iter().sum::<f32>();
        }
        total
    }

    /// `exp` of eight values ≤ 0 (or -inf): 2^k · p(r) with
    /// x = k·ln2 + r, |r| ≤ ln2/2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 split in two so k·ln2 is subtracted exactly.
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(k),
            _mm256_set1_epi32(127),
        )));
        let e = _mm256_mul_ps(p, scale);
        // -inf (padding) and values that underflow give exactly 0.
        _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(-87.0)))
    }
}

/// Attention with AVX-512: a head of 64 values is four registers, and the
/// 32 registers hold every head's accumulators of a group at once.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    attention_kernels!(
        "avx512f",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_set1_ps,
        _mm512_storeu_ps,
        _mm512_reduce_add_ps
    );
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

    /// Every implementation this CPU can run.
    fn isas() -> Vec<Isa> {
        Isa::available()
    }

    /// Every dot product agrees with dequantize-then-multiply on every ISA,
    /// and a row's result is bit-identical whether it is computed alone or
    /// in a group (batched and sequential decoding must agree exactly).
    #[test]
    fn dot_products_match_dequantized_reference() {
        let mut seed = 7;
        let nb = 19;
        let xs: Vec<f32> = (0..3 * nb * QK).map(|_| lcg(&mut seed)).collect();
        let mut q = QVec::default();
        q.quantize_rows(&xs, nb * QK);
        type Deq = fn(&[u8], &mut [f32]);
        let cases: [(usize, Deq); 3] = [
            (Q4_1_BYTES, dequant_q4_1),
            (Q4_0_BYTES, dequant_q4_0),
            (Q8_0_BYTES, dequant_q8_0),
        ];
        for (kind, deq) in cases {
            let w = blocks(kind, nb, &mut seed);
            let mut wf = vec![0f32; nb * QK];
            deq(&w, &mut wf);
            let packed = Packed::from_blocks(kind, &w, 1, nb);
            let row = packed.row(0);
            for isa in isas() {
                let three = dotn_packed(isa, row, &q, [0, nb, 2 * nb]);
                for (r, got3) in three.iter().enumerate() {
                    let xq: Vec<f32> = (r * nb * QK..(r + 1) * nb * QK)
                        .map(|i| q.d[i / QK] * f32::from(q.qs[i]))
                        .collect();
                    let want = dot_f32(&wf, &xq);
                    let [got] = dotn_packed(isa, row, &q, [r * nb]);
                    assert_eq!(got.to_bits(), got3.to_bits(), "kind {kind} {isa:?}");
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "kind {kind} {isa:?}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Grouped attention over f16 keys and values agrees with a plain
    /// softmax over the same (rounded) values, for every ISA and for groups
    /// the fast path takes (3) and leaves to the portable code (9), with
    /// and without soft-capped scores.
    #[test]
    fn attend_matches_a_plain_softmax() {
        let mut seed = 11;
        let (hd, kv_heads, n) = (16, 2, 37);
        let stride = kv_heads * hd;
        let keys: Vec<f32> = (0..n * stride).map(|_| lcg(&mut seed) * 2.0).collect();
        let vals: Vec<f32> = (0..n * stride).map(|_| lcg(&mut seed)).collect();
        let isa = Isa::from_env().expect("CAI_LOCAL_ISA");
        let (mut k, mut v) = (Vec::new(), Vec::new());
        extend_f16(isa, &mut k, &keys);
        extend_f16(isa, &mut v, &vals);
        let round = |x: u16| f16::from_bits(x).to_f32();
        for group in [3, 9] {
            let qs: Vec<f32> = (0..group * hd).map(|_| lcg(&mut seed)).collect();
            let scale = 0.25;
            let g = 1;
            for (chosen, softcap) in isas()
                .into_iter()
                .flat_map(|i| [(i, None), (i, Some(0.3f32))])
            {
                let mut scores = vec![0f32; group * n];
                let mut out = vec![0f32; group * (hd + 2)];
                attend(
                    chosen,
                    &qs,
                    (&k, &v),
                    (stride, g * hd, hd),
                    (0, n),
                    (scale, softcap),
                    &mut scores,
                    &mut out,
                );
                for h in 0..group {
                    let q = &qs[h * hd..(h + 1) * hd];
                    let s: Vec<f32> = (0..n)
                        .map(|j| {
                            let kr = &k[j * stride + g * hd..j * stride + (g + 1) * hd];
                            let s =
                                q.iter().zip(kr).map(|(a, b)| a * round(*b)).sum::<f32>() * scale;
                            softcap.map_or(s, |c| c * (s / c).tanh())
                        })
                        .collect();
                    let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let p: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f32 = p.iter().sum();
                    let o = &out[h * (hd + 2)..(h + 1) * (hd + 2)];
                    assert!((o[hd] - max).abs() < 1e-5, "{chosen:?} group {group}: max");
                    assert!(
                        (o[hd + 1] - sum).abs() < 1e-4 * sum,
                        "{chosen:?} group {group}: sum"
                    );
                    for i in 0..hd {
                        let want: f32 = (0..n)
                            .map(|j| p[j] * round(v[j * stride + g * hd + i]))
                            .sum();
                        assert!(
                            (o[i] - want).abs() < 1e-4 * sum,
                            "{chosen:?} group {group} head {h}: {} vs {want}",
                            o[i]
                        );
                    }
                }
            }
        }
    }

    /// The softmax's vectorised `exp` is within a few ulp of `f32::exp`
    /// over the whole range a shifted score can take, 0 below it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vectorised_exp_matches_the_library() {
        if !Isa::detect().avx2() {
            return;
        }
        let mut xs: Vec<f32> = (0..20_001).map(|i| -90.0 + i as f32 * 0.0045).collect();
        xs.extend([0.0, -0.0, -1e-8, f32::NEG_INFINITY, -86.99, -87.5]);
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        let mut got = xs.clone();
        // SAFETY: AVX2/FMA detected above.
        let sum = unsafe { avx2::exp_shifted(&mut got, 0.0) };
        for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
            if *x <= -87.0 {
                assert_eq!(*g, 0.0, "exp({x})");
            } else {
                assert!(
                    (g - w).abs() <= 4.0 * f32::EPSILON * w,
                    "exp({x}): {g} vs {w}"
                );
            }
        }
        let total: f32 = got.iter().sum();
        assert!((sum - total).abs() <= 1e-4 * total);
    }

    /// Nanoseconds per weight block and activation row of each kernel, for
    /// tuning: `cargo test --release --lib kernel_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kernel_speed() {
        let mut seed = 3;
        let (nb, rows) = (
            18,
            std::env::var("ROWS").map_or(1536, |v| v.parse().unwrap()),
        );
        let w = blocks(Q4_1_BYTES, nb * rows, &mut seed);
        let w = Packed::from_blocks(Q4_1_BYTES, &w, rows, nb);
        let xs: Vec<f32> = (0..4 * nb * QK).map(|_| lcg(&mut seed)).collect();
        let mut q = QVec::default();
        q.quantize_rows(&xs, nb * QK);
        for isa in isas() {
            for n in [1usize, 2, 4] {
                let iters = if isa == Isa::Scalar { 5 } else { 200 };
                let start = std::time::Instant::now();
                let mut sink = 0f32;
                for _ in 0..iters {
                    for r in 0..rows {
                        let wr = w.row(r);
                        sink += match n {
                            1 => dotn_packed(isa, wr, &q, [0])[0],
                            2 => dotn_packed(isa, wr, &q, [0, nb])[1],
                            _ => dotn_packed(isa, wr, &q, [0, nb, 2 * nb, 3 * nb])[3],
                        };
                    }
                }
                let per = start.elapsed().as_nanos() as f64 / (iters * rows * nb * n) as f64;
                println!("{isa:?} N={n}: {per:.2} ns per block-row ({sink:.0})");
            }
        }
    }
}
