"""Smoke test for the aarch64 emulation environment (and its x86 twin).

Run the SAME script on the host and in the guest and compare the printed hashes:

    # host (needs onnx and ai_edge_litert, i.e. the [export] venv): write tiny models once
    .venv/bin/python .ci/aarch64_smoke.py --write-models /tmp/tddfa-smoke
    .venv/bin/python .ci/aarch64_smoke.py /tmp/tddfa-smoke/tiny.onnx /tmp/tddfa-smoke/tiny.tflite
    # guest (Raspberry Pi 4 / 5 under qemu)
    .ci/aarch64_python --cpu cortex-a72 --site modern .ci/aarch64_smoke.py /tmp/tddfa-smoke/tiny.*
    .ci/aarch64_python --cpu cortex-a76 --site legacy .ci/aarch64_smoke.py /tmp/tddfa-smoke/tiny.*

Positional arguments are model files (.onnx / .tflite); a model type not given is skipped.
Float model outputs are checked against a numpy reference (tolerance 1e-4); their hashes are
printed too but may differ between x86 and ARM in the last bits (FMA, kernel choice). The
OpenCV hashes are of uint8 images: INTER_LINEAR_EXACT must match x86 bit for bit, INTER_LINEAR
is known to differ by +-1 (different fixed-point SIMD paths). Exit code 1 if a check fails.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys

import numpy as np

TOL = 1e-4


def sha(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------- fixed test data
def conv_case():
    rs = np.random.RandomState(1)  # RandomState streams are stable across numpy versions
    w = rs.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rs.standard_normal(4).astype(np.float32)
    x = rs.standard_normal((1, 3, 8, 8)).astype(np.float32)
    return x, w, b


def conv_ref(x, w, b):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((1, w.shape[0], x.shape[2], x.shape[3]))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + x.shape[2], j:j + x.shape[3]]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return np.maximum(out + b[None, :, None, None], 0)


def fc_case():
    rs = np.random.RandomState(2)
    w = rs.standard_normal((8, 16)).astype(np.float32)
    b = rs.standard_normal(8).astype(np.float32)
    x = rs.standard_normal((1, 16)).astype(np.float32)
    return x, w, b


def fc_ref(x, w, b):
    return np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0)


# ---------------------------------------------------------------------------- host-only model writers
def write_models(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x, w, b = conv_case()
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(out_dir, "tiny.onnx"))

    # TFLite flatbuffer built with the schema's object API: FULLY_CONNECTED v1 (+ fused RELU),
    # old enough for tflite-runtime 2.14, delegated to XNNPACK by ai-edge-litert.
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    x, w, b = fc_case()

    def buf(a=None):
        bt = s.BufferT()
        if a is not None:
            bt.data = np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)
        return bt

    def tensor(name, shape, buffer):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buffer
        return t

    oc = s.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    oc.version = 1
    opt = s.FullyConnectedOptionsT()
    opt.fusedActivationFunction = s.ActivationFunctionType.RELU
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.FullyConnectedOptions, opt
    sg = s.SubGraphT()
    sg.tensors = [tensor("x", x.shape, 1), tensor("w", w.shape, 2), tensor("b", b.shape, 3),
                  tensor("y", (1, 8), 4)]
    sg.inputs, sg.outputs, sg.operators, sg.name = [0], [3], [op], "main"
    model = s.ModelT()
    model.version, model.description = 3, "tddfa-edge aarch64 smoke"
    model.operatorCodes, model.subgraphs = [oc], [sg]
    model.buffers = [buf(), buf(), buf(w), buf(b), buf()]
    fb = flatbuffers.Builder(4096)
    fb.Finish(model.Pack(fb), file_identifier=b"TFL3")
    with open(os.path.join(out_dir, "tiny.tflite"), "wb") as f:
        f.write(fb.Output())
    print(f"wrote {out_dir}/tiny.onnx and {out_dir}/tiny.tflite")


# ---------------------------------------------------------------------------- checks
def version(mod: str) -> str:
    try:
        m = __import__(mod)
    except Exception as e:  # noqa: BLE001 - report anything (ImportError, numpy ABI errors...)
        return f"- ({type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''})"
    return getattr(m, "__version__", "?")


def hwcap() -> str:
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        return f"HWCAP=0x{libc.getauxval(16):x} HWCAP2=0x{libc.getauxval(26):x}"
    except Exception as e:  # noqa: BLE001
        return f"HWCAP=? ({e})"


def cpu_part() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("CPU part", "model name")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def run_onnx(path: str) -> bool:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x, w, b = conv_case()
    y = sess.run(None, {"x": x})[0]
    err = float(np.abs(y - conv_ref(x, w, b)).max())
    ok = err < TOL
    print(f"onnxruntime conv+relu: sha={sha(y)} sum={y.sum(dtype=np.float64):.6f} "
          f"max_err_vs_numpy={err:.2e} {'OK' if ok else 'FAIL'}")
    return ok


def run_tflite(path: str) -> bool:
    try:
        from ai_edge_litert.interpreter import Interpreter
        which = "ai_edge_litert"
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
        which = "tflite_runtime"
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    x, w, b = fc_case()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    err = float(np.abs(y - fc_ref(x, w, b)).max())
    ok = err < TOL
    print(f"{which} fc+relu: sha={sha(y)} sum={y.sum(dtype=np.float64):.6f} "
          f"max_err_vs_numpy={err:.2e} {'OK' if ok else 'FAIL'}")
    return ok


def run_cv2() -> bool:
    import cv2
    img = np.random.RandomState(0).randint(0, 256, size=(173, 229, 3)).astype(np.uint8)
    print(f"cv2 input: sha={sha(img)}")
    for dsize in ((120, 120), (400, 300)):
        lin = cv2.resize(img, dsize, interpolation=cv2.INTER_LINEAR)
        exact = cv2.resize(img, dsize, interpolation=cv2.INTER_LINEAR_EXACT)
        d = np.abs(lin.astype(np.int16) - exact)
        print(f"cv2 resize {img.shape[1]}x{img.shape[0]}->{dsize[0]}x{dsize[1]}: "
              f"INTER_LINEAR sha={sha(lin)} INTER_LINEAR_EXACT sha={sha(exact)} "
              f"(LINEAR!=EXACT in {100 * (d > 0).mean():.1f}% of values, max {d.max()})")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help=".onnx / .tflite files to run")
    ap.add_argument("--write-models", metavar="DIR", help="host only: write tiny.onnx/tiny.tflite")
    a = ap.parse_args(argv)
    if a.write_models:
        write_models(a.write_models)
        return 0
    print(f"machine={platform.machine()} python={platform.python_version()} "
          f"cpu={cpu_part()} cpu_count={os.cpu_count()} {hwcap()}")
    print("versions: " + " ".join(f"{m}={version(m)}" for m in
                                  ("numpy", "cv2", "onnxruntime", "ai_edge_litert", "tflite_runtime")))
    ok = run_cv2()
    for p in a.models:
        if p.endswith(".onnx"):
            ok &= run_onnx(p)
        elif p.endswith(".tflite"):
            ok &= run_tflite(p)
        else:
            print(f"skip {p}: unknown model type")
    print("SMOKE " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
