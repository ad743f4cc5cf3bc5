//! Tokenizers built from a GGUF's `tokenizer.ggml.*` metadata, the two kinds
//! llama.cpp calls `gpt2` and `llama`.
//!
//! Byte-level BPE (`gpt2`: SmolLM2, Llama 3, Qwen, StarCoder): text is first
//! split at control tokens (`<|im_start|>` maps to its single id), then cut
//! into pieces by the model's pre-tokenizer regex (chosen by
//! `tokenizer.ggml.pre`), each piece's UTF-8 bytes are mapped to GPT-2's
//! printable byte alphabet, and merges are applied by rank. Text round-trips
//! exactly, except for the few control characters (U+0004, U+0006, ...) a
//! vocabulary may have no byte token for; those are dropped, as Hugging Face
//! tokenizers do.
//!
//! SentencePiece (`llama`: Llama 1/2, Mistral, TinyLlama): spaces become `▁`,
//! a `▁` is put in front of the text and after every control token, and
//! adjacent pieces are merged highest vocabulary score first; characters
//! the vocabulary lacks are spelled with `<0xNN>` byte tokens.

use std::collections::HashMap;

use regex::Regex;

/// `tokenizer.ggml.token_type` values from llama.cpp.
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_BYTE: i32 = 6;
/// SentencePiece's visible space.
const SPM_SPACE: char = '\u{2581}';

