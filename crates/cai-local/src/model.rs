//! A decoder-only transformer read from a memory-mapped GGUF file: the
//! llama family (Llama 1–3, Mistral, TinyLlama, SmolLM), Qwen2/2.5
//! (attention biases, NeoX rotary), Qwen3 (per-head q/k norms) and Gemma 1–3
//! (embeddings scaled by √dim, a GELU-gated feed-forward, norms after the
//! attention and feed-forward blocks, sliding-window layers, soft-capped
//! scores and logits; see [`Arch`]).
//!
//! The weights are shared by every sequence; each sequence owns a
//! [`Session`] (its KV cache). [`Transformer::forward_batch`] runs one step for
//! many sequences at once: their new tokens (one each while decoding, a
//! chunk while reading a prompt) are stacked into one matrix, so every
//! weight row is read once per step for all of them; only attention is per
//! sequence. Q4_0, Q4_1 and Q8_0 matrices are repacked at load for the
//! kernels in [`crate::kernels`] (token embeddings are read from the memory
//! map); other quantizations fall back to candle's `QMatMul`. Products are split across rayon's pool by rows.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use memmap2::Mmap;
use rayon::prelude::*;

use crate::kernels::{self, Isa, QVec, QK};
use crate::LocalError;

/// The architectures this module runs (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    /// Gemma 1: Llama's block with embeddings scaled by √dim, GELU instead
    /// of SiLU and NeoX rotary.
    Gemma,
    /// Gemma 2: Gemma 1 plus norms after the attention and feed-forward
    /// blocks, every other layer (the first of each pair) attending to a
    /// sliding window, and scores and logits soft-capped (`cap·tanh(x/cap)`).
    Gemma2,
    /// Gemma 3: Gemma 2 without the soft-capping, with Qwen3's per-head q/k
    /// norms, five sliding-window layers to each global one, and a rotary
    /// base of its own (10 000) for the sliding-window layers.
    Gemma3,
}

impl Arch {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "gemma" => Some(Arch::Gemma),
            "gemma2" => Some(Arch::Gemma2),
            "gemma3" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3)
    }
}

/// The feed-forward block's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// Hyper-parameters from `<arch>.*` metadata.
#[derive(Clone, Debug)]
pub struct Config {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub context: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_dims: usize,
    /// NeoX rotary layout (rotate the two halves of a head) instead of
    /// adjacent pairs; Qwen and Gemma models use it.
    pub rope_neox: bool,
    /// Rotary base of the sliding-window layers (Gemma 3 keeps 10 000
    /// there while its global layers use a much larger one).
    pub rope_base_local: f32,
    /// Linear rotary scaling of the global layers (`rope.scaling.factor`:
    /// positions are divided by it); 1 when there is none.
    pub rope_scale: f32,
    pub vocab: usize,
    /// Multiplier of the token embeddings (√dim for Gemma).
    pub embed_scale: Option<f32>,
    /// Multiplier of `q·k` before the softmax: 1/√head_dim except for the
    /// Gemma models whose queries are scaled by 1/√(dim/heads).
    pub attn_scale: f32,
    /// Attention scores become `cap·tanh(score/cap)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Output logits become `cap·tanh(logit/cap)` (Gemma 2).
    pub final_softcap: Option<f32>,
    pub activation: Activation,
    /// Positions a sliding-window layer attends to, its own included.
    pub window: usize,
}

impl Config {
    /// Width of the query projection (heads × head_dim; not always `dim`).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes of one position's keys and values over all layers (f16).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers * 2 * self.kv_dim() * 2
    }
}

/// What sets the Gemma architectures apart, read from their metadata with
/// llama.cpp's defaults for what a file may leave out. Other architectures
/// get the neutral values.
#[derive(Default)]
struct GemmaParams {
    /// Which layers attend to a sliding window.
    sliding: Vec<bool>,
    window: usize,
    rope_base_local: Option<f32>,
    attn_scale: Option<f32>,
    attn_softcap: Option<f32>,
    final_softcap: Option<f32>,
}

impl GemmaParams {
    fn read(
        g: &GgufFile,
        arch: Arch,
        name: &str,
        layers: usize,
        dim: usize,
        heads: usize,
    ) -> Result<Self, LocalError> {
        let key = |k: &str| format!("{name}.{k}");
        let cap =
            |k: &str, default: Option<f32>| g.meta_f32(&key(k)).or(default).filter(|c| *c > 0.0);
        let window = g.meta_u64(&key("attention.sliding_window"));
        // The 27B models scale queries by 1/√(dim/heads) rather than
        // 1/√head_dim; their files do not say so, and llama.cpp, whose
        // behaviour the files are made for, tells them by layer count.
        let big = (dim / heads) as f32;
        match arch {
            Arch::Gemma2 => Ok(Self {
                sliding: sliding_layers(g, name, layers, 2)?,
                window: window.map_or(4096, |w| w as usize),
                rope_base_local: g.meta_f32(&key("rope.freq_base_swa")),
                attn_scale: (layers == 46).then(|| 1.0 / big.sqrt()),
                attn_softcap: cap("attn_logit_softcapping", Some(50.0)),
                final_softcap: cap("final_logit_softcapping", Some(30.0)),
            }),
            Arch::Gemma3 => {
                // Without a window every layer is global.
                let window = window.map_or(0, |w| w as usize);
                Ok(Self {
                    sliding: if window > 0 {
                        sliding_layers(g, name, layers, 6)?
                    } else {
                        Vec::new()
                    },
                    window,
                    rope_base_local: Some(
                        g.meta_f32(&key("rope.freq_base_swa")).unwrap_or(10_000.0),
                    ),
                    attn_scale: (layers == 62).then(|| 1.0 / big.sqrt()),
                    attn_softcap: None,
                    final_softcap: cap("final_logit_softcapping", None),
                })
            }
            _ => Ok(Self::default()),
        }
    }
}

/// Which of `layers` layers use the sliding window:
/// `<arch>.attention.sliding_window_pattern` as one flag per layer, or as
/// `n` (all but every `n`-th layer, counting from 1), else `n = default`.
fn sliding_layers(
    g: &GgufFile,
    name: &str,
    layers: usize,
    default: u64,
) -> Result<Vec<bool>, LocalError> {
    let key = format!("{name}.attention.sliding_window_pattern");
    if let Some(Value::Array(flags)) = g.meta(&key) {
        let flags: Option<Vec<bool>> = flags
            .iter()
            .map(|v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            })
            .collect();
        return match flags {
            Some(f) if f.len() == layers => Ok(f),
            _ => Err(g.corrupt(format!(
                "metadata {key} is not one true/false flag for each of the {layers} layers"
            ))),
        };
    }
    let n = g.meta_u64(&key).unwrap_or(default);
    Ok((0..layers as u64)
        .map(|i| n == 0 || i % n < n - 1)
        .collect())
}

