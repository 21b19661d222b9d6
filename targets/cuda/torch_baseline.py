#!/usr/bin/env python3
"""PyTorch baseline of an engine's model: rebuild models/ref/model.py's Encoder and Decoder from
the ONNX graphs inside an engine file, check them against the graphs, and time one frame.

    python3 targets/cuda/torch_baseline.py --engine models/segicl-ref.plan --device cuda \
        [--frames 500] [--dtype f16[,f32]] [--bn keep|fold|both] [--json out.json]
    python3 targets/cuda/torch_baseline.py --device cpu --frames 5        # CPU smoke test

No checkpoint is shipped, so the weights come from the engine. export.py exports with
`do_constant_folding=True`, which (a) folds every Conv+BatchNorm pair into one Conv whose weight
and bias are renamed `onnx::Conv_N`, and (b) stores every Linear weight transposed as
`onnx::MatMul_N`; all other parameters keep their state_dict names. The exporter names each node
after its module scope (`/encoder/stage2/a/a.0/Conv`, `/decoder/blocks.0/q/MatMul`), so the
renamed initializers are mapped back through the node that consumes them:
  - Conv followed by BatchNorm in model.py: the conv gets the folded weight; the BatchNorm
    (eval mode) becomes the folded bias exactly (gamma 1, beta b, mean 0, var 1 - eps), so the
    modules run as model.py defines them (`--bn keep`), or the conv takes the bias and the
    BatchNorm is replaced by Identity (`--bn fold`, what an inference engine does anyway);
  - MatMul of a Linear: weight = initializer transposed.
Every state_dict entry must be set exactly once and every initializer used, else it stops.

Checks (before timing, on CPU in f32): the rebuilt modules against the ONNX graphs executed by
onnx.reference.ReferenceEvaluator (or onnxruntime when installed) on the same inputs, and against
PyTorch's own logits stored in tests/golden/segicl-ref-parity.bin by export.py (the original
checkpoint's output). Max |difference| of ctx, features and logits is printed.

A timed frame (what the runtime does per frame with 3 cached shots): the query image (128x128,
min-max normalised, a host copy in pinned memory) is copied to the device, the encoder runs on it
with a zero mask, the decoder runs with the 3 shots' cached ctx (66 tokens, all valid), and the
logits are copied back; then the stream is synchronised. Modes: `eager` (module calls) and
`graph` (the same work captured once in a torch.cuda.CUDAGraph, replayed on static buffers;
CUDA only). Per frame: wall time (perf_counter) and GPU time (torch.cuda.Event) of the whole
copy-in..copy-out; p50/p90/p99/mean over --frames after --warmup frames. Resizing the frame to
128x128 and thresholding are not included (segicl-edge bench includes them in its frame time).
"""

import argparse
import copy
import json
import os
import platform
import struct
import sys
import time
import zlib

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models", "ref"))
import model as ref  # noqa: E402  (models/ref/model.py)

MAGIC = b"SEGICLEF"


# ---------------------------------------------------------------- engine file


def read_engine(path):
    """Sections of an engine file: {tag: bytes}, every CRC checked (docs/engine-format.md §2)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 64 or data[:8] != MAGIC:
        raise SystemExit(f"{path}: not a segicl engine (magic {data[:8]!r})")
    major, _minor, _flags, count, _align, length = struct.unpack_from("<HHIIIQ", data, 8)
    table_crc, = struct.unpack_from("<I", data, 32)
    header_crc, = struct.unpack_from("<I", data, 60)
    if major != 1:
        raise SystemExit(f"{path}: engine format {major}.x, this script reads 1.x")
    if length != len(data):
        raise SystemExit(f"{path}: header says {length} bytes, file has {len(data)}")
    if zlib.crc32(data[:60]) != header_crc:
        raise SystemExit(f"{path}: header CRC mismatch")
    if zlib.crc32(data[64:64 + 32 * count]) != table_crc:
        raise SystemExit(f"{path}: section table CRC mismatch")
    sections = {}
    for i in range(count):
        tag, offset, size, crc, _flags = struct.unpack_from("<8sQQII", data, 64 + 32 * i)
        name = tag.rstrip(b"\0").decode("ascii", "replace")
        payload = data[offset:offset + size]
        if len(payload) != size or zlib.crc32(payload) != crc:
            raise SystemExit(f"{path}: section {name} is damaged (CRC or length)")
        sections[name] = payload
    for name in ("MANIFEST", "ENCODER", "DECODER"):
        if name not in sections:
            raise SystemExit(f"{path}: section {name} missing")
    return sections


# ---------------------------------------------------------------- ONNX -> model.py


def module_path(node_name):
    """`/encoder/stem/stem.0/stem.0.0/Conv` -> `encoder.stem.0.0` (TorchScript exporter scopes:
    each level is the child's name, qualified by its parent's attribute name)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    path, last = [], None
    for p in parts:
        if last is not None and p.startswith(last + "."):
            path.append(p[len(last) + 1:])
        else:
            path.append(p)
        last = p
    return ".".join(path)


