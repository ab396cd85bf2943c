#!/usr/bin/env python3
"""ONNX Runtime peer for Fabric's all-MiniLM-L6-v2 sentence embedder (benchmark and accuracy).

Builds the BERT encoder plus mean pooling and L2 normalisation as an ONNX graph (opset 17)
straight from model.safetensors with onnx.helper -- no torch, transformers or optimum. The
graph is written in the op pattern a PyTorch export of BERT has, so that ONNX Runtime's
transformer optimizer (model_type="bert") can fuse it into Attention, SkipLayerNormalization,
EmbedLayerNormalization and BiasGelu. The optimized fp32 model is then quantized with
quantize_dynamic(per_channel=True, weight_type=QInt8), the usual dynamic int8 path.

Reads a JSON request, one line, on stdin:
    {"model_dir": DIR, "cache_dir": DIR, "threads": T, "runs": R,
     "texts": [optional texts to embed], "bench": [{"batch": B, "tokens": L}, ...]}
and prints JSON lines on stdout:
    {"kind": "build", ...}                        versions, fused-op counts, model paths
    {"kind": "fp32"|"int8", "embeddings": [...]}   one per kind when "texts" is given
    {"kind": "fp32"|"int8", "batch": B, "tokens": L, "median_s": s, "sentences_per_s": x}
With "serve": true in the request it then prints {"kind": "ready"} and times one shape per
line read from stdin, {"kind": K, "batch": B, "tokens": L, "runs": R, "warmup": W}, answering with a line
as above, until stdin closes: the caller alternates its own timings with these.
Exits with status 3 and a reason on stderr when onnxruntime, onnx, numpy or tokenizers is missing.
"""
import json
import math
import struct
import sys
import time
from pathlib import Path

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers import optimizer as ort_optimizer
    from tokenizers import Tokenizer
except ImportError as e:  # the benchmark prints a skip line
    print(f"missing python package: {e.name}", file=sys.stderr)
    sys.exit(3)

OPSET = 17
MAX_TOKENS = 256  # truncation for "texts", as in minilm_reference.py
BENCH_TEXT = ("Replica placement should spread copies across three failure domains so that "
              "losing a rack or a power feed never loses data.")