/// Linear rotary scaling (`<arch>.rope.scaling.factor` when the scaling
/// type is linear or unnamed, as llama.cpp defaults it): the factor
/// positions are divided by; 1 for none.
fn linear_rope_scale(g: &GgufFile, name: &str) -> f32 {
    let kind = g
        .meta_str(&format!("{name}.rope.scaling.type"))
        .unwrap_or("linear");
    let factor = g
        .meta_f32(&format!("{name}.rope.scaling.factor"))
        .or_else(|| g.meta_f32(&format!("{name}.rope.scale_linear")))
        .unwrap_or(0.0);
    if kind == "linear" && factor > 0.0 {
        factor
    } else {
        1.0
    }
}

/// The parsed header and the mapped bytes of a GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub mmap: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, LocalError> {
        let file = File::open(path).map_err(|e| LocalError::open(path, e))?;
        // SAFETY: the file is opened read-only; like every mmap user we rely on
        // nobody truncating the model file while a run uses it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LocalError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if mmap.len() < 4 || &mmap[..4] != b"GGUF" {
            return Err(LocalError::Corrupt {
                path: path.to_path_buf(),
                reason: "not a GGUF file (bad magic bytes)".into(),
            });
        }
        let mut cursor = std::io::Cursor::new(&mmap[..]);
        let content = Content::read(&mut cursor).map_err(|e| LocalError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("unreadable GGUF header: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            mmap,
        })
    }

    /// Lets the kernel drop the mapped pages read so far. Loading copies
    /// every matrix out of the map (repacked for the kernels); afterwards
    /// only token-embedding rows are read from it, a few pages each, and
    /// those come back on demand. Without this the whole file stays in the
    /// process's resident memory beside its repacked copy (98 MB of the
    /// default model's footprint).
    fn release_pages(&self) {
        // SAFETY: the map is a read-only private file mapping that nobody
        // writes, so MADV_DONTNEED only drops clean pages; the next read of
        // one faults the same bytes back in from the file. A failure only
        // means the pages stay resident.
        #[cfg(unix)]
        let _ = unsafe {
            self.mmap
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        match self.meta(key)? {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn meta_f32(&self, key: &str) -> Option<f32> {
        match self.meta(key)? {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            _ => None,
        }
    }

    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        match self.meta(key)? {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> LocalError {
        LocalError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn required(&self, key: &str) -> Result<usize, LocalError> {
        self.meta_u64(key)
            .map(|v| v as usize)
            .ok_or_else(|| self.corrupt(format!("missing metadata {key}")))
    }

    /// `(dtype, [rows, cols] or [len], absolute byte range)` of a tensor,
    /// checked against the file size so a truncated file is caught at load.
    fn tensor(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, usize, usize), LocalError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.corrupt(format!("missing tensor {name}")))?;
        let dims = info.shape.dims().to_vec();
        let elems: usize = dims.iter().product();
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(self.corrupt(format!(
                "tensor {name}: {elems} values is not a whole number of blocks"
            )));
        }
        let bytes = elems / block * info.ggml_dtype.type_size();
        let start = usize::try_from(self.content.tensor_data_offset + info.offset)
            .map_err(|_| self.corrupt(format!("tensor {name}: offset out of range")))?;
        if start
            .checked_add(bytes)
            .is_none_or(|end| end > self.mmap.len())
        {
            return Err(self.corrupt(format!(
                "tensor {name} needs {bytes} bytes at offset {start} but the file has {} bytes (truncated?)",
                self.mmap.len()
            )));
        }
        Ok((info.ggml_dtype, dims, start, bytes))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn qtensor(&self, name: &str) -> Result<QTensor, LocalError> {
        let mut cursor = std::io::Cursor::new(&self.mmap[..]);
        self.content
            .tensor(&mut cursor, name, &Device::Cpu)
            .map_err(|e| self.corrupt(format!("tensor {name}: {e}")))
    }

    fn f32_vec(&self, name: &str, len: usize) -> Result<Vec<f32>, LocalError> {
        let (dtype, dims, start, bytes) = self.tensor(name)?;
        if dims.iter().product::<usize>() != len {
            return Err(self.corrupt(format!("tensor {name} has shape {dims:?}, expected {len}")));
        }
        if dtype == GgmlDType::F32 {
            return Ok(self.mmap[start..start + bytes]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
        let t = self.qtensor(name)?;
        t.dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.corrupt(format!("tensor {name}: {e}")))
    }
}

/// How a matrix is stored.
enum Store {
    /// Q4_0, Q4_1 and Q8_0, repacked for this crate's kernels.
    Packed(kernels::Packed),
    Candle(QMatMul),
}

/// A weight matrix `[rows, cols]` applied as `y = W x`.
struct Linear {
    store: Store,
    rows: usize,
    cols: usize,
}

/// Activation rows processed together against each weight row.
const GROUP: usize = 4;

impl Linear {
    fn load(g: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Self, LocalError> {
        let (dtype, dims, start, bytes) = g.tensor(name)?;
        if dims != [rows, cols] {
            return Err(g.corrupt(format!(
                "tensor {name} has shape {dims:?}, expected [{rows}, {cols}]"
            )));
        }
        let block_bytes = match dtype {
            GgmlDType::Q4_0 => Some(kernels::Q4_0_BYTES),
            GgmlDType::Q4_1 => Some(kernels::Q4_1_BYTES),
            GgmlDType::Q8_0 => Some(kernels::Q8_0_BYTES),
            _ => None,
        };
        let store = match block_bytes {
            Some(bb) if cols.is_multiple_of(QK) => Store::Packed(kernels::Packed::from_blocks(
                bb,
                &g.mmap[start..start + bytes],
                rows,
                cols / QK,
            )),
            _ => {
                let t = g.qtensor(name)?;
                Store::Candle(
                    QMatMul::from_qtensor(t)
                        .map_err(|e| g.corrupt(format!("tensor {name}: {e}")))?,
                )
            }
        };
        Ok(Self { store, rows, cols })
    }

    /// `out[t][r] = W[r] · x[t]` for `m` input rows. `xq` must hold `x`
    /// quantized when the store is `Blocks`.
    fn forward(
        &self,
        ctx: &Ctx<'_>,
        x: &[f32],
        xq: &QVec,
        m: usize,
        out: &mut Vec<f32>,
        tmp: &mut Vec<f32>,
    ) -> Result<(), LocalError> {
        out.resize(m * self.rows, 0.0);
        match &self.store {
            Store::Candle(mm) => {
                // One row at a time: candle's matmul may sum in a different
                // order for different batch sizes, and a sequence's output
                // must not depend on what it was batched with.
                for t in 0..m {
                    let run = || -> candle_core::Result<Vec<f32>> {
                        let xt = &x[t * self.cols..(t + 1) * self.cols];
                        let t = Tensor::from_slice(xt, (1, self.cols), &Device::Cpu)?;
                        mm.forward(&t)?.flatten_all()?.to_vec1::<f32>()
                    };
                    let y = run().map_err(|e| LocalError::Inference(e.to_string()))?;
                    out[t * self.rows..(t + 1) * self.rows].copy_from_slice(&y);
                }
            }
            Store::Packed(packed) => {
                let nb = self.cols / QK;
                let isa = ctx.isa;
                let fill = |r0: usize, dst: &mut [f32]| {
                    for (i, row_out) in dst.chunks_mut(m).enumerate() {
                        let w = packed.row(r0 + i);
                        let mut t = 0;
                        while t < m {
                            let n = (m - t).min(GROUP);
                            let b = t * nb;
                            let o = &mut row_out[t..t + n];
                            match n {
                                4 => o.copy_from_slice(&kernels::dotn_packed(
                                    isa,
                                    w,
                                    xq,
                                    [b, b + nb, b + 2 * nb, b + 3 * nb],
                                )),
                                3 => o.copy_from_slice(&kernels::dotn_packed(
                                    isa,
                                    w,
                                    xq,
                                    [b, b + nb, b + 2 * nb],
                                )),
                                2 => o.copy_from_slice(&kernels::dotn_packed(
                                    isa,
                                    w,
                                    xq,
                                    [b, b + nb],
                                )),
                                _ => o.copy_from_slice(&kernels::dotn_packed(isa, w, xq, [b])),
                            }
                            t += n;
                        }
                    }
                };
                let target: &mut Vec<f32> = if m == 1 { out } else { tmp };
                target.resize(m * self.rows, 0.0);
                let work = self.rows * self.cols * m;
                if work < 50_000 || ctx.threads <= 1 {
                    fill(0, target);
                } else {
                    let chunk_rows = (self.rows / (ctx.threads * 8)).max(16);
                    target
                        .par_chunks_mut(chunk_rows * m)
                        .enumerate()
                        .for_each(|(c, dst)| fill(c * chunk_rows, dst));
                }
                if m > 1 {
                    // tmp is [rows][m]; the caller wants [m][rows].
                    for (r, col) in tmp.chunks_exact(m).enumerate() {
                        for (t, v) in col.iter().enumerate() {
                            out[t * self.rows + r] = *v;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn needs_quantized_input(&self) -> bool {
        matches!(self.store, Store::Packed(_))
    }
}

/// Token embeddings: rows looked up one at a time.
enum Embedding {
    Blocks {
        dtype: GgmlDType,
        start: usize,
        row_bytes: usize,
    },
    F32(Vec<f32>),
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    /// Qwen2's projection biases.
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// Qwen3's per-head RMS norms of queries and keys.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Linear,
    /// Gemma 2/3's norm of the attention output before the residual sum.
    attn_post_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// Gemma 2/3's norm of the feed-forward output before the residual sum.
    ffn_post_norm: Option<Vec<f32>>,
    /// Attends to the last [`Config::window`] positions only, with the
    /// local rotary table.
    sliding: bool,
}

/// Read-only state every forward pass needs.
struct Ctx<'a> {
    mmap: &'a [u8],
    isa: Isa,
    threads: usize,
}

/// A loaded model; share it between threads behind an `Arc`.
pub struct Transformer {
    gguf: GgufFile,
    pub cfg: Config,
    isa: Isa,
    embed: Embedding,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Linear,
    /// Per rotary pair, the angle per position.
    inv_freq: Vec<f32>,
    /// The same for the sliding-window layers, when it differs.
    inv_freq_local: Option<Vec<f32>>,
}

/// Positions a sequence's KV maps are reserved for (address space, not
/// memory); longer sequences move to larger maps as they grow.
const RESERVED_POSITIONS: usize = 4096;

/// One layer's keys (or values) of one sequence: IEEE half-precision bits,
/// position after position, in an anonymous memory map of their own rather
/// than a `Vec`. A running sequence's map is reserved up front (for
/// [`RESERVED_POSITIONS`]), which costs address space only: pages become resident as
/// positions are written, so a sequence neither holds the unused half of a
/// doubled buffer nor copies itself to grow, and a dropped one returns its
/// memory to the system at once. `Vec`s of these sizes (hundreds of KB,
/// allocated and freed all run long) left the allocator's heaps holding
/// far more than the live KV state.
#[derive(Default)]
pub(crate) struct KvRows {
    map: Option<memmap2::MmapMut>,
    len: usize,
}

impl KvRows {
    /// Room for `cap` values (none when 0).
    fn with_capacity(cap: usize) -> Self {
        if cap == 0 {
            return Self::default();
        }
        let map = memmap2::MmapMut::map_anon(cap * 2).unwrap_or_else(|_| {
            // Out of address space or memory: what a `Vec` does then.
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u16; 1]>())
        });
        Self {
            map: Some(map),
            len: 0,
        }
    }

    /// A copy of `src` with room for `cap` values (at least `src.len()`).
    pub(crate) fn from_slice(src: &[u16], cap: usize) -> Self {
        let mut rows = Self::with_capacity(cap.max(src.len()));
        rows.push(src.len(), 0).copy_from_slice(src);
        rows
    }

    fn capacity(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len() / 2)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u16] {
        match &self.map {
            // SAFETY: a map is page-aligned (so aligned for u16) and holds
            // `capacity() >= len` values, of which the first `len` were
            // written; anonymous pages read as zero before that anyway.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<u16>(), self.len) },
            None => &[],
        }
    }

    /// `n` more values at the end, for the caller to fill; when they do not
    /// fit, the rows move to a map with room for `cap` values, or for twice
    /// what they need past that.
    pub(crate) fn push(&mut self, n: usize, cap: usize) -> &mut [u16] {
        if self.len + n > self.capacity() {
            *self = Self::from_slice(self.as_slice(), cap.max(2 * (self.len + n)));
        }
        let at = self.len;
        self.len += n;
        match &mut self.map {
            // SAFETY: as in `as_slice`; `at + n <= capacity()` after the
            // growth above, and the borrow of `self` keeps the map alive.
            Some(m) => unsafe {
                std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<u16>().add(at), n)
            },
            None => &mut [],
        }
    }
}

impl Clone for KvRows {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice(), self.capacity())
    }
}

/// Positions of a sequence frozen for sharing: for each layer, the keys
/// and values of `len` consecutive positions, never written again. Sessions
/// that share a prefix (the prompts of a run share their stage's system
/// message and few-shot block; a stage's request may extend the previous
/// stage's conversation) hold these behind an `Arc` instead of each holding
/// a copy: as copies, the README's first run held its stage prefix of about
/// 1,480 tokens (34 MB of KV state) once per running sequence, 270 MB.
pub(crate) struct Segment {
    k: Vec<KvRows>,
    v: Vec<KvRows>,
    len: usize,
}

impl Segment {
    fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.len() * 2).sum()
    }
}

/// One sequence's KV cache: for each layer, the keys and values of every
/// position so far, row after row, as IEEE half-precision bits (like
/// llama.cpp's default cache type), and the tokens they were computed from.
///
/// The first positions may be shared: `shared` holds frozen [`Segment`]s
/// (each with the number of its positions this session uses), one after
/// the other from position 0, and `k`/`v` hold the positions after them,
/// which only this session writes. Every shared run is a multiple of
/// [`ATT_PART`] positions long, so no attention part straddles two runs and
/// a sequence computes the same bits however its state is split.
#[derive(Clone, Default)]
pub struct Session {
    pub(crate) shared: Vec<(Arc<Segment>, usize)>,
    pub(crate) k: Vec<KvRows>,
    pub(crate) v: Vec<KvRows>,
    pub(crate) tokens: Vec<u32>,
    /// Values a growing sequence reserves for a layer's keys (or values).
    pub(crate) cap: usize,
}

impl Session {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens the cache was computed from.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions held in shared segments (the rest are this session's own).
    fn shared_len(&self) -> usize {
        self.shared.iter().map(|(_, n)| n).sum()
    }

    /// Bytes of key/value data of all positions, shared ones included.
    pub fn bytes(&self) -> usize {
        let shared: usize = self
            .shared
            .iter()
            .map(|(seg, used)| seg.bytes() / seg.len * used)
            .sum();
        shared + self.own_bytes()
    }

    /// Bytes of the positions only this session holds.
    pub fn own_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.len() * 2).sum()
    }

    /// The shared segments this session refers to, each with its whole
    /// size in bytes (what it holds in memory, whatever part is used).
    pub fn segments(&self) -> impl Iterator<Item = (*const Segment, usize)> + '_ {
        self.shared.iter().map(|(s, _)| (Arc::as_ptr(s), s.bytes()))
    }

    /// Values of one key (or value) row of a layer.
    fn row_len(&self) -> usize {
        let own = self.len() - self.shared_len();
        match self.shared.first() {
            Some((seg, _)) => seg.k[0].len() / seg.len.max(1),
            None => self.k.first().map_or(0, |l| l.len() / own.max(1)),
        }
    }

    /// Freezes this session's own positions, up to a multiple of
    /// [`ATT_PART`], into a shared segment, so that sessions continued from
    /// it (see [`Session::prefix`]) share them instead of copying them. The
    /// few positions left over stay its own, with room for `cap` values per
    /// layer (0 for a finished sequence). Each layer is moved on its own, so
    /// at most one layer is held twice at any time.
    pub fn freeze(&mut self, cap: usize) {
        let shared = self.shared_len();
        let own = self.len() - shared;
        let keep = own / ATT_PART * ATT_PART;
        if keep == 0 {
            return;
        }
        let row = self.row_len();
        let split = |l: &mut KvRows| {
            let rows = l.as_slice();
            let frozen = KvRows::from_slice(&rows[..keep * row], 0);
            *l = KvRows::from_slice(&rows[keep * row..], cap);
            frozen
        };
        let k = self.k.iter_mut().map(split).collect();
        let v = self.v.iter_mut().map(split).collect();
        self.shared
            .push((Arc::new(Segment { k, v, len: keep }), keep));
    }

    /// Gives back the room reserved for growth (a finished sequence kept
    /// in the prefix cache holds exactly its positions).
    pub fn shrink_to_fit(&mut self) {
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            if l.capacity() > l.len() {
                *l = KvRows::from_slice(l.as_slice(), 0);
            }
        }
        self.tokens.shrink_to_fit();
    }

    /// A new session holding the first `n` positions of this one, with
    /// room to grow to the full context. It shares this session's shared
    /// segments as far as a multiple of [`ATT_PART`] below `n` reaches, and
    /// copies the positions after that.
    pub fn prefix(&self, n: usize) -> Session {
        let n = n.min(self.len());
        let aligned = n / ATT_PART * ATT_PART;
        let mut shared = Vec::new();
        let mut at = 0;
        for (seg, used) in &self.shared {
            let take = (*used).min(aligned.saturating_sub(at));
            if take == 0 {
                break;
            }
            shared.push((Arc::clone(seg), take));
            at += take;
        }
        let row = self.row_len();
        let layers = self.k.len();
        let mut k: Vec<KvRows> = (0..layers).map(|_| KvRows::default()).collect();
        let mut v: Vec<KvRows> = (0..layers).map(|_| KvRows::default()).collect();
        // Positions `at..n` from whichever runs hold them.
        let mut start = 0;
        let runs = self
            .shared
            .iter()
            .map(|(seg, used)| (&seg.k, &seg.v, *used))
            .chain(std::iter::once((
                &self.k,
                &self.v,
                self.len() - self.shared_len(),
            )));
        for (rk, rv, used) in runs {
            let (lo, hi) = (at.max(start), n.min(start + used));
            if lo < hi {
                for (dst, src) in k.iter_mut().zip(rk).chain(v.iter_mut().zip(rv)) {
                    let rows = &src.as_slice()[(lo - start) * row..(hi - start) * row];
                    dst.push(rows.len(), self.cap).copy_from_slice(rows);
                }
            }
            start += used;
        }
        Session {
            shared,
            k,
            v,
            tokens: self.tokens[..n].to_vec(),
            cap: self.cap,
        }
    }

    /// Layer `li`'s keys and values as runs of consecutive positions: the
    /// first position of each, and its rows.
    fn runs(&self, li: usize) -> Vec<KvRun<'_>> {
        let mut at = 0;
        let mut runs = Vec::with_capacity(self.shared.len() + 1);
        for (seg, used) in &self.shared {
            let row = seg.k[li].len() / seg.len.max(1);
            runs.push((
                at,
                &seg.k[li].as_slice()[..used * row],
                &seg.v[li].as_slice()[..used * row],
            ));
            at += used;
        }
        runs.push((at, self.k[li].as_slice(), self.v[li].as_slice()));
        runs
    }
}