class Graph:
    """What the weight mapping needs of an ONNX graph: its name, nodes (name, op_type, inputs)
    and initializers as numpy arrays. Read with the `onnx` package when installed, else with the
    small protobuf reader below (the device machine may have torch and numpy only)."""

    def __init__(self, name, nodes, inits):
        self.name, self.nodes, self.inits = name, nodes, inits


class Node:
    def __init__(self, name, op_type, inputs):
        self.name, self.op_type, self.input = name, op_type, inputs


def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    """(field number, wire type, value) of one protobuf message; value is int or bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} not supported")
        yield field, wire, value


_ONNX_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_}


def _repeated_ints(wire, value):
    """The integers of a repeated integer field: packed (wire type 2) or one varint."""
    if wire != 2:
        return [value]
    ints, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        ints.append(v)
    return ints


def _tensor(buf):
    """TensorProto -> (name, array): dims 1, data_type 2, float_data 4, int32_data 5, int64_data 7,
    name 8, raw_data 9, double_data 10."""
    dims, dtype, name, raw, floats, ints = [], 1, "", None, [], []
    for field, wire, value in _fields(buf):
        if field == 1:
            dims.extend(_repeated_ints(wire, value))
        elif field == 2:
            dtype = value
        elif field == 8:
            name = bytes(value).decode()
        elif field == 9:
            raw = bytes(value)
        elif field == 4:
            floats.extend(struct.unpack(f"<{len(value) // 4}f", value) if wire == 2 else struct.unpack("<f", value))
        elif field in (5, 7):
            ints.extend(_repeated_ints(wire, value))
        elif field == 14:
            raise ValueError(f"initializer {name}: external data is not supported")
    if dtype not in _ONNX_DTYPES:
        raise ValueError(f"initializer {name}: ONNX data type {dtype} not supported")
    np_type = np.dtype(_ONNX_DTYPES[dtype]).newbyteorder("<")
    if raw is not None:
        array = np.frombuffer(raw, np_type)
    elif floats:
        array = np.asarray(floats, np.float32)
    else:
        array = np.asarray(ints, np.int64).astype(np_type)
    return name, array.reshape(dims).astype(np_type.newbyteorder("="), copy=True)


def _parse_graph(model_bytes):
    graph = next((v for f, w, v in _fields(memoryview(model_bytes)) if f == 7 and w == 2), None)
    if graph is None:
        raise ValueError("ModelProto without a graph")
    name, nodes, inits = "", [], {}
    for field, wire, value in _fields(graph):
        if field == 1:  # NodeProto: input 1, output 2, name 3, op_type 4
            inputs, node_name, op = [], "", ""
            for f, _, v in _fields(value):
                if f == 1:
                    inputs.append(bytes(v).decode())
                elif f == 3:
                    node_name = bytes(v).decode()
                elif f == 4:
                    op = bytes(v).decode()
            nodes.append(Node(node_name, op, inputs))
        elif field == 2:
            name = bytes(value).decode()
        elif field == 5:
            t_name, array = _tensor(value)
            inits[t_name] = array
    return Graph(name, nodes, inits)


def read_graph(model_bytes):
    """Graph of an ONNX ModelProto, and the `onnx` ModelProto itself (None without the package)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return _parse_graph(model_bytes), None
    proto = onnx.load_from_string(model_bytes)
    g = proto.graph
    nodes = [Node(n.name, n.op_type, list(n.input)) for n in g.node]
    inits = {t.name: numpy_helper.to_array(t).copy() for t in g.initializer}
    return Graph(g.name, nodes, inits), proto


