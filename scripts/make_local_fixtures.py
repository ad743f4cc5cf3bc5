#!/usr/bin/env python3
"""Writes the tiny model fixtures of crates/cai-local/tests/families.rs.

For each model family the embedded model supports, a GGUF with random
weights and a small synthetic vocabulary (crates/cai-local/tests/fixtures/<name>.gguf),
and what llama.cpp makes of it (<name>.json): the token ids of a
multilingual string set, and the logits of every position of a short token
sequence. The Rust test loads the same GGUF and must reproduce both.

Needs the `gguf`, `numpy` and `llama-cpp-python` packages (the references
in the committed JSON came from llama-cpp-python 0.3.36):

    python -m venv /tmp/venv && /tmp/venv/bin/pip install gguf numpy llama-cpp-python==0.3.36
    /tmp/venv/bin/python scripts/make_local_fixtures.py [FAMILY ...]

(on CPUs where llama.cpp's native build dies with an illegal instruction,
set CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON" for the pip install).

Deterministic: the same packages write the same files.
"""

import json
import os
import sys
from collections import Counter

import gguf
import numpy as np
from llama_cpp import Llama

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "cai-local", "tests", "fixtures")

# Text the vocabularies are learned from (English-heavy, like real ones).
CORPUS = """The quick brown fox jumps over the lazy dog. I'm sure they'll say it's fine,
but we've seen what we'd do. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14159.
Constitutional AI trains a harmless assistant through self-improvement, without
human labels identifying harmful outputs. The critique and revision loop asks the
model to point out problems in its own answer and then rewrite it.
def main():\n    print("hello, world")\n    return 0\n
Café déjà vu, naïve façade, Straße über Größe. Привет, мир! 你好，世界。
"""

# What tokenization is checked on.
STRINGS = [
    "Hello, world!",
    "The year 2024 had 366 days; pi is 3.14159.",
    "I'm sure they'LL say it's fine, but WE'VE seen it.",
    "  leading spaces\n\n\ttabs and\r\nnewlines  ",
    "Café déjà vu — naïve façade, Straße über Größe.",
    "Привет, мир! Как дела?",
    "你好，世界。日本語のテキストです。",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "emoji: 🤖🚀👍🏽 and ∑∫√ math",
    "def f(x):\n    return x**2  # square\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] Hi there [/INST]</s>",
    "unusualword xyzzyplugh",
    "a\u00a0b\u2003c\u3000d",
    "",
    " ",
    "\n\n\n",
]

# The BPE families' control tokens.
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Gemma's SentencePiece vocabulary: its own ids for the usual specials, the
# turn markers of its chat template (control tokens) and a user-defined one.
GEMMA_SPECIALS = [
    ("<pad>", 3),
    ("<eos>", 3),
    ("<bos>", 3),
    ("<unk>", 2),
    ("<start_of_turn>", 3),
    ("<end_of_turn>", 3),
    ("<start_of_image>", 4),
]

# More text for the Gemma vocabularies: their chat markup.
GEMMA_STRINGS = [
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>",
    "look: <start_of_image> here",
    " Hello world",
]