/// Consecutive positions of one layer of a session: the first position,
/// and its keys and values (see [`Session::runs`]).
type KvRun<'a> = (usize, &'a [u16], &'a [u16]);

/// One sequence's part of a batched step.
pub struct Seq<'a> {
    pub sess: &'a mut Session,
    /// New tokens, appended after what the session holds.
    pub tokens: &'a [u32],
    /// Whether to compute logits after the last of them.
    pub logits: bool,
}

/// Buffers reused from step to step.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    hq: QVec,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    tmp: Vec<f32>,
    /// Attention parts before they are merged.
    parts: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Rotary angles of the sliding-window layers' table, when it differs.
    cos_local: Vec<f32>,
    sin_local: Vec<f32>,
    /// For each row: its sequence and position.
    rows: Vec<(usize, usize)>,
    /// Logits of the sequences that asked for them, in batch order.
    pub logits: Vec<f32>,
}

impl Transformer {
    /// Reads the hyper-parameters and maps the weights of a GGUF model of a
    /// supported architecture, for the kernels of `isa`.
    pub fn load(gguf: GgufFile, isa: Isa) -> Result<Self, LocalError> {
        let name = gguf
            .meta_str("general.architecture")
            .unwrap_or("")
            .to_string();
        let Some(arch) = Arch::from_name(&name) else {
            return Err(LocalError::UnsupportedArchitecture {
                path: gguf.path.clone(),
                arch: name,
            });
        };
        let key = |k: &str| format!("{name}.{k}");
        let dim = gguf.required(&key("embedding_length"))?;
        let heads = gguf.required(&key("attention.head_count"))?;
        let kv_heads = gguf
            .meta_u64(&key("attention.head_count_kv"))
            .map_or(heads, |v| v as usize);
        let head_dim = gguf
            .meta_u64(&key("attention.key_length"))
            .map_or(dim.checked_div(heads).unwrap_or(0), |v| v as usize);
        if heads == 0
            || kv_heads == 0
            || head_dim == 0
            || heads % kv_heads != 0
            || !head_dim.is_multiple_of(2)
            || !(heads * head_dim).is_multiple_of(QK)
        {
            return Err(gguf.corrupt(format!(
                "inconsistent attention shape: dim {dim}, {heads} heads of {head_dim}, {kv_heads} kv heads"
            )));
        }
        let (_, embd_dims, _, _) = gguf.tensor("token_embd.weight")?;
        let vocab = embd_dims.first().copied().unwrap_or(0);
        let layer_count = gguf.required(&key("block_count"))?;
        let rope_base = gguf.meta_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        let gemma = GemmaParams::read(&gguf, arch, &name, layer_count, dim, heads)?;
        let cfg = Config {
            dim,
            layers: layer_count,
            heads,
            kv_heads,
            head_dim,
            ffn_dim: gguf.required(&key("feed_forward_length"))?,
            context: gguf
                .meta_u64(&key("context_length"))
                .map_or(2048, |v| v as usize),
            rms_eps: gguf
                .meta_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_base,
            rope_dims: gguf
                .meta_u64(&key("rope.dimension_count"))
                .map_or(head_dim, |v| v as usize)
                .min(head_dim),
            rope_neox: matches!(arch, Arch::Qwen2 | Arch::Qwen3) || arch.is_gemma(),
            rope_base_local: gemma.rope_base_local.unwrap_or(rope_base),
            rope_scale: linear_rope_scale(&gguf, &name),
            vocab,
            embed_scale: arch.is_gemma().then(|| (dim as f32).sqrt()),
            attn_scale: gemma.attn_scale.unwrap_or(1.0 / (head_dim as f32).sqrt()),
            attn_softcap: gemma.attn_softcap,
            final_softcap: gemma.final_softcap,
            activation: if arch.is_gemma() {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            window: gemma.window,
        };
        if embd_dims != [vocab, dim] || dim % QK != 0 {
            return Err(gguf.corrupt(format!(
                "token_embd.weight has shape {embd_dims:?}, expected [vocab, {dim}] with {dim} a multiple of {QK}"
            )));
        }
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>, LocalError> {
                let name = format!("blk.{i}.{s}.bias");
                if gguf.has_tensor(&name) {
                    gguf.f32_vec(&name, len).map(Some)
                } else {
                    Ok(None)
                }
            };
            let norm = |s: &str, len: usize| -> Result<Option<Vec<f32>>, LocalError> {
                if gguf.has_tensor(&n(s)) {
                    gguf.f32_vec(&n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            // Gemma 2/3 cannot run without them; elsewhere they are absent.
            let post_norm = |s: &str| -> Result<Option<Vec<f32>>, LocalError> {
                if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
                    gguf.f32_vec(&n(s), dim).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: gguf.f32_vec(&n("attn_norm"), dim)?,
                wq: Linear::load(&gguf, &n("attn_q"), q_dim, dim)?,
                wk: Linear::load(&gguf, &n("attn_k"), kv_dim, dim)?,
                wv: Linear::load(&gguf, &n("attn_v"), kv_dim, dim)?,
                bq: bias("attn_q", q_dim)?,
                bk: bias("attn_k", kv_dim)?,
                bv: bias("attn_v", kv_dim)?,
                q_norm: norm("attn_q_norm", head_dim)?,
                k_norm: norm("attn_k_norm", head_dim)?,
                wo: Linear::load(&gguf, &n("attn_output"), dim, q_dim)?,
                attn_post_norm: post_norm("post_attention_norm")?,
                ffn_norm: gguf.f32_vec(&n("ffn_norm"), dim)?,
                gate: Linear::load(&gguf, &n("ffn_gate"), cfg.ffn_dim, dim)?,
                up: Linear::load(&gguf, &n("ffn_up"), cfg.ffn_dim, dim)?,
                down: Linear::load(&gguf, &n("ffn_down"), dim, cfg.ffn_dim)?,
                ffn_post_norm: post_norm("post_ffw_norm")?,
                sliding: gemma.sliding.get(i).copied().unwrap_or(false),
            });
        }
        let out_norm = gguf.f32_vec("output_norm.weight", dim)?;
        // Tied embeddings: small models reuse token_embd as the output head
        // (Gemma 1 and 2 always do, as llama.cpp has them).
        let output =
            if gguf.has_tensor("output.weight") && !matches!(arch, Arch::Gemma | Arch::Gemma2) {
                Linear::load(&gguf, "output.weight", vocab, dim)?
            } else {
                Linear::load(&gguf, "token_embd.weight", vocab, dim)?
            };
        let embed = {
            let (dtype, _, start, bytes) = gguf.tensor("token_embd.weight")?;
            if matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0) {
                Embedding::Blocks {
                    dtype,
                    start,
                    row_bytes: bytes / vocab.max(1),
                }
            } else {
                Embedding::F32(gguf.f32_vec("token_embd.weight", vocab * dim)?)
            }
        };
        let half = cfg.rope_dims / 2;
        let table = |base: f32, scale: f32| -> Vec<f32> {
            (0..half)
                .map(|i| base.powf(-(2.0 * i as f32) / cfg.rope_dims as f32) * scale)
                .collect()
        };
        let mut inv_freq = table(cfg.rope_base, 1.0 / cfg.rope_scale);
        if gguf.has_tensor("rope_freqs.weight") {
            // Llama 3.1-style scaled rotary frequencies.
            let factors = gguf.f32_vec("rope_freqs.weight", half)?;
            for (f, s) in inv_freq.iter_mut().zip(factors) {
                *f /= s;
            }
        }
        // Sliding-window layers keep their own base and no scaling (as
        // llama.cpp reads Gemma 3: `rope.freq_base_swa`, default 10 000).
        let inv_freq_local = layers
            .iter()
            .any(|l| l.sliding)
            .then(|| table(cfg.rope_base_local, 1.0))
            .filter(|local| *local != inv_freq);
        gguf.release_pages();
        Ok(Self {
            gguf,
            cfg,
            isa,
            embed,
            layers,
            out_norm,
            output,
            inv_freq,
            inv_freq_local,
        })
    }

    pub fn path(&self) -> &Path {
        &self.gguf.path
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// A fresh, empty sequence.
    pub fn session(&self) -> Session {
        Session {
            shared: Vec::new(),
            k: (0..self.cfg.layers).map(|_| KvRows::default()).collect(),
            v: (0..self.cfg.layers).map(|_| KvRows::default()).collect(),
            tokens: Vec::new(),
            cap: self.cfg.context.min(RESERVED_POSITIONS) * self.cfg.kv_dim(),
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            mmap: &self.gguf.mmap,
            isa: self.isa,
            threads: rayon::current_num_threads(),
        }
    }

    /// Feeds `tokens` after what the session holds and returns the logits
    /// predicting the token after the last one (one sequence, in chunks of
    /// at most [`PREFILL_CHUNK`] tokens).
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        sess: &mut Session,
        s: &'s mut Scratch,
    ) -> Result<&'s [f32], LocalError> {
        if tokens.is_empty() {
            return Err(LocalError::Inference("no tokens to process".into()));
        }
        let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut seqs = [Seq {
                sess: &mut *sess,
                tokens: chunk,
                logits: i + 1 == chunks.len(),
            }];
            self.forward_batch(&mut seqs, s)?;
        }
        Ok(&s.logits)
    }

    /// One step for several sequences: appends each one's tokens to its
    /// session and leaves in `s.logits` the next-token logits (`vocab`
    /// values each) of those with `logits` set, in order.
    pub fn forward_batch(&self, seqs: &mut [Seq<'_>], s: &mut Scratch) -> Result<(), LocalError> {
        let ctx = self.ctx();
        let cfg = &self.cfg;
        let (d, q_dim, kv_dim) = (cfg.dim, cfg.q_dim(), cfg.kv_dim());
        s.rows.clear();
        for (i, q) in seqs.iter().enumerate() {
            if q.sess.len() + q.tokens.len() > cfg.context {
                return Err(LocalError::Inference(format!(
                    "{} tokens exceed the model's context of {}",
                    q.sess.len() + q.tokens.len(),
                    cfg.context
                )));
            }
            if q.tokens.is_empty() {
                return Err(LocalError::Inference("no tokens to process".into()));
            }
            let p0 = q.sess.len();
            s.rows.extend((0..q.tokens.len()).map(|t| (i, p0 + t)));
        }
        let m = s.rows.len();
        if m == 0 {
            s.logits.clear();
            return Ok(());
        }

        // Embeddings.
        s.x.resize(m * d, 0.0);
        let all_tokens = seqs.iter().flat_map(|q| q.tokens.iter().copied());
        for (t, tok) in all_tokens.enumerate() {
            let row = tok as usize;
            if row >= cfg.vocab {
                return Err(LocalError::Inference(format!(
                    "token id {tok} out of range"
                )));
            }
            let out = &mut s.x[t * d..(t + 1) * d];
            match &self.embed {
                Embedding::Blocks {
                    dtype,
                    start,
                    row_bytes,
                } => {
                    let w = &ctx.mmap[start + row * row_bytes..start + (row + 1) * row_bytes];
                    match dtype {
                        GgmlDType::Q4_1 => kernels::dequant_q4_1(w, out),
                        GgmlDType::Q4_0 => kernels::dequant_q4_0(w, out),
                        _ => kernels::dequant_q8_0(w, out),
                    }
                }
                Embedding::F32(all) => out.copy_from_slice(&all[row * d..(row + 1) * d]),
            }
        }
        if let Some(k) = cfg.embed_scale {
            for v in s.x.iter_mut() {
                *v *= k;
            }
        }

        // Rotary angles for each row's position.
        let half = cfg.rope_dims / 2;
        rotary_angles(&self.inv_freq, &s.rows, &mut s.cos, &mut s.sin);
        if let Some(local) = &self.inv_freq_local {
            rotary_angles(local, &s.rows, &mut s.cos_local, &mut s.sin_local);
        }

        for (li, layer) in self.layers.iter().enumerate() {
            // Attention block.
            rms_norm_rows(&s.x, &layer.attn_norm, cfg.rms_eps, d, &mut s.h);
            s.hq.quantize_rows(&s.h, d);
            layer
                .wq
                .forward(&ctx, &s.h, &s.hq, m, &mut s.q, &mut s.tmp)?;
            layer
                .wk
                .forward(&ctx, &s.h, &s.hq, m, &mut s.k, &mut s.tmp)?;
            layer
                .wv
                .forward(&ctx, &s.h, &s.hq, m, &mut s.v, &mut s.tmp)?;
            for (buf, bias) in [
                (&mut s.q, &layer.bq),
                (&mut s.k, &layer.bk),
                (&mut s.v, &layer.bv),
            ] {
                if let Some(b) = bias {
                    for row in buf.chunks_exact_mut(b.len()) {
                        for (x, b) in row.iter_mut().zip(b) {
                            *x += b;
                        }
                    }
                }
            }
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(&mut s.q, w, cfg.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(&mut s.k, w, cfg.rms_eps);
            }
            let (cos, sin) = if layer.sliding && self.inv_freq_local.is_some() {
                (&s.cos_local, &s.sin_local)
            } else {
                (&s.cos, &s.sin)
            };
            rope(&mut s.q, m, cfg, half, cos, sin);
            rope(&mut s.k, m, cfg, half, cos, sin);
            let mut r = 0;
            for q in seqs.iter_mut() {
                let n = q.tokens.len();
                let cap = q.sess.cap;
                kernels::to_f16(
                    ctx.isa,
                    &s.k[r * kv_dim..(r + n) * kv_dim],
                    q.sess.k[li].push(n * kv_dim, cap),
                );
                kernels::to_f16(
                    ctx.isa,
                    &s.v[r * kv_dim..(r + n) * kv_dim],
                    q.sess.v[li].push(n * kv_dim, cap),
                );
                r += n;
            }
            let caches: Vec<Vec<KvRun<'_>>> = seqs.iter().map(|q| q.sess.runs(li)).collect();
            let window = if layer.sliding {
                cfg.window
            } else {
                usize::MAX
            };
            attention(
                cfg,
                &ctx,
                &s.q,
                &caches,
                &s.rows,
                window,
                &mut s.att,
                &mut s.parts,
            );
            s.hq.quantize_rows(&s.att, q_dim);
            layer
                .wo
                .forward(&ctx, &s.att, &s.hq, m, &mut s.o, &mut s.tmp)?;
            add_residual(
                &mut s.x,
                &s.o,
                layer.attn_post_norm.as_deref(),
                cfg,
                &mut s.h,
            );

            // Feed-forward block (gated: SwiGLU or GeGLU).
            rms_norm_rows(&s.x, &layer.ffn_norm, cfg.rms_eps, d, &mut s.h);
            s.hq.quantize_rows(&s.h, d);
            layer
                .gate
                .forward(&ctx, &s.h, &s.hq, m, &mut s.g, &mut s.tmp)?;
            layer
                .up
                .forward(&ctx, &s.h, &s.hq, m, &mut s.u, &mut s.tmp)?;
            match cfg.activation {
                Activation::Silu => {
                    for (g, u) in s.g.iter_mut().zip(&s.u) {
                        *g = *g / (1.0 + (-*g).exp()) * u;
                    }
                }
                Activation::GeluTanh => {
                    for (g, u) in s.g.iter_mut().zip(&s.u) {
                        *g = gelu_tanh(*g) * u;
                    }
                }
            }
            s.hq.quantize_rows(&s.g, cfg.ffn_dim);
            layer
                .down
                .forward(&ctx, &s.g, &s.hq, m, &mut s.o, &mut s.tmp)?;
            add_residual(
                &mut s.x,
                &s.o,
                layer.ffn_post_norm.as_deref(),
                cfg,
                &mut s.h,
            );
        }
        for q in seqs.iter_mut() {
            q.sess.tokens.extend_from_slice(q.tokens);
        }

        // Logits of the last row of each sequence that wants them.
        let mut last = Vec::new();
        let mut r = 0;
        for q in seqs.iter() {
            r += q.tokens.len();
            if q.logits {
                last.extend_from_slice(&s.x[(r - 1) * d..r * d]);
            }
        }
        let n = last.len() / d;
        if n == 0 {
            s.logits.clear();
            return Ok(());
        }
        rms_norm_rows(&last, &self.out_norm, cfg.rms_eps, d, &mut s.h);
        if self.output.needs_quantized_input() {
            s.hq.quantize_rows(&s.h, d);
        }
        self.output
            .forward(&ctx, &s.h, &s.hq, n, &mut s.logits, &mut s.tmp)?;
        if let Some(cap) = cfg.final_softcap {
            kernels::soft_cap(&mut s.logits, cap);
        }
        Ok(())
    }
}