def bn_after(modules, conv_path):
    """The BatchNorm that follows a bias-free Conv in model.py (the next entry of its Sequential)."""
    parent, _, idx = conv_path.rpartition(".")
    bn_path = f"{parent}.{int(idx) + 1}"
    bn = modules.get(bn_path)
    if not isinstance(bn, nn.BatchNorm2d):
        raise SystemExit(f"conv {conv_path}: expected a BatchNorm2d at {bn_path}, found {type(bn).__name__}")
    return bn_path, bn


def load_from_onnx(net, graphs, fold_bn):
    """Sets every parameter and buffer of `net` (a ref.SegICL) from the two ONNX graphs.
    Returns a report {"direct": n, "conv_bn": [...], "linear_t": [...]}."""
    state = net.state_dict()
    modules = dict(net.named_modules())
    want = {k for k in state if not k.endswith("num_batches_tracked")}
    assigned = {}
    report = {"direct": 0, "conv_bn_folded": [], "linear_transposed": []}
    replace = []  # (bn_path) to swap for Identity when fold_bn

    def put(key, array, source):
        if key not in state:
            raise SystemExit(f"initializer {source}: no parameter {key} in model.py")
        if key in assigned:
            raise SystemExit(f"parameter {key} set twice ({assigned[key]}, {source})")
        if tuple(state[key].shape) != tuple(array.shape):
            raise SystemExit(f"{source} -> {key}: shape {list(array.shape)} vs model.py {list(state[key].shape)}")
        state[key] = torch.from_numpy(np.ascontiguousarray(array)).to(state[key].dtype)
        assigned[key] = source

    extra = {}  # conv path -> folded bias (fold mode)
    for graph in graphs:
        inits = graph.inits
        used = set()
        for name, array in inits.items():
            if name in state:
                put(name, array, name)
                used.add(name)
                report["direct"] += 1
        for node in graph.nodes:
            params = [i for i in node.input if i in inits and i not in used]
            if not params:
                continue
            path = module_path(node.name)
            mod = modules.get(path)
            if node.op_type == "Conv" and isinstance(mod, nn.Conv2d) and mod.bias is None and len(params) == 2:
                w, b = node.input[1], node.input[2]
                put(f"{path}.weight", inits[w], w)
                bn_path, bn = bn_after(modules, path)
                eps = bn.eps
                put(f"{bn_path}.weight", np.ones_like(inits[b]), b + " (gamma 1)")
                put(f"{bn_path}.bias", inits[b], b)
                put(f"{bn_path}.running_mean", np.zeros_like(inits[b]), b + " (mean 0)")
                put(f"{bn_path}.running_var", np.full_like(inits[b], 1.0 - eps), b + " (var 1-eps)")
                if fold_bn:
                    extra[path] = inits[b]
                    replace.append(bn_path)
                used.update((w, b))
                report["conv_bn_folded"].append(f"{w},{b} -> {path} + {bn_path}")
            elif node.op_type == "MatMul" and isinstance(mod, nn.Linear) and len(params) == 1:
                w = params[0]
                put(f"{path}.weight", inits[w].T, w)
                used.add(w)
                report["linear_transposed"].append(f"{w} -> {path}.weight (transposed)")
            else:
                raise SystemExit(f"node {node.name} ({node.op_type}) consumes initializers {params} "
                                 f"that cannot be mapped to model.py (module {path!r}: {type(mod).__name__})")
        unused = set(inits) - used
        if unused:
            raise SystemExit(f"graph {graph.name}: initializers not mapped to model.py: {sorted(unused)}")
    missing = want - set(assigned)
    if missing:
        raise SystemExit(f"parameters of model.py not found in the engine: {sorted(missing)}")
    net.load_state_dict(state)
    for path, bias in extra.items():  # --bn fold: conv carries the bias, BatchNorm becomes Identity
        conv = modules[path]
        conv.bias = nn.Parameter(torch.from_numpy(bias.copy()))
    for bn_path in replace:
        parent, _, idx = bn_path.rpartition(".")
        modules[parent][int(idx)] = nn.Identity()
    return report