/// The tokenizer fields of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama`
    /// (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer regex to use.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; default true).
    pub add_space_prefix: Option<bool>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`, when present.
    pub eot_id: Option<u32>,
    pub add_bos: bool,
}

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer model {0:?} is not supported (only byte-level BPE \"gpt2\" and SentencePiece \"llama\")")]
    UnsupportedModel(String),
    #[error("tokenizer metadata is inconsistent: {0}")]
    Invalid(String),
}

/// How text is cut into pieces before BPE.
#[derive(Debug)]
struct PreTokenizer {
    /// Split off every numeric character as its own piece first (SmolLM, StarCoder).
    split_digits: bool,
    /// A piece that is itself a token is not merged (llama.cpp's
    /// `ignore_merges`, set for Llama 3).
    ignore_merges: bool,
    /// The piece regex; capture group 1 marks the trailing `\s+` alternative that
    /// stands in for `\s+(?!\S)|\s+` (the regex crate has no lookahead).
    regex: Regex,
}

const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|(\s+)";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|(\s+)";
/// Qwen2's: Llama 3's with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|(\s+)";

impl PreTokenizer {
    fn for_name(pre: Option<&str>) -> Result<Self, TokenizerError> {
        let (split_digits, ignore_merges, pattern) = match pre.unwrap_or("default") {
            "smollm" | "starcoder" | "refact" => (true, false, GPT2_PATTERN),
            "llama3" | "llama-bpe" | "llama-v3" | "falcon3" => (false, true, LLAMA3_PATTERN),
            "smaug-bpe" => (false, false, LLAMA3_PATTERN),
            "qwen2" | "deepseek-r1-qwen" => (false, false, QWEN2_PATTERN),
            // "gpt2", "default" and anything unknown: GPT-2's own regex, the
            // most common choice and the one llama.cpp falls back to.
            _ => (false, false, GPT2_PATTERN),
        };
        let regex = Regex::new(pattern)
            .map_err(|e| TokenizerError::Invalid(format!("pre-tokenizer regex: {e}")))?;
        Ok(Self {
            split_digits,
            ignore_merges,
            regex,
        })
    }

    /// Calls `f` with each piece of `text`, in order.
    fn pieces<'t>(&self, text: &'t str, f: &mut impl FnMut(&'t str)) {
        if self.split_digits {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    self.regex_pieces(&text[start..i], f);
                    f(&text[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            self.regex_pieces(&text[start..], f);
        } else {
            self.regex_pieces(text, f);
        }
    }

    fn regex_pieces<'t>(&self, text: &'t str, f: &mut impl FnMut(&'t str)) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(caps) = self.regex.captures_at(text, pos) else {
                // Unreachable with these patterns (the last alternative takes
                // any whitespace, the others everything else), but never loop.
                f(&text[pos..]);
                return;
            };
            let Some(m) = caps.get(0) else { return };
            let mut end = m.end();
            if caps.get(1).is_some() && end < text.len() {
                // `\s+(?!\S)`: a whitespace run followed by text leaves its
                // last character to start the next piece (" word").
                let run = m.as_str();
                if let Some((last, _)) = run.char_indices().next_back() {
                    if last > 0 {
                        end = m.start() + last;
                    }
                }
            }
            if m.start() > pos {
                f(&text[pos..m.start()]);
            }
            f(&text[m.start()..end]);
            pos = end;
        }
    }
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            let c = next;
            next += 1;
            c
        };
        table[usize::from(b)] = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// How a vocabulary turns plain text into ids.
#[derive(Debug)]
enum Kind {
    Bpe {
        /// `(left, right)` → `(rank, merged id)`.
        merges: HashMap<(u32, u32), (u32, u32)>,
        /// The token of each byte; `None` for bytes the vocabulary lacks.
        byte_ids: [Option<u32>; 256],
        pre: PreTokenizer,
        /// Plain tokens by their bytes, for `ignore_merges`.
        by_bytes: HashMap<Vec<u8>, u32>,
    },
    Spm {
        /// Plain pieces (with `▁` for spaces) by text, and their scores.
        pieces: HashMap<String, u32>,
        scores: Vec<f32>,
        /// `<0xNN>` tokens.
        byte_ids: [Option<u32>; 256],
        unk_id: Option<u32>,
        add_space_prefix: bool,
    },
}

/// A tokenizer: byte-level BPE or SentencePiece (see the module docs).
#[derive(Debug)]
pub struct Tokenizer {
    /// The bytes each id decodes to.
    token_bytes: Vec<Vec<u8>>,
    is_control: Vec<bool>,
    kind: Kind,
    /// Matches any control or user-defined token written in the text.
    specials: Option<Regex>,
    special_ids: HashMap<String, u32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    /// Ids that end an assistant turn.
    end_ids: Vec<u32>,
}

impl Tokenizer {
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self, TokenizerError> {
        let spm = match spec.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            _ => return Err(TokenizerError::UnsupportedModel(spec.model.clone())),
        };
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::Invalid("no tokens".into()));
        }
        let types = |i: usize| spec.token_types.get(i).copied().unwrap_or(1);
        let table = byte_to_char_table();
        let mut char_to_byte: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, c) in table.iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
        }
        let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(n);
        let mut token_bytes = Vec::with_capacity(n);
        let mut is_control = Vec::with_capacity(n);
        let mut special_ids = HashMap::new();
        let mut spm_bytes = [None; 256];
        for (i, tok) in spec.tokens.iter().enumerate() {
            vocab.insert(tok.as_str(), i as u32);
            let ty = types(i);
            let special = matches!(
                ty,
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN
            );
            if special {
                special_ids.insert(tok.clone(), i as u32);
                token_bytes.push(tok.as_bytes().to_vec());
            } else if spm {
                let byte = (ty == TOKEN_TYPE_BYTE)
                    .then(|| tok.strip_prefix("<0x")?.strip_suffix('>'))
                    .flatten()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match byte {
                    Some(b) => {
                        spm_bytes[usize::from(b)].get_or_insert(i as u32);
                        token_bytes.push(vec![b]);
                    }
                    None => token_bytes.push(tok.replace(SPM_SPACE, " ").into_bytes()),
                }
            } else {
                let mut bytes = Vec::with_capacity(tok.len());
                for c in tok.chars() {
                    match char_to_byte.get(&c) {
                        Some(b) => bytes.push(*b),
                        None => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                token_bytes.push(bytes);
            }
            is_control.push(ty == TOKEN_TYPE_CONTROL);
        }
        let kind = if spm {
            let pieces = spec
                .tokens
                .iter()
                .enumerate()
                .filter(|(i, _)| types(*i) != TOKEN_TYPE_BYTE)
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
            Kind::Spm {
                pieces,
                scores: spec.scores.clone(),
                byte_ids: spm_bytes,
                unk_id: spec.unk_id.filter(|&u| (u as usize) < n),
                add_space_prefix: spec.add_space_prefix.unwrap_or(true),
            }
        } else {
            // Vocabularies may lack bytes that never occur in their training
            // text (0xC0, 0xF5.., some control characters); like Hugging Face
            // tokenizers without an unknown token, such bytes are dropped.
            let mut byte_ids = [None; 256];
            for (b, c) in table.iter().enumerate() {
                let mut buf = [0u8; 4];
                byte_ids[b] = vocab.get(&*c.encode_utf8(&mut buf)).copied();
            }
            if byte_ids.iter().filter(|b| b.is_some()).count() < 128 {
                return Err(TokenizerError::Invalid(
                    "the vocabulary is not byte-level (most bytes have no token)".into(),
                ));
            }
            let mut merges = HashMap::with_capacity(spec.merges.len());
            let mut joined = String::new();
            for (rank, line) in spec.merges.iter().enumerate() {
                let Some((a, b)) = line.split_once(' ') else {
                    return Err(TokenizerError::Invalid(format!("merge {rank} {line:?}")));
                };
                joined.clear();
                joined.push_str(a);
                joined.push_str(b);
                if let (Some(&ia), Some(&ib), Some(&im)) =
                    (vocab.get(a), vocab.get(b), vocab.get(joined.as_str()))
                {
                    merges.entry((ia, ib)).or_insert((rank as u32, im));
                }
            }
            let pre = PreTokenizer::for_name(spec.pre.as_deref())?;
            let by_bytes = if pre.ignore_merges {
                token_bytes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !special_ids.contains_key(&spec.tokens[*i]))
                    .map(|(i, b)| (b.clone(), i as u32))
                    .collect()
            } else {
                HashMap::new()
            };
            Kind::Bpe {
                merges,
                byte_ids,
                pre,
                by_bytes,
            }
        };
        let specials = if special_ids.is_empty() {
            None
        } else {
            let mut names: Vec<&String> = special_ids.keys().collect();
            // Longest first, so a token that prefixes another never wins.
            names.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            let alt: Vec<String> = names.iter().map(|s| regex::escape(s)).collect();
            Some(
                Regex::new(&alt.join("|"))
                    .map_err(|e| TokenizerError::Invalid(format!("special-token pattern: {e}")))?,
            )
        };
        let check = |id: Option<u32>, what: &str| match id {
            Some(i) if i as usize >= n => Err(TokenizerError::Invalid(format!(
                "{what} id {i} is outside the vocabulary of {n}"
            ))),
            _ => Ok(id),
        };
        let bos_id = check(spec.bos_id, "bos")?;
        let eos_id = check(spec.eos_id, "eos")?;
        let eot_id = check(spec.eot_id, "eot")?;
        let mut end_ids: Vec<u32> = eos_id.into_iter().chain(eot_id).collect();
        for name in [
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<end_of_turn>",
            "</s>",
            "<|end|>",
        ] {
            if let Some(&id) = special_ids.get(name) {
                if !end_ids.contains(&id) {
                    end_ids.push(id);
                }
            }
        }
        Ok(Self {
            token_bytes,
            is_control,
            kind,
            specials,
            special_ids,
            bos_id,
            eos_id,
            add_bos: spec.add_bos,
            end_ids,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether the model wants a BOS token in front of every prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The text of a token as stored in the vocabulary (control tokens verbatim).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.token_bytes
            .get(id as usize)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Whether generating `id` ends the assistant's turn.
    pub fn is_end(&self, id: u32) -> bool {
        self.end_ids.contains(&id)
    }

    /// A token as a reply would show it (invalid UTF-8 becomes U+FFFD;
    /// control tokens give their text), for log-probability candidates.
    pub fn display_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    /// Whether a reply's first space is the tokenizer's word marker rather
    /// than text (SentencePiece vocabularies), to be dropped.
    pub fn strips_leading_space(&self) -> bool {
        matches!(
            self.kind,
            Kind::Spm {
                add_space_prefix: true,
                ..
            }
        )
    }

    /// Whether `id` is a control token (never part of the reply text).
    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a control or user-defined token by its text.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.special_ids.get(text).copied()
    }

    /// Encodes `text`; control tokens written in it map to their ids. No BOS
    /// is added (see [`Tokenizer::add_bos`]).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut pos = 0;
        // SentencePiece puts a word marker before the text and after each
        // special token (llama.cpp's behaviour, which GGUF models expect).
        let mut after_special = true;
        if let Some(re) = &self.specials {
            for m in re.find_iter(text) {
                if m.start() > pos {
                    self.encode_plain(&text[pos..m.start()], after_special, &mut out);
                }
                if let Some(&id) = self.special_ids.get(m.as_str()) {
                    out.push(id);
                }
                after_special = true;
                pos = m.end();
            }
        }
        if pos < text.len() {
            self.encode_plain(&text[pos..], after_special, &mut out);
        }
        out
    }

    fn encode_plain(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        match &self.kind {
            Kind::Bpe {
                merges,
                byte_ids,
                pre,
                by_bytes,
            } => {
                let mut syms = Vec::new();
                pre.pieces(text, &mut |piece| {
                    if pre.ignore_merges {
                        if let Some(&id) = by_bytes.get(piece.as_bytes()) {
                            out.push(id);
                            return;
                        }
                    }
                    syms.clear();
                    syms.extend(piece.bytes().filter_map(|b| byte_ids[usize::from(b)]));
                    bpe(merges, &mut syms);
                    out.extend_from_slice(&syms);
                });
            }
            Kind::Spm {
                pieces,
                scores,
                byte_ids,
                unk_id,
                add_space_prefix,
            } => {
                let mut escaped = String::with_capacity(text.len() + 3);
                if *add_space_prefix && after_special {
                    escaped.push(SPM_SPACE);
                }
                escaped.extend(text.chars().map(|c| if c == ' ' { SPM_SPACE } else { c }));
                spm(&escaped, pieces, scores, byte_ids, *unk_id, out);
            }
        }
    }

    /// The bytes a token stands for; control tokens give their text.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Decodes ids to text; `skip_control` drops control tokens. Invalid UTF-8
    /// (a token sequence cut inside a character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_control: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_control && self.is_control(id) {
                continue;
            }
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Applies merges by rank, leftmost first among equal ranks.
fn bpe(merges: &HashMap<(u32, u32), (u32, u32)>, syms: &mut Vec<u32>) {
    while syms.len() > 1 {
        let mut best: Option<(u32, usize, u32)> = None;
        for i in 0..syms.len() - 1 {
            if let Some(&(rank, merged)) = merges.get(&(syms[i], syms[i + 1])) {
                if best.is_none_or(|(r, _, _)| rank < r) {
                    best = Some((rank, i, merged));
                }
            }
        }
        let Some((_, i, merged)) = best else { break };
        syms[i] = merged;
        syms.remove(i + 1);
    }
}

/// A candidate SentencePiece merge of the symbols at `left` and `right`.
#[derive(PartialEq)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Pair {}

impl Ord for Pair {
    /// Highest score first, then leftmost.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// SentencePiece's BPE: starting from single characters, repeatedly merge
/// the adjacent pair whose concatenation is the highest-scoring piece
/// (leftmost on ties); characters left without a piece are spelled in byte
/// tokens (or the unknown token).
fn spm(
    text: &str,
    pieces: &HashMap<String, u32>,
    scores: &[f32],
    byte_ids: &[Option<u32>; 256],
    unk_id: Option<u32>,
    out: &mut Vec<u32>,
) {
    // Symbols as byte ranges of `text`, linked left and right.
    let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let n = starts.len();
    if n == 0 {
        return;
    }
    let mut len: Vec<usize> = (0..n)
        .map(|i| starts.get(i + 1).copied().unwrap_or(text.len()) - starts[i])
        .collect();
    let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
    let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
    let mut heap = std::collections::BinaryHeap::new();
    let pair = |l: usize, r: usize, len: &[usize]| -> Option<Pair> {
        let s = &text[starts[l]..starts[r] + len[r]];
        let id = *pieces.get(s)?;
        Some(Pair {
            score: scores.get(id as usize).copied().unwrap_or(0.0),
            left: l,
            right: r,
            len: s.len(),
        })
    };
    for i in 0..n - 1 {
        heap.extend(pair(i, i + 1, &len));
    }
    while let Some(p) = heap.pop() {
        // Stale: one side was merged away or has grown since.
        if len[p.left] == 0 || len[p.right] == 0 || len[p.left] + len[p.right] != p.len {
            continue;
        }
        len[p.left] += len[p.right];
        len[p.right] = 0;
        next[p.left] = next[p.right];
        if let Some(nx) = next[p.right] {
            prev[nx] = Some(p.left);
        }
        if let Some(pv) = prev[p.left] {
            heap.extend(pair(pv, p.left, &len));
        }
        if let Some(nx) = next[p.left] {
            heap.extend(pair(p.left, nx, &len));
        }
    }
    let mut i = Some(0);
    while let Some(s) = i {
        let piece = &text[starts[s]..starts[s] + len[s]];
        match pieces.get(piece) {
            Some(&id) => out.push(id),
            None => {
                for b in piece.bytes() {
                    out.extend(byte_ids[usize::from(b)].or(unk_id));
                }
            }
        }
        i = next[s];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: all 256 bytes, a few merges, two control tokens.
    fn toy() -> Tokenizer {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = vec!["<|s|>".into(), "<|e|>".into()];
        let mut types = vec![3, 3];
        for c in table {
            tokens.push(c.to_string());
            types.push(1);
        }
        for t in ["he", "ll", "hell", "hello", "Ġw", "Ġwo"] {
            tokens.push(t.into());
            types.push(1);
        }
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Tokenizer::from_spec(&TokenizerSpec {
            model: "gpt2".into(),
            pre: Some("gpt2".into()),
            tokens,
            merges,
            token_types: types,
            scores: Vec::new(),
            unk_id: None,
            add_space_prefix: None,
            bos_id: Some(0),
            eos_id: Some(1),
            eot_id: None,
            add_bos: false,
        })
        .unwrap()
    }

    #[test]
    fn merges_apply_by_rank() {
        let t = toy();
        let ids = t.encode("hello wo");
        let texts: Vec<String> = ids.iter().map(|&i| t.token_text(i).unwrap()).collect();
        assert_eq!(texts, ["hello", " wo"]);
    }

    #[test]
    fn control_tokens_in_text_map_to_their_ids() {
        let t = toy();
        let ids = t.encode("<|s|>hello<|e|>");
        assert_eq!(ids.first(), Some(&0));
        assert_eq!(ids.last(), Some(&1));
        assert_eq!(t.decode(&ids, true), "hello");
        assert_eq!(t.decode(&ids, false), "<|s|>hello<|e|>");
    }

    #[test]
    fn any_utf8_round_trips() {
        let t = toy();
        for s in [
            "",
            "naïve 日本語 🤖",
            "a  b \n\n\t c  ",
            "\u{0}\u{7f}\u{10ffff}",
        ] {
            assert_eq!(t.decode(&t.encode(s), false), s);
        }
    }

    #[test]
    fn whitespace_before_a_word_stays_with_the_word() {
        let pre = PreTokenizer::for_name(Some("gpt2")).unwrap();
        let mut pieces = Vec::new();
        pre.pieces("a   b\n c  ", &mut |p| pieces.push(p.to_string()));
        assert_eq!(pieces, ["a", "  ", " b", "\n", " c", "  "]);
    }

    #[test]
    fn smollm_splits_every_digit() {
        let pre = PreTokenizer::for_name(Some("smollm")).unwrap();
        let mut pieces = Vec::new();
        pre.pieces("year 2024!", &mut |p| pieces.push(p.to_string()));
        assert_eq!(pieces, ["year", " ", "2", "0", "2", "4", "!"]);
    }

    #[test]
    fn unknown_tokenizer_models_are_rejected_by_name() {
        let err = Tokenizer::from_spec(&TokenizerSpec {
            model: "t5".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("\"t5\""), "{err}");
    }

    /// A SentencePiece vocabulary: control tokens, byte fallback, pieces.
    fn toy_spm() -> Tokenizer {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (p, sc) in [
            ("\u{2581}", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("w", -2.0),
            ("ll", -3.0),
            ("he", -4.0),
            ("hell", -5.0),
            ("\u{2581}hell", -6.0),
            ("\u{2581}w", -7.0),
            ("lo", -3.5),
        ] {
            tokens.push(p.into());
            types.push(1);
            scores.push(sc);
        }
        Tokenizer::from_spec(&TokenizerSpec {
            model: "llama".into(),
            tokens,
            token_types: types,
            scores,
            unk_id: Some(0),
            bos_id: Some(1),
            eos_id: Some(2),
            add_bos: true,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn sentencepiece_merges_by_score_and_falls_back_to_bytes() {
        let t = toy_spm();
        let ids = t.encode("hello wé");
        let texts: Vec<String> = ids.iter().map(|&i| t.display_text(i)).collect();
        // "ll" (-3) beats "lo" (-3.5); "é" has no piece: two byte tokens.
        assert_eq!(texts, [" hell", "o", " w", "\u{FFFD}", "\u{FFFD}"]);
        assert_eq!(t.decode(&ids, false), " hello wé");
        // After a control token the word marker comes back.
        let ids = t.encode("<s>hello</s>hello");
        assert_eq!(ids[0], 1);
        assert_eq!(t.decode(&ids, true), " hello hello");
        assert!(t.strips_leading_space());
    }
}
