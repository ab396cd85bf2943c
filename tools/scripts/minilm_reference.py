#!/usr/bin/env python3
"""Float64 numpy reference for the all-MiniLM-L6-v2 sentence embedder.

Produces the embeddings that Fabric's Rust inference path is checked against. Needs only
numpy and tokenizers: the safetensors file is parsed by hand, the BERT encoder is written
out below, and everything after the fp32 weights are read is computed in float64.

    minilm_reference.py --model-dir DIR --corpus FILE [--max-tokens 256] --output FILE
    minilm_reference.py --model-dir DIR --card

--output writes JSON Lines, one object per non-empty corpus line, in corpus order:
    {"text": ..., "ids": [101, ..., 102], "embedding": [384 floats]}
--card prints the pairwise cosine similarities of the model card's example sentences.
"""
import argparse
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# The sentences of the usage example in the model card (README.md). The card prints the
# embeddings but publishes no similarity figures for them, so --card has nothing to
# compare against; its output is informative only.
CARD_SENTENCES = ["This is an example sentence", "Each sentence is converted"]


def read_safetensors(path):
    """Returns {name: float64 array} for every F32 tensor in a .safetensors file.

    Layout: u64 little-endian header size, a JSON header mapping each name to its dtype,
    shape and [begin, end) byte offsets (counted from the end of the header), then the raw
    little-endian data. Only F32 is supported. The file also carries an I64 buffer,
    embeddings.position_ids, which is just 0..511 and is not a weight: non-F32 tensors
    outside that list are refused, so a surprise (e.g. an F16 export) fails loudly.
    """
    blob = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = memoryview(blob)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] != "F32":
            if name.endswith("position_ids"):
                continue  # a buffer, not a weight; positions are computed below
            sys.exit(f"{path}: tensor {name} has dtype {info['dtype']}; only F32 is supported")
        arr = np.frombuffer(data[begin:end], dtype="<f4")
        tensors[name] = arr.reshape(info["shape"]).astype(np.float64)
    # Some exports name the weights "bert.encoder..." instead of "encoder...": drop it.
    return {n[len("bert."):] if n.startswith("bert.") else n: t for n, t in tensors.items()}


def layer_norm(x, gamma, beta, eps):
    """Normalises each row to zero mean, unit (biased) variance, then scales and shifts."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


# Exact GELU needs erf, which numpy lacks; math.erf is correctly rounded enough for float64.
_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def dense(x, w, name):
    """A torch Linear: weight is stored [out, in], so y = x @ W^T + b."""
    return x @ w[name + ".weight"].T + w[name + ".bias"]


class MiniLM:
    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            sys.exit("1_Pooling/config.json does not ask for mean pooling; not supported")
        if cfg.get("hidden_act") != "gelu":
            sys.exit(f"hidden_act {cfg.get('hidden_act')!r} is not supported (only exact gelu)")
        self.eps = cfg["layer_norm_eps"]
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.head_dim = cfg["hidden_size"] // self.heads
        self.max_positions = cfg["max_position_embeddings"]
        self.w = read_safetensors(model_dir / "model.safetensors")
        # The shipped tokenizer.json pads and truncates to 128; undo both.
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()

    def tokenize(self, text, max_tokens):
        # max_length counts the [CLS] and [SEP] the post-processor adds.
        self.tokenizer.enable_truncation(max_length=min(max_tokens, self.max_positions))
        return self.tokenizer.encode(text).ids

    def encode(self, ids):
        """Runs the encoder over one unpadded sequence and returns its unit embedding."""
        w, n = self.w, len(ids)
        ids = np.asarray(ids)
        # Every token is in segment 0 and every position is real (mask of ones).
        mask = np.ones(n)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][np.zeros(n, dtype=int)])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        # Padded keys would get -inf-like scores; with one unpadded sequence this adds 0.
        key_bias = (1.0 - mask) * -1e30
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            # [n, hidden] -> [heads, n, head_dim]
            split = lambda t: t.reshape(n, self.heads, self.head_dim).transpose(1, 0, 2)
            q = split(dense(x, w, p + "attention.self.query"))
            k = split(dense(x, w, p + "attention.self.key"))
            v = split(dense(x, w, p + "attention.self.value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(self.head_dim) + key_bias
            scores -= scores.max(axis=-1, keepdims=True)  # softmax, stabilised
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, -1)  # heads back side by side
            x = layer_norm(dense(ctx, w, p + "attention.output.dense") + x,
                           w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = gelu(dense(x, w, p + "intermediate.dense"))
            x = layer_norm(dense(h, w, p + "output.dense") + x,
                           w[p + "output.LayerNorm.weight"],
                           w[p + "output.LayerNorm.bias"], self.eps)
        # Mean over real tokens ([CLS] and [SEP] included), then unit length. The pooler
        # weights in the file are not used by the sentence-transformers pipeline.
        pooled = (x * mask[:, None]).sum(axis=0) / max(mask.sum(), 1e-9)
        return pooled / max(np.linalg.norm(pooled), 1e-12)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--corpus")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--output")
    ap.add_argument("--card", action="store_true",
                    help="print cosine similarities of the model card's example sentences")
    args = ap.parse_args()
    if args.max_tokens < 2:
        ap.error("--max-tokens must leave room for [CLS] and [SEP]")
    model = MiniLM(args.model_dir)

    if args.card:
        embs = [model.encode(model.tokenize(s, args.max_tokens)) for s in CARD_SENTENCES]
        pairs = [{"a": CARD_SENTENCES[i], "b": CARD_SENTENCES[j],
                  "cosine": float(embs[i] @ embs[j])}
                 for i in range(len(embs)) for j in range(i + 1, len(embs))]
        print(json.dumps({"sentences": CARD_SENTENCES, "similarities": pairs}, indent=2,
                         ensure_ascii=False))
        return
    if not args.corpus or not args.output:
        ap.error("--corpus and --output are required unless --card is given")

    # Split on "\n" only (not str.splitlines, which also breaks on U+2028 and friends);
    # tolerate CRLF files; skip empty lines but keep whitespace-only ones verbatim.
    lines = Path(args.corpus).read_text(encoding="utf-8").split("\n")
    texts = [l.removesuffix("\r") for l in lines if l.removesuffix("\r")]
    with open(args.output, "w", encoding="utf-8") as out:
        for text in texts:
            ids = model.tokenize(text, args.max_tokens)
            emb = model.encode(ids)
            # repr-exact floats so the Rust side sees the full float64 value.
            out.write(json.dumps({"text": text, "ids": ids, "embedding": emb.tolist()},
                                 ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
