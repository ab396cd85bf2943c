#!/usr/bin/env python3
"""Times ONNX Runtime's GEMMs for the infer benchmark.

Reads a JSON request on stdin: {"threads": T, "runs": R, "shapes": [[M, K, N], ...]}.
For each shape builds two one-node models, MatMul (f32 x f32) and MatMulInteger
(uint8 activations x int8 weights, i32 out), with the weights as initializers (as in a real
model), and prints one JSON line per shape and kind with the median seconds of R runs.
Exits with status 3 and a reason on stderr when onnxruntime, onnx or numpy is missing.
"""
import json
import sys
import time

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # the benchmark prints a skip line
    print(f"missing python package: {e.name}", file=sys.stderr)
    sys.exit(3)


def build(kind, m, k, n, rng):
    if kind == "f32":
        a_type, out_type, op = TensorProto.FLOAT, TensorProto.FLOAT, "MatMul"
        b = rng.standard_normal((k, n), dtype=np.float32)
        a = rng.standard_normal((m, k), dtype=np.float32)
    else:
        a_type, out_type, op = TensorProto.UINT8, TensorProto.INT32, "MatMulInteger"
        b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
        a = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["C"])],
        f"gemm_{kind}",
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("C", out_type, [m, n])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString(), a


def main():
    req = json.load(sys.stdin)
    threads, runs = int(req["threads"]), int(req["runs"])
    rng = np.random.default_rng(7)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for m, k, n in req["shapes"]:
        for kind in ("f32", "int8"):
            model, a = build(kind, m, k, n, rng)
            sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            warm_up(lambda: sess.run(None, {"A": a}))  # prepacks weights, wakes the threads
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, {"A": a})
                times.append(time.perf_counter() - t0)
            times.sort()
            print(json.dumps({"m": m, "k": k, "n": n, "kind": kind, "seconds": times[len(times) // 2], "version": ort.__version__}), flush=True)


def warm_up(run, seconds=0.05):
    """Runs `run` once, then again until `seconds` have passed: as infer-bench warms itself
    up (a thread woken after a sleep took 2-8 ms to run again on the test machines)."""
    start = time.perf_counter()
    run()
    while time.perf_counter() - start < seconds:
        run()


if __name__ == "__main__":
    main()