def byte_chars():
    """GPT-2's printable stand-ins for the 256 bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def learn_merges(words, n_merges):
    """Plain BPE training: most frequent adjacent pair first."""
    seqs = Counter(tuple(w) for w in words if w)
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for seq, c in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        merged = Counter()
        for seq, c in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            merged[tuple(out)] += c
        seqs = merged
    return merges


def bpe_vocab():
    table = byte_chars()
    words = []
    for line in CORPUS.split("\n"):
        for w in line.split(" "):
            words.append("".join(table[b] for b in (" " + w).encode()))
    merges = learn_merges(words, 300)
    tokens = list(BPE_SPECIALS) + [table[b] for b in range(256)]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    # A whole word with no merges leading to it: only llama.cpp's
    # ignore_merges (Llama 3) emits it as one token.
    tokens.append("".join(table[b] for b in " xyzzyplugh".encode()))
    types = [3] * len(BPE_SPECIALS) + [1] * (len(tokens) - len(BPE_SPECIALS))
    return tokens, types, [f"{a} {b}" for a, b in merges]


def spm_vocab(specials=(("<unk>", 2), ("<s>", 3), ("</s>", 3))):
    text = CORPUS.replace(" ", "\u2581")
    chars = sorted({c for c in text if c != "\n" and (ord(c) < 0x400 or c == "\u2581")})
    words = ["\u2581" + w for w in CORPUS.replace("\n", " ").split(" ") if w]
    merges = learn_merges(words, 300)
    tokens = [t for t, _ in specials] + [f"<0x{b:02X}>" for b in range(256)]
    types = [ty for _, ty in specials] + [6] * 256
    scores = [0.0] * len(tokens)
    seen = set(tokens)
    # Merged pieces score by rank (earlier merges higher); single
    # characters below every merge.
    for rank, (a, b) in enumerate(merges):
        if a + b not in seen:
            tokens.append(a + b)
            types.append(1)
            scores.append(-float(rank))
            seen.add(a + b)
    for c in chars:
        if c not in seen:
            tokens.append(c)
            types.append(1)
            scores.append(-1000.0)
            seen.add(c)
    return tokens, types, scores


# Gemma's metadata as llama.cpp's converter writes it, at toy sizes. The
# window (4 positions) is shorter than the logits sentence, so the
# sliding-window layers see less than the global ones; the soft caps are
# small enough that tanh bends these random weights' scores and logits.
GEMMA2 = {
    "gemma": "spm",
    "post_norms": True,
    "head_dim": 32,
    "sliding_window": 4,
    "attn_softcap": 3.0,
    "final_softcap": 10.0,
}
# Six layers: llama.cpp's default pattern makes the sixth the only global
# one. Global layers use rope.freq_base with linear scaling; sliding ones
# the 10 000 base llama.cpp assumes when the file names none.
GEMMA3 = {
    "gemma": "spm",
    "post_norms": True,
    "qk_norm": True,
    "dim": 32,
    "heads": 2,
    "kv_heads": 1,
    "ffn": 64,
    "layers": 6,
    "head_dim": 16,
    "sliding_window": 4,
    "rope_base": 1_000_000.0,
    "rope_linear": 8.0,
}

FAMILIES = {
    # name: (architecture, tokenizer, pre-tokenizer, extra shape)
    "llama-spm": ("llama", "llama", None, {}),
    "llama3": ("llama", "gpt2", "llama-bpe", {}),
    "qwen2": ("qwen2", "gpt2", "qwen2", {"bias": True}),
    "qwen3": ("qwen3", "gpt2", "qwen2", {"qk_norm": True, "head_dim": 32}),
    "gemma": ("gemma", "llama", None, {"gemma": "spm", "dim": 32, "ffn": 64}),
    "gemma2": ("gemma2", "llama", None, GEMMA2),
    "gemma3": ("gemma3", "llama", None, GEMMA3),
}

DIM, HEADS, KV_HEADS, FFN, LAYERS, CTX = 64, 4, 2, 128, 2, 256


def write_model(name, arch, tok_model, pre, extra, rng):
    path = os.path.join(OUT, f"{name}.gguf")
    w = gguf.GGUFWriter(path, arch)
    dim, heads, kv_heads = extra.get("dim", DIM), extra.get("heads", HEADS), extra.get("kv_heads", KV_HEADS)
    ffn, layers = extra.get("ffn", FFN), extra.get("layers", LAYERS)
    head_dim = extra.get("head_dim", dim // heads)
    w.add_name(f"cai test {name}")
    w.add_context_length(CTX)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(extra.get("rope_base", 10000.0))
    if "head_dim" in extra:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if "rope_linear" in extra:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(extra["rope_linear"])
    if "sliding_window" in extra:
        w.add_sliding_window(extra["sliding_window"])
    if "attn_softcap" in extra:
        w.add_attn_logit_softcapping(extra["attn_softcap"])
    if "final_softcap" in extra:
        w.add_final_logit_softcapping(extra["final_softcap"])
    w.add_tokenizer_model(tok_model)
    if extra.get("gemma"):
        # Gemma's SentencePiece setup: no word marker before the text.
        tokens, types, scores = spm_vocab(GEMMA_SPECIALS)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_pad_token_id(0)
        w.add_eos_token_id(1)
        w.add_bos_token_id(2)
        w.add_unk_token_id(3)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
    elif tok_model == "llama":
        tokens, types, scores = spm_vocab()
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
    else:
        tokens, types, merges = bpe_vocab()
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
    vocab = len(tokens)
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim

    def t(name, *shape, scale=0.2):
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    # Norm weights as GGUF stores them: Gemma's converter has already
    # folded its `1 + w` into them, so they look like everyone else's.
    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    # Gemma scales embeddings up by sqrt(dim) on the way in; smaller ones
    # keep the layers' share of the residual stream, while the logits (the
    # same matrix) still reach the final soft cap.
    t("token_embd.weight", vocab, dim, scale=0.5 if extra.get("gemma") else 1.0)
    norm("output_norm.weight", dim)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight", dim)
        t(f"blk.{i}.attn_q.weight", q_dim, dim)
        t(f"blk.{i}.attn_k.weight", kv_dim, dim)
        t(f"blk.{i}.attn_v.weight", kv_dim, dim)
        if extra.get("bias"):
            t(f"blk.{i}.attn_q.bias", q_dim)
            t(f"blk.{i}.attn_k.bias", kv_dim)
            t(f"blk.{i}.attn_v.bias", kv_dim)
        if extra.get("qk_norm"):
            norm(f"blk.{i}.attn_q_norm.weight", head_dim)
            norm(f"blk.{i}.attn_k_norm.weight", head_dim)
        t(f"blk.{i}.attn_output.weight", dim, q_dim)
        if extra.get("post_norms"):
            norm(f"blk.{i}.post_attention_norm.weight", dim)
        norm(f"blk.{i}.ffn_norm.weight", dim)
        t(f"blk.{i}.ffn_gate.weight", ffn, dim)
        t(f"blk.{i}.ffn_up.weight", ffn, dim)
        t(f"blk.{i}.ffn_down.weight", dim, ffn)
        if extra.get("post_norms"):
            norm(f"blk.{i}.post_ffw_norm.weight", dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, vocab


def main():
    """Writes every family's fixture, or only those named on the command line."""
    os.makedirs(OUT, exist_ok=True)
    only = set(sys.argv[1:])
    unknown = only - set(FAMILIES)
    if unknown:
        sys.exit(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    for i, (name, (arch, tok_model, pre, extra)) in enumerate(FAMILIES.items()):
        if only and name not in only:
            continue
        rng = np.random.default_rng(1000 + i)
        path, vocab = write_model(name, arch, tok_model, pre, extra, rng)
        # An f32 KV cache (llama.cpp defaults to f16), like the embedded model.
        llm = Llama(model_path=path, n_ctx=CTX, logits_all=True, n_threads=1, verbose=False, seed=0, type_k=0, type_v=0)
        tokens = [
            {"text": s, "ids": llm.tokenize(s.encode(), add_bos=False, special=True)}
            for s in STRINGS + (GEMMA_STRINGS if extra.get("gemma") else [])
        ]
        # A sequence through every layer: the tokens of a short sentence.
        ids = llm.tokenize("The critique loop asks the model to rewrite 2024 answers.".encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        ref = {
            "generator": f"scripts/make_local_fixtures.py, llama-cpp-python {__import__('llama_cpp').__version__}",
            "architecture": arch,
            "vocab": vocab,
            "tokenize": tokens,
            "logits": {"ids": ids, "rows": [[round(float(v), 5) for v in row] for row in logits]},
        }
        with open(os.path.join(OUT, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(ref, f, ensure_ascii=False, indent=0)
            f.write("\n")
        print(f"{name}: {vocab} tokens, {len(ids)} positions", file=sys.stderr)


if __name__ == "__main__":
    main()