def build(sections, fold_bn):
    """(encoder, decoder, manifest, report) in eval mode on the CPU, f32."""
    manifest = json.loads(sections["MANIFEST"].decode("utf-8"))
    expect = {"resolution": ref.R, "max_shots": ref.S, "tokens_per_shot": ref.T, "token_width": ref.D, "channels": 1}
    for key, value in expect.items():
        if manifest.get(key) != value:
            raise SystemExit(f"manifest {key} = {manifest.get(key)}, models/ref/model.py has {value}: "
                             "this engine is not the reference architecture")
    enc_graph, enc_proto = read_graph(sections["ENCODER"])
    dec_graph, dec_proto = read_graph(sections["DECODER"])
    net = ref.SegICL()
    report = load_from_onnx(net, [enc_graph, dec_graph], fold_bn)
    net.eval()
    return net.encoder, net.decoder, manifest, report, (sections["ENCODER"], sections["DECODER"])


# ---------------------------------------------------------------- inputs


def scene(rng, cy, cx, ry, rx, r=ref.R):
    yy, xx = np.mgrid[0:r, 0:r]
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image = 70 + 90 * blob + rng.integers(0, 40, size=(r, r))
    return image.astype(np.uint8), (blob * 255).astype(np.uint8)


def minmax(image_u8):
    x = image_u8.astype(np.float32)
    return ((x - x.min()) / max(float(x.max() - x.min()), 1e-12)).reshape(1, 1, ref.R, ref.R)


def shots_and_frames(n_frames, seed=3):
    rng = np.random.default_rng(seed)
    shots = [scene(rng, *rng.uniform([40, 40, 12, 12], [88, 88, 30, 30])) for _ in range(ref.S)]
    frames = [minmax(scene(rng, *rng.uniform([40, 40, 12, 12], [88, 88, 30, 30]))[0]) for _ in range(n_frames)]
    return shots, frames


# ---------------------------------------------------------------- checks


def run_onnx(model_bytes, feeds):
    """Runs an ONNX graph: onnxruntime when installed, else onnx's reference evaluator
    (ImportError when neither is installed)."""
    try:
        import onnxruntime as ort
        sess = ort.InferenceSession(bytes(model_bytes), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, feeds))), "onnxruntime " + ort.__version__
    except ImportError:
        import onnx
        from onnx.reference import ReferenceEvaluator
        proto = onnx.load_from_string(bytes(model_bytes))
        ev = ReferenceEvaluator(proto)
        names = [o.name for o in proto.graph.output]
        return dict(zip(names, ev.run(None, feeds))), "onnx.reference.ReferenceEvaluator " + onnx.__version__


def check_against_onnx(enc, dec, protos):
    """Max |torch - ONNX| of ctx, feat_0..3 and logits on one shot + one query, 3 shots valid."""
    rng = np.random.default_rng(11)
    shot, mask = scene(rng, 60, 70, 22, 30)
    query, _ = scene(rng, 70, 55, 26, 24)
    shot_x, mask_x = minmax(shot), (mask >= 128).astype(np.float32).reshape(1, 1, ref.R, ref.R)
    query_x, zero = minmax(query), np.zeros((1, 1, ref.R, ref.R), np.float32)
    t0 = time.perf_counter()
    out_s, engine_name = run_onnx(protos[0], {"image": shot_x, "mask": mask_x})
    out_q, _ = run_onnx(protos[0], {"image": query_x, "mask": zero})
    # three shots: the real one, and two more (shifted copies) so every slot is exercised
    ctx_all = np.concatenate([out_s["ctx"], np.roll(out_s["ctx"], 1, axis=1), out_s["ctx"] * 0.5], axis=1)
    valid = np.ones((1, ref.S * ref.T), np.float32)
    feeds = {f"feat_{i}": out_q[f"feat_{i}"] for i in range(4)}
    feeds.update({"ctx": ctx_all.astype(np.float32), "ctx_valid": valid})
    out_d, _ = run_onnx(protos[1], feeds)
    onnx_s = time.perf_counter() - t0
    with torch.no_grad():
        ctx_t, *_ = enc(torch.from_numpy(shot_x), torch.from_numpy(mask_x))
        _, *feats_t = enc(torch.from_numpy(query_x), torch.from_numpy(zero))
        # the decoder gets the same inputs as the ONNX decoder did, so the difference is its own
        logits_t = dec(*(torch.from_numpy(feeds[f"feat_{i}"]) for i in range(4)),
                       torch.from_numpy(feeds["ctx"]), torch.from_numpy(valid))
    diffs = {"ctx": float(np.abs(ctx_t.numpy() - out_s["ctx"]).max())}
    for i in range(4):
        diffs[f"feat_{i}"] = float(np.abs(feats_t[i].numpy() - out_q[f"feat_{i}"]).max())
    diffs["logits"] = float(np.abs(logits_t.numpy() - out_d["logits"]).max())
    return {"against": engine_name, "max_abs_diff": diffs, "max_abs_logit": float(np.abs(out_d["logits"]).max()),
            "seconds": onnx_s}