def load_weights(path):
    """{name: float32 array} for every F32 tensor of a .safetensors file (parsed by hand).

    Layout: u64 little-endian header length, a JSON header (dtype, shape, byte offsets
    relative to the end of the header), then raw little-endian data. The I64 buffer
    embeddings.position_ids is skipped; any other non-F32 tensor is an error.
    """
    blob = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = memoryview(blob)[8 + header_len:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            if name.endswith("position_ids"):
                continue
            sys.exit(f"{path}: tensor {name} is {info['dtype']}; only F32 is supported")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"]).copy()
        out[name.removeprefix("bert.")] = arr
    return out


class GraphBuilder:
    """Small helper that collects nodes and initializers and hands out unique names."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name, value, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def build_encoder(model_dir):
    """Returns the fp32 ModelProto: input_ids, attention_mask (int64 [batch, seq]) -> embeddings."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("hidden_act") != "gelu":
        sys.exit(f"hidden_act {cfg.get('hidden_act')!r} is not supported (only exact gelu)")
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    head_dim = hidden // heads
    w = load_weights(Path(model_dir) / "model.safetensors")
    g = GraphBuilder()
    W = lambda name: g.const(name, w[name])                 # a weight, as stored
    WT = lambda name: g.const(name + ".T", w[name].T)       # a torch Linear weight as [in, out]
    i64 = lambda name, v: g.const(name, v, np.int64)

    # Shared constants (the fusion patterns look these values up).
    one, half, sqrt2 = g.const("one", 1.0), g.const("half", 0.5), g.const("sqrt2", math.sqrt(2.0))
    mask_value = g.const("mask_value", -10000.0)  # the additive bias for padded keys
    score_scale = g.const("score_scale", math.sqrt(head_dim))
    heads_shape = i64("heads_shape", [0, 0, heads, head_dim])
    merged_shape = i64("merged_shape", [0, 0, hidden])

    def layer_norm(x, prefix):
        return g.op("LayerNormalization", [x, W(prefix + ".weight"), W(prefix + ".bias")],
                    axis=-1, epsilon=eps)

    def linear(x, prefix):
        return g.op("Add", [g.op("MatMul", [x, WT(prefix + ".weight")]), W(prefix + ".bias")])

    # Embeddings: word + token type 0 + position, as BERT's exporter writes them. Positions
    # are position_ids[:, :seq] (Shape -> Gather(1) -> Unsqueeze -> Slice) looked up in the table.
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), i64("idx1", 1)], axis=0)
    positions = g.op("Slice", [i64("position_ids", np.arange(cfg["max_position_embeddings"])[None]),
                               i64("zero_1d", [0]), g.op("Unsqueeze", [seq_len, i64("axis0", [0])]),
                               i64("axis1", [1]), i64("step1", [1])])
    token_types = g.op("ConstantOfShape", [g.op("Shape", ["input_ids"])],
                       value=numpy_helper.from_array(np.zeros(1, np.int64)))
    words = g.op("Gather", [W("embeddings.word_embeddings.weight"), "input_ids"])
    types = g.op("Gather", [W("embeddings.token_type_embeddings.weight"), token_types])
    pos = g.op("Gather", [W("embeddings.position_embeddings.weight"), positions])
    x = layer_norm(g.op("Add", [g.op("Add", [words, types]), pos]), "embeddings.LayerNorm")

    # Additive key mask [batch, 1, 1, seq]: 0 for real tokens, -10000 for padding.
    mask4 = g.op("Unsqueeze", [g.op("Unsqueeze", ["attention_mask", i64("axes1", [1])]),
                               i64("axes2", [2])])
    key_bias = g.op("Mul", [g.op("Sub", [one, g.op("Cast", [mask4], to=TensorProto.FLOAT)]),
                            mask_value])

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        # [batch, seq, hidden] -> [batch, heads, seq, head_dim]; K goes straight to [.., head_dim, seq].
        split = lambda t, perm: g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=perm)
        q = split(linear(x, p + "attention.self.query"), [0, 2, 1, 3])
        k = split(linear(x, p + "attention.self.key"), [0, 2, 3, 1])
        v = split(linear(x, p + "attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Div", [g.op("MatMul", [q, k]), score_scale]), key_bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merged_shape])
        x = layer_norm(g.op("Add", [linear(ctx, p + "attention.output.dense"), x]),
                       p + "attention.output.LayerNorm")
        # Exact GELU written out: x * (1 + erf(x / sqrt2)) * 0.5.
        h = linear(x, p + "intermediate.dense")
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [g.op("Erf", [g.op("Div", [h, sqrt2])]), one])]),
                         half])
        x = layer_norm(g.op("Add", [linear(h, p + "output.dense"), x]), p + "output.LayerNorm")

    # Mean over real tokens ([CLS]/[SEP] included), then unit length (eps as torch's normalize).
    # (At opset 17 ReduceSum takes its axes as an input but ReduceL2 still as an attribute.)
    mask3 = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", i64("axes2b", [2])])],
                 to=TensorProto.FLOAT)
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), i64("axes1b", [1])], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [mask3, i64("axes1c", [1])], keepdims=0),
                         g.const("min_count", 1e-9)])
    pooled = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [pooled], axes=[1], keepdims=1),
                        g.const("min_norm", 1e-12)])
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["embeddings"], name="l2_normalize"))

    graph = helper.make_graph(
        g.nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fabric-ort_minilm")
    onnx.checker.check_model(model)
    return model, heads, hidden


def prepare_models(model_dir, cache_dir):
    """Writes raw, optimized-fp32 and int8 models into cache_dir; returns (paths, build info).

    The cache is reused when its stamp (weights size/mtime, package versions) still matches.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    st = (Path(model_dir) / "model.safetensors").stat()
    stamp = {"weights": [st.st_size, st.st_mtime_ns], "onnx": onnx.__version__,
             "onnxruntime": ort.__version__, "script": 1}
    paths = {k: cache / f"minilm_{k}.onnx" for k in ("raw", "fp32", "prep", "int8")}
    stamp_file, info_file = cache / "minilm_stamp.json", cache / "minilm_build.json"
    if (stamp_file.exists() and info_file.exists() and all(p.exists() for p in paths.values())
            and json.loads(stamp_file.read_text()) == stamp):
        return paths, json.loads(info_file.read_text())

    model, heads, hidden = build_encoder(model_dir)
    onnx.save(model, str(paths["raw"]))
    info = {"raw_ops": op_counts(model)}
    try:
        # What a user does: the BERT transformer optimizer. Its default for "bert" (opt_level 1)
        # first runs ORT's basic graph pass, which in onnxruntime 1.32 does `import torch`
        # (for a ROCm check) and so fails without torch; then fall back to opt_level 0, the
        # same Python fusions minus that pass (the session's ORT_ENABLE_ALL runs it anyway).
        try:
            opt = ort_optimizer.optimize_model(str(paths["raw"]), model_type="bert",
                                               num_heads=heads, hidden_size=hidden)
            info["optimizer_opt_level"] = "default"
        except ModuleNotFoundError as e:
            opt = ort_optimizer.optimize_model(str(paths["raw"]), model_type="bert",
                                               num_heads=heads, hidden_size=hidden, opt_level=0)
            info["optimizer_opt_level"] = f"0 (default failed: no module {e.name})"
        opt.save_model_to_file(str(paths["fp32"]))
        info["fused"] = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        info["fp32_ops"] = op_counts(opt.model)
    except Exception as e:  # fall back to the unfused graph; ORT_ENABLE_ALL still fuses some
        info["optimizer_error"] = f"{type(e).__name__}: {e}"
        onnx.save(model, str(paths["fp32"]))
    # quantize_dynamic needs every tensor's type, and plain ONNX shape inference stops at
    # the com.microsoft ops the optimizer made; the documented pre-processing step
    # (symbolic shape inference + ORT basic pass) supplies them.
    quant_pre_process(str(paths["fp32"]), str(paths["prep"]))
    quantize_dynamic(str(paths["prep"]), str(paths["int8"]), per_channel=True,
                     weight_type=QuantType.QInt8)
    info["int8_ops"] = op_counts(onnx.load(str(paths["int8"])))
    info_file.write_text(json.dumps(info))
    stamp_file.write_text(json.dumps(stamp))
    return paths, info


def op_counts(model):
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def feeds(ids_rows):
    """Session inputs for equal-length rows of token ids, every position real."""
    ids = np.asarray(ids_rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def bench_ids(tokenizer, tokens):
    """[CLS] + the bench text's word pieces, cycled to fill + [SEP]: exactly `tokens` ids."""
    body = tokenizer.encode(BENCH_TEXT, add_special_tokens=False).ids
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    n = max(tokens - 2, 0)
    return [cls] + [body[i % len(body)] for i in range(n)] + [sep]


def main():
    req = json.loads(sys.stdin.readline())  # one line: with "serve", more follow
    threads, runs = int(req.get("threads", 1)), int(req.get("runs", 10))
    model_dir = req["model_dir"]
    paths, info = prepare_models(model_dir, req["cache_dir"])
    print(json.dumps({"kind": "build", "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                      "numpy": np.__version__, "models": {k: str(v) for k, v in paths.items()},
                      **info}), flush=True)

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped tokenizer.json pads to 128
    tokenizer.enable_truncation(max_length=MAX_TOKENS)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {}
    for kind in ("fp32", "int8"):
        sess = ort.InferenceSession(str(paths[kind]), opts, providers=["CPUExecutionProvider"])
        sessions[kind] = sess
        if req.get("texts"):
            # One unpadded sequence per run, exactly what the float64 reference computes.
            embs = [sess.run(["embeddings"], feeds([tokenizer.encode(t).ids]))[0][0].tolist()
                    for t in req["texts"]]
            print(json.dumps({"kind": kind, "embeddings": embs}), flush=True)
        for shape in req.get("bench", []):
            timed(sess, kind, tokenizer, int(shape["batch"]), int(shape["tokens"]), runs, threads)
    if req.get("serve"):
        print(json.dumps({"kind": "ready"}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            timed(sessions[cmd["kind"]], cmd["kind"], tokenizer, int(cmd["batch"]),
                  int(cmd["tokens"]), int(cmd.get("runs", runs)), threads,
                  warmup=int(cmd.get("warmup", 3)))


def timed(sess, kind, tokenizer, batch, tokens, runs, threads, warmup=3):
    """Times `runs` runs of `batch` sequences of `tokens` ids and prints the result line."""
    inputs = feeds([bench_ids(tokenizer, tokens)] * batch)
    start = time.perf_counter()
    for _ in range(warmup):  # weight prepacking, allocator arenas
        sess.run(None, inputs)
    while time.perf_counter() - start < 0.05:  # as infer-bench: threads woken after a sleep
        sess.run(None, inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    print(json.dumps({"kind": kind, "batch": batch, "tokens": tokens, "threads": threads,
                      "runs": runs, "median_s": median, "min_s": min(times),
                      "sentences_per_s": batch / median}), flush=True)


if __name__ == "__main__":
    main()