/// `cos`/`sin` of each row's position times each rotary frequency.
fn rotary_angles(
    inv_freq: &[f32],
    rows: &[(usize, usize)],
    cos: &mut Vec<f32>,
    sin: &mut Vec<f32>,
) {
    let half = inv_freq.len();
    cos.resize(rows.len() * half, 0.0);
    sin.resize(rows.len() * half, 0.0);
    for (t, &(_, pos)) in rows.iter().enumerate() {
        let p = pos as f32;
        for (i, f) in inv_freq.iter().enumerate() {
            let (sn, cs) = (p * f).sin_cos();
            cos[t * half + i] = cs;
            sin[t * half + i] = sn;
        }
    }
}

/// `x += out`, or `x += norm(out)` for the Gemma 2/3 blocks that normalise
/// their output before the residual sum (`h` is scratch).
fn add_residual(x: &mut [f32], out: &[f32], norm: Option<&[f32]>, cfg: &Config, h: &mut Vec<f32>) {
    let out = match norm {
        Some(w) => {
            rms_norm_rows(out, w, cfg.rms_eps, cfg.dim, h);
            h.as_slice()
        }
        None => out,
    };
    for (x, o) in x.iter_mut().zip(out) {
        *x += o;
    }
}

/// GELU with the tanh approximation Gemma was trained with (llama.cpp's
/// `ggml_gelu`).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// Largest number of prompt tokens of one sequence processed in one step;
/// bounds scratch memory and lets decoding sequences advance in between.
pub const PREFILL_CHUNK: usize = 256;

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, d: usize, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = kernels::dot_f32(xr, xr) / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// RMS norm of each `w.len()`-long piece of `x` (each head), in place.
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ms = kernels::dot_f32(xr, xr) / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for (v, g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// Rotary embedding of the first `2 * half` values of each head. Llama GGUF
/// weights are permuted for rotating adjacent pairs `(2i, 2i+1)`; NeoX-style
/// models (Qwen) rotate `(i, i + half)`.
fn rope(x: &mut [f32], m: usize, cfg: &Config, half: usize, cos: &[f32], sin: &[f32]) {
    let row_len = x.len() / m;
    for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for head in row.chunks_exact_mut(cfg.head_dim) {
            for i in 0..half {
                let (ia, ib) = if cfg.rope_neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * c[i] - b * s[i];
                head[ib] = a * s[i] + b * c[i];
            }
        }
    }
}