def check_against_parity(enc, dec, path):
    """Max |rebuilt - original PyTorch| on export.py's parity fixture (1 shot, slots 1-2 empty)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"SEGPRTY1":
        raise SystemExit(f"{path}: not a parity fixture")
    r, = struct.unpack_from("<I", data, 8)
    if r != ref.R:
        raise SystemExit(f"{path}: fixture of resolution {r}, model.py has {ref.R}")
    n = r * r
    body = np.frombuffer(data, np.uint8, 3 * n, 12)
    shot, mask, query = body[:n].reshape(r, r), body[n:2 * n].reshape(r, r), body[2 * n:].reshape(r, r)
    expected = np.frombuffer(data, "<f4", n, 12 + 3 * n).reshape(1, 1, r, r)
    with torch.no_grad():
        ctx, *_ = enc(torch.from_numpy(minmax(shot)), torch.from_numpy((mask >= 128).astype(np.float32).reshape(1, 1, r, r)))
        _, *feats = enc(torch.from_numpy(minmax(query)), torch.zeros(1, 1, r, r))
        ctx_all = torch.zeros(1, ref.S * ref.T, ref.D)
        ctx_all[:, :ref.T] = ctx[0]
        valid = torch.zeros(1, ref.S * ref.T)
        valid[:, :ref.T] = 1
        logits = dec(*feats, ctx_all, valid).numpy()
    return {"fixture": os.path.relpath(path, ROOT), "max_abs_diff_logits": float(np.abs(logits - expected).max()),
            "max_abs_logit": float(np.abs(expected).max())}


# ---------------------------------------------------------------- timing


def stats(ms):
    a = np.sort(np.asarray(ms, dtype=np.float64))
    pick = lambda q: float(a[min(max(int(np.ceil(q * len(a))), 1), len(a)) - 1])  # noqa: E731 (bench.rs's rule)
    return {"p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99), "mean_ms": float(a.mean()), "n": len(a)}


class Frame:
    """Static buffers and the work of one frame (encoder on the query + decoder with cached ctx)."""

    def __init__(self, enc, dec, ctx_all, device, dtype):
        self.enc, self.dec, self.device, self.dtype = enc, dec, device, dtype
        r = ref.R
        self.image = torch.zeros(1, 1, r, r, device=device, dtype=dtype)
        self.mask = torch.zeros(1, 1, r, r, device=device, dtype=dtype)
        self.ctx = ctx_all.to(device=device, dtype=dtype)
        self.valid = torch.ones(1, ref.S * ref.T, device=device, dtype=dtype)
        pin = device.type == "cuda"
        self.host_out = torch.zeros(1, 1, r, r, dtype=dtype, pin_memory=pin)
        self.logits = None
        self.graph = None

    def forward(self):
        _, *feats = self.enc(self.image, self.mask)
        return self.dec(*feats, self.ctx, self.valid)

    def capture(self, warmup=3):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.forward()

    def run(self, host_in, mode):
        self.image.copy_(host_in, non_blocking=True)
        if mode == "graph":
            self.graph.replay()
            out = self.logits
        else:
            out = self.forward()
        self.host_out.copy_(out, non_blocking=True)


def time_mode(frame, host_frames, mode, n, warmup):
    cuda = frame.device.type == "cuda"
    wall, gpu = [], []
    with torch.no_grad():
        if mode == "graph":
            frame.capture()
        for i in range(warmup + n):
            x = host_frames[i % len(host_frames)]
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0 = time.perf_counter()
                start.record()
                frame.run(x, mode)
                end.record()
                end.synchronize()
                t1 = time.perf_counter()
                if i >= warmup:
                    wall.append((t1 - t0) * 1e3)
                    gpu.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                frame.run(x, mode)
                t1 = time.perf_counter()
                if i >= warmup:
                    wall.append((t1 - t0) * 1e3)
    out = {"wall": stats(wall)}
    if gpu:
        out["gpu_event"] = stats(gpu)
    return out


def logits_once(frame, host_in):
    with torch.no_grad():
        frame.run(host_in, "eager")
        if frame.device.type == "cuda":
            torch.cuda.synchronize()
    return frame.host_out.float().numpy().copy()


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default=os.path.join(ROOT, "models", "segicl-ref.plan"))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=500, help="timed frames per mode (default 500)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed frames first (default min(50, frames))")
    ap.add_argument("--dtype", default=None,
                    help="f16, f32 or a comma list (default f16 on cuda, f32 on cpu)")
    ap.add_argument("--bn", choices=["keep", "fold", "both"], default="keep",
                    help="keep: BatchNorm modules as model.py defines them (eval mode); fold: folded into the "
                         "convs as in the ONNX graphs; both: time the two (default keep)")
    ap.add_argument("--modes", default=None, help="comma list of eager, graph (default: both on cuda, eager on cpu)")
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX and parity checks")
    ap.add_argument("--parity", default=os.path.join(ROOT, "tests", "golden", "segicl-ref-parity.bin"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    dtypes = (args.dtype or ("f16" if device.type == "cuda" else "f32")).split(",")
    for d in dtypes:
        if d not in ("f16", "f32"):
            raise SystemExit(f"--dtype {d}: choose f16 or f32")
    modes = (args.modes or ("eager,graph" if device.type == "cuda" else "eager")).split(",")
    if "graph" in modes and device.type != "cuda":
        raise SystemExit("--modes graph needs --device cuda")
    warmup = args.warmup if args.warmup is not None else min(50, args.frames)
    bn_variants = ["keep", "fold"] if args.bn == "both" else [args.bn]

    result = {
        "engine": os.path.abspath(args.engine), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "python": platform.python_version(), "frames": args.frames, "warmup": warmup,
        "frame": "H2D query (128x128) + encoder(query, zero mask) + decoder(3 cached shots, 66 tokens valid) + D2H logits",
        "runs": [],
    }
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        result["cudnn_benchmark"] = True
        result["allow_tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32,
                                "matmul": torch.backends.cuda.matmul.allow_tf32}
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), device {result['device']}")

    sections = read_engine(args.engine)
    t0 = time.perf_counter()
    enc, dec, manifest, report, protos = build(sections, fold_bn=False)
    print(f"rebuilt {manifest.get('name')} {manifest.get('version')} from {args.engine} as models/ref/model.py "
          f"modules in {time.perf_counter() - t0:.1f} s: {report['direct']} initializers by name, "
          f"{len(report['conv_bn_folded'])} folded Conv+BatchNorm, {len(report['linear_transposed'])} Linear (transposed)")
    result["model"] = {"name": manifest.get("name"), "version": manifest.get("version"),
                       "parameters": sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in dec.parameters()),
                       "mapping": report}

    failed = False
    chk = None
    if not args.no_check:
        try:
            chk = check_against_onnx(enc, dec, protos)
        except ImportError:
            chk = None
            print("check vs ONNX graphs skipped: neither onnxruntime nor onnx is installed here")
            result["check_onnx"] = "skipped: neither onnxruntime nor onnx installed"
    if not args.no_check and chk is not None:
        d = chk["max_abs_diff"]
        print(f"check vs ONNX graphs ({chk['against']}, {chk['seconds']:.1f} s): max |diff| logits {d['logits']:.3g} "
              f"(max |logit| {chk['max_abs_logit']:.1f}), ctx {d['ctx']:.3g}, "
              + ", ".join(f"feat_{i} {d[f'feat_{i}']:.3g}" for i in range(4)))
        result["check_onnx"] = chk
        tol = 1e-3 * max(1.0, chk["max_abs_logit"])
        if max(d.values()) > tol:
            print(f"FAIL torch vs ONNX above {tol:.3g}")
            failed = True
    if not args.no_check:
        if os.path.exists(args.parity):
            par = check_against_parity(enc, dec, args.parity)
            print(f"check vs original PyTorch logits ({par['fixture']}): max |diff| {par['max_abs_diff_logits']:.3g} "
                  f"(max |logit| {par['max_abs_logit']:.1f})")
            result["check_parity"] = par
            if par["max_abs_diff_logits"] > 1e-3 * max(1.0, par["max_abs_logit"]):
                print("FAIL rebuilt model vs the original checkpoint's logits")
                failed = True

    shots, frames_u8 = shots_and_frames(8)
    rows = []
    reference_logits = None
    for bn in bn_variants:
        if bn == "keep":
            e, dmod = enc, dec
        else:
            e, dmod, *_ = build(sections, fold_bn=True)
        with torch.no_grad():
            ctx = torch.cat([e(torch.from_numpy(minmax(s)), torch.from_numpy((m >= 128).astype(np.float32)
                                                                              .reshape(1, 1, ref.R, ref.R)))[0]
                             for s, m in shots], dim=1)  # [1, 66, 64], computed once in f32 on the CPU
        for dt in dtypes:
            dtype = torch.float16 if dt == "f16" else torch.float32
            # copies: converting the f32 modules in place to f16 and back would round their weights
            e_dev = copy.deepcopy(e).to(device=device, dtype=dtype)
            d_dev = copy.deepcopy(dmod).to(device=device, dtype=dtype)
            frame = Frame(e_dev, d_dev, ctx, device, dtype)
            pin = device.type == "cuda"
            host = [torch.from_numpy(f).to(dtype).pin_memory() if pin else torch.from_numpy(f).to(dtype)
                    for f in frames_u8]
            out = logits_once(frame, host[0])
            if reference_logits is None and dt == "f32":
                reference_logits = out
            entry = {"bn": bn, "dtype": dt, "max_abs_logit": float(np.abs(out).max())}
            if not np.isfinite(out).all():
                print(f"FAIL non-finite logits ({bn}, {dt})")
                failed = True
            for mode in modes:
                try:
                    t = time_mode(frame, host, mode, args.frames, warmup)
                except RuntimeError as e:  # a failed capture must not lose the other variants
                    print(f"FAIL {mode} {dt} bn={bn}: {e}")
                    entry[mode] = {"error": str(e)}
                    failed = True
                    frame.graph = None
                    continue
                # a replay must give the eager logits (same kernels; cudnn.benchmark may pick others)
                if mode == "graph":
                    g = frame.host_out.float().numpy()
                    eager = logits_once(frame, host[(warmup + args.frames - 1) % len(host)])
                    t["graph_vs_eager_max_abs_diff"] = float(np.abs(g - eager).max())
                rows.append({"bn": bn, "dtype": dt, "mode": mode, **t})
                entry[mode] = t
            # f16 vs f32 on the same device (when both are timed)
            entry["logits_sample"] = out
            result["runs"].append(entry)
            frame.graph = None
            del frame, e_dev, d_dev
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if reference_logits is not None:
        for entry in result["runs"]:
            entry["max_abs_diff_vs_f32"] = float(np.abs(entry["logits_sample"] - reference_logits).max())
    for entry in result["runs"]:
        del entry["logits_sample"]

    print()
    print(f"one frame, 3 cached shots, {args.frames} timed frames after {warmup} warm-up, device {args.device}")
    print(f"{'variant':<22} {'wall p50':>9} {'p90':>8} {'p99':>8} {'mean':>8} {'gpu p50':>9} {'gpu p99':>8}  ms")
    for r in rows:
        w, g = r["wall"], r.get("gpu_event")
        name = f"{r['mode']} {r['dtype']} bn={r['bn']}"
        gtxt = f"{g['p50_ms']:>9.3f} {g['p99_ms']:>8.3f}" if g else f"{'-':>9} {'-':>8}"
        print(f"{name:<22} {w['p50_ms']:>9.3f} {w['p90_ms']:>8.3f} {w['p99_ms']:>8.3f} {w['mean_ms']:>8.3f} {gtxt}")
    for entry in result["runs"]:
        if "max_abs_diff_vs_f32" in entry and entry["dtype"] != "f32":
            print(f"{entry['dtype']} vs f32 logits (bn={entry['bn']}, one frame): max |diff| "
                  f"{entry['max_abs_diff_vs_f32']:.3g} (max |logit| {entry['max_abs_logit']:.1f})")
    result["table"] = rows
    result["ok"] = not failed
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