/// Positions of one part of a row's attention: a row attending to more
/// is split into parts of this many positions, computed in parallel and
/// merged in order. The split depends only on the row's position, so a
/// sequence's output does not depend on what it was batched with.
const ATT_PART: usize = 256;

/// Where the attention part starting at position `j0` ends (exclusive,
/// before the row's own limit): the next multiple of [`ATT_PART`].
fn part_end(j0: usize) -> usize {
    (j0 / ATT_PART + 1) * ATT_PART
}

/// Causal grouped-query attention of each row over its own sequence's
/// cache, up to and including its position and at most `window` positions
/// back (its own included). The work is cut into one item per row,
/// key/value head and part of [`ATT_PART`] positions; an item reads each
/// key and value once for all the query heads sharing it.
#[allow(clippy::too_many_arguments)]
fn attention(
    cfg: &Config,
    ctx: &Ctx<'_>,
    q: &[f32],
    caches: &[Vec<KvRun<'_>>],
    rows: &[(usize, usize)],
    window: usize,
    out: &mut Vec<f32>,
    parts: &mut Vec<f32>,
) {
    let hd = cfg.head_dim;
    let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
    let group = cfg.heads / cfg.kv_heads;
    let width = group * (hd + 2);
    // Items in order: row, then key/value head, then part.
    let mut items: Vec<(usize, usize, usize)> = Vec::new();
    let mut work = 0;
    for (t, &(_, pos)) in rows.iter().enumerate() {
        let n = pos + 1;
        let lo = n.saturating_sub(window);
        work += n - lo;
        for g in 0..cfg.kv_heads {
            // Parts end at multiples of ATT_PART (where shared runs of the
            // cache end too); only a sliding window's first part is shorter.
            let mut j0 = lo;
            while j0 < n {
                items.push((t, g, j0));
                j0 = part_end(j0);
            }
        }
    }
    parts.resize(items.len() * width, 0.0);
    let one = |&(t, g, j0): &(usize, usize, usize), o: &mut [f32], scores: &mut Vec<f32>| {
        let (seq, pos) = rows[t];
        let j1 = (pos + 1).min(part_end(j0));
        scores.resize(group * ATT_PART, 0.0);
        let qs = &q[t * q_dim + g * group * hd..t * q_dim + (g + 1) * group * hd];
        // The run holding the part: runs start at multiples of ATT_PART.
        let &(start, k, v) = caches[seq]
            .iter()
            .rev()
            .find(|r| r.0 <= j0)
            .expect("the first run starts at position 0");
        kernels::attend(
            ctx.isa,
            qs,
            (k, v),
            (kv_dim, g * hd, hd),
            (j0 - start, j1 - start),
            (cfg.attn_scale, cfg.attn_softcap),
            scores,
            o,
        );
    };
    if work * cfg.heads * hd < 100_000 || ctx.threads <= 1 {
        let mut scores = Vec::new();
        for (it, o) in items.iter().zip(parts.chunks_exact_mut(width)) {
            one(it, o, &mut scores);
        }
    } else {
        items
            .par_iter()
            .zip(parts.par_chunks_exact_mut(width))
            .for_each_init(Vec::new, |scores, (it, o)| one(it, o, scores));
    }
    // Merge each row's parts per head: rescale to the largest maximum.
    out.resize(rows.len() * q_dim, 0.0);
    let mut i = 0;
    while i < items.len() {
        let (t, g, _) = items[i];
        let mut end = i + 1;
        while end < items.len() && items[end].0 == t && items[end].1 == g {
            end += 1;
        }
        for h in 0..group {
            let at = |p: usize| &parts[p * width + h * (hd + 2)..p * width + (h + 1) * (hd + 2)];
            let max = (i..end).fold(f32::NEG_INFINITY, |m, p| m.max(at(p)[hd]));
            let o =
                &mut out[t * q_dim + (g * group + h) * hd..t * q_dim + (g * group + h + 1) * hd];
            o.fill(0.0);
            let mut sum = 0f32;
            for p in i..end {
                let part = at(p);
                let w = (part[hd] - max).exp();
                sum += w * part[hd + 1];
                for (x, v) in o.iter_mut().zip(&part[..hd]) {
                    *x += w * v;
                }
            }
            let inv = 1.0 / sum;
            for x in o.iter_mut() {
                *x *= inv;
            }
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// A sequence continued from positions another session froze and
    /// shares computes the same bits as one that computed every position
    /// itself: on a global-attention model and on one whose sliding window
    /// (4 positions) starts inside a shared run.
    #[test]
    fn positions_shared_through_frozen_segments_give_the_same_logits() {
        for name in ["llama3", "gemma2"] {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.gguf"));
            let gguf = GgufFile::open(&path).expect("fixture");
            let mut model = Transformer::load(gguf, Isa::from_env().expect("ISA")).expect("load");
            // The fixtures' context (256) is shorter than two shared parts;
            // random weights do not mind longer positions.
            model.cfg.context = 4096;
            let vocab = model.cfg.vocab as u32;
            let n = 2 * ATT_PART + 90;
            let ids: Vec<u32> = (0..n as u32 + 40).map(|i| (i * 7919 + 3) % vocab).collect();
            let mut s = Scratch::default();
            let mut whole = model.session();
            let want = model
                .forward(&ids, &mut whole, &mut s)
                .expect("whole")
                .to_vec();

            let mut first = model.session();
            model.forward(&ids[..n], &mut first, &mut s).expect("first");
            first.freeze(first.cap);
            assert_eq!((first.shared_len(), first.len()), (2 * ATT_PART, n));
            // Two positions past the shared run: the first rows' windows
            // reach back into it.
            let at = 2 * ATT_PART + 2;
            let mut second = first.prefix(at);
            assert_eq!(second.shared.len(), 1);
            assert!(Arc::ptr_eq(&second.shared[0].0, &first.shared[0].0));
            assert_eq!(second.own_bytes(), 2 * model.cfg.kv_bytes_per_token());
            let got = model
                .forward(&ids[at..], &mut second, &mut s)
                .expect("second");
            let bits = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(got),
                bits(&want),
                "{name}: continued from shared positions"
            );
            // The frozen session itself goes on as before too.
            let got = model
                .forward(&ids[n..], &mut first, &mut s)
                .expect("first again");
            assert_eq!(bits(got), bits(&want), "{name}: continued after freezing");
            // Sharing less than one part copies everything.
            let short = first.prefix(ATT_PART - 1);
            assert!(short.shared.is_empty());
            assert_eq!(short.bytes(), whole.prefix(ATT_PART - 1).bytes());
        }
    }

    /// A row attending to more than [`ATT_PART`] positions is computed in
    /// parts and merged; the result is one softmax over all positions,
    /// whether the parts ran on one thread or several.
    #[test]
    fn attention_parts_merge_into_one_softmax() {
        let cfg = Config {
            dim: 96,
            layers: 1,
            heads: 6,
            kv_heads: 2,
            head_dim: 16,
            ffn_dim: 32,
            context: 4096,
            rms_eps: 1e-5,
            rope_base: 10_000.0,
            rope_dims: 16,
            rope_neox: false,
            rope_base_local: 10_000.0,
            rope_scale: 1.0,
            vocab: 8,
            embed_scale: None,
            attn_scale: 0.25,
            attn_softcap: None,
            final_softcap: None,
            activation: Activation::Silu,
            window: usize::MAX,
        };
        let n = 4 * ATT_PART + 77;
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let kv: Vec<u16> = (0..2 * n * cfg.kv_dim())
            .map(|_| f16::from_f32(rnd()).to_bits())
            .collect();
        let (k, v) = kv.split_at(n * cfg.kv_dim());
        // Two rows of one sequence: the last position and one inside part 0.
        let rows = [(0, n - 1), (0, 100)];
        let q: Vec<f32> = (0..rows.len() * cfg.q_dim()).map(|_| rnd()).collect();
        let f = |x: u16| f16::from_bits(x).to_f32();
        let (hd, kvd, group) = (cfg.head_dim, cfg.kv_dim(), cfg.heads / cfg.kv_heads);
        for threads in [1, 2] {
            let ctx = Ctx {
                mmap: &[],
                isa: Isa::from_env().expect("CAI_LOCAL_ISA"),
                threads,
            };
            let (mut out, mut parts) = (Vec::new(), Vec::new());
            attention(
                &cfg,
                &ctx,
                &q,
                &[vec![(0, k, v)]],
                &rows,
                usize::MAX,
                &mut out,
                &mut parts,
            );
            for (t, &(_, pos)) in rows.iter().enumerate() {
                for h in 0..cfg.heads {
                    let qh = &q[t * cfg.q_dim() + h * hd..][..hd];
                    let off = (h / group) * hd;
                    let s: Vec<f32> = (0..=pos)
                        .map(|j| {
                            let kr = &k[j * kvd + off..][..hd];
                            qh.iter().zip(kr).map(|(a, b)| a * f(*b)).sum::<f32>()
                                / (hd as f32).sqrt()
                        })
                        .collect();
                    let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let p: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f32 = p.iter().sum();
                    for i in 0..hd {
                        let want: f32 = (0..=pos)
                            .map(|j| p[j] * f(v[j * kvd + off + i]))
                            .sum::<f32>()
                            / sum;
                        let got = out[t * cfg.q_dim() + h * hd + i];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "threads {threads} row {t} head {h}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
