#!/usr/bin/env python3
"""Times an engine's encoder and decoder ONNX graphs in ONNX Runtime (CPU).

Reads the graphs and manifest from an engine file (--engine, the bytes segicl-edge runs) or from
the folder written by `make-prototype --onnx-dir DIR` (encoder.onnx, decoder.onnx,
manifest.json), and runs the graphs the way segicl-edge runs a frame with a cached context:

* context: the encoder runs once per shot (max_shots of them) on a random smooth image with a
  random blob mask; the `ctx` outputs are concatenated into [1, S*T, D]; ctx_valid is all ones;
* frame: the encoder runs on a random smooth image with an all-zero mask, and the decoder gets
  the frame's feat_* outputs, the context and ctx_valid.

Inputs are made with a seeded numpy generator, so every run feeds the same tensors. Only the
graphs are timed: there is no pre- or post-processing here (segicl reports those separately).

Prints one JSON object (--json) or a small table. Times are milliseconds.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

WARMUP = 10
FRAME_VARIANTS = 8  # distinct frames, cycled, as segicl-edge bench does


def stats(samples_s):
    """p50/p90/p99 (nearest rank, as segicl-edge bench) and mean, in ms."""
    ms = sorted(s * 1e3 for s in samples_s)
    n = len(ms)

    def pick(q):
        return ms[min(max(math.ceil(q * n), 1), n) - 1]

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "mean": sum(ms) / n}


def smooth_image(rng, channels, r, grid=8):
    """A random smooth image in 0..1, shape [1, C, R, R]: bilinear upsampling of a coarse
    random grid plus a little fine noise, min-max normalised over all channels (as the
    runtime's min_max normalisation leaves a frame)."""
    coarse = rng.random((channels, grid, grid))
    at = np.linspace(0.0, grid - 1.0, r)
    lo = np.floor(at).astype(int)
    hi = np.minimum(lo + 1, grid - 1)
    w = at - lo
    rows = coarse[:, lo, :] * (1 - w)[None, :, None] + coarse[:, hi, :] * w[None, :, None]
    img = rows[:, :, lo] * (1 - w)[None, None, :] + rows[:, :, hi] * w[None, None, :]
    img = img + 0.05 * rng.standard_normal(img.shape)
    img = (img - img.min()) / (img.max() - img.min())
    return img[None].astype(np.float32)


def blob_mask(rng, r):
    """A random filled ellipse as a 0/1 mask, shape [1, 1, R, R]."""
    cy, cx = rng.uniform(0.3 * r, 0.7 * r, size=2)
    ry, rx = rng.uniform(r / 8, r / 4, size=2)
    y, x = np.mgrid[0:r, 0:r]
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    return inside[None, None].astype(np.float32)


def engine_sections(path):
    """The MANIFEST, ENCODER and DECODER payloads of a segicl engine file (format 1.x: a 64-byte
    header, then 32-byte section entries: tag, offset, length, crc32, flags)."""
    data = Path(path).read_bytes()
    if data[:8] != b"SEGICLEF":
        sys.exit(f"{path} is not a segicl engine file")
    count = int.from_bytes(data[16:20], "little")
    sections = {}
    for i in range(count):
        entry = data[64 + 32 * i : 96 + 32 * i]
        tag = entry[:8].rstrip(b"\0").decode()
        offset, length = int.from_bytes(entry[8:16], "little"), int.from_bytes(entry[16:24], "little")
        sections[tag] = data[offset : offset + length]
    missing = [t for t in ("MANIFEST", "ENCODER", "DECODER") if t not in sections]
    if missing:
        sys.exit(f"{path} has no {', '.join(missing)} section")
    return json.loads(sections["MANIFEST"]), sections["ENCODER"], sections["DECODER"]


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def tensor_specs(manifest, graph, direction):
    return {
        t["name"]: t
        for t in manifest["tensors"]
        if t["graph"] == graph and t["direction"] == direction
    }


def check_graph(sess, manifest, graph):
    """The graph's inputs and outputs are those of the manifest, with its static shapes."""
    for direction, args in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        specs = tensor_specs(manifest, graph, direction)
        names = [a.name for a in args]
        if sorted(names) != sorted(specs):
            sys.exit(f"{graph} {direction}s are {names}, the manifest lists {sorted(specs)}")
        for a in args:
            if a.type != "tensor(float)":
                sys.exit(f"{graph} {direction} `{a.name}` is {a.type}, expected tensor(float)")
            shape = [d if isinstance(d, int) else None for d in a.shape]
            if any(d is not None and d != s for d, s in zip(shape, specs[a.name]["shape"])):
                sys.exit(f"{graph} {direction} `{a.name}` has shape {a.shape}, manifest says {specs[a.name]['shape']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--engine", type=Path, help="a segicl engine file: its manifest and graphs")
    source.add_argument("--onnx-dir", type=Path, help="folder with encoder.onnx, decoder.onnx, manifest.json")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    ap.add_argument("--frames", type=int, default=200, help="timed runs per measurement (default 200)")
    ap.add_argument("--seed", type=int, default=20240601, help="seed of the synthetic inputs")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    if args.threads < 1 or args.frames < 1:
        sys.exit("--threads and --frames must be at least 1")

    if args.engine:
        manifest, encoder, decoder = engine_sections(args.engine)
    else:
        manifest = json.loads((args.onnx_dir / "manifest.json").read_text())
        encoder, decoder = args.onnx_dir / "encoder.onnx", args.onnx_dir / "decoder.onnx"
    r, c = manifest["resolution"], manifest["channels"]
    s, t, d = manifest["max_shots"], manifest["tokens_per_shot"], manifest["token_width"]

    enc = session(encoder, args.threads)
    dec = session(decoder, args.threads)
    check_graph(enc, manifest, "encoder")
    check_graph(dec, manifest, "decoder")
    enc_outputs = [o.name for o in enc.get_outputs()]
    if "ctx" not in enc_outputs or "ctx" not in [i.name for i in dec.get_inputs()]:
        sys.exit("the encoder must output `ctx` and the decoder must take it")
    dec_inputs = [i.name for i in dec.get_inputs()]
    logits_name = dec.get_outputs()[0].name
    logits_shape = tensor_specs(manifest, "decoder", "output")[logits_name]["shape"]

    rng = np.random.default_rng(args.seed)
    zero_mask = np.zeros((1, 1, r, r), dtype=np.float32)

    # Context: one encoder pass per shot, with a blob mask; ctx outputs concatenated.
    shot_ctx = []
    for _ in range(s):
        out = enc.run(None, {"image": smooth_image(rng, c, r), "mask": blob_mask(rng, r)})
        shot_ctx.append(out[enc_outputs.index("ctx")])
    ctx = np.ascontiguousarray(np.concatenate(shot_ctx, axis=1), dtype=np.float32)
    if ctx.shape != (1, s * t, d):
        sys.exit(f"context is {ctx.shape}, expected {(1, s * t, d)}")
    ctx_valid = np.ones((1, s * t), dtype=np.float32)

    frames = [smooth_image(rng, c, r) for _ in range(FRAME_VARIANTS)]

    def encode(image):
        out = enc.run(None, {"image": image, "mask": zero_mask})
        return dict(zip(enc_outputs, out))

    def decode(encoded):
        feed = {}
        for name in dec_inputs:
            if name == "ctx":
                feed[name] = ctx
            elif name == "ctx_valid":
                feed[name] = ctx_valid
            else:
                feed[name] = encoded[name]
        return dec.run([logits_name], feed)[0]

    # Correctness: every frame gives finite logits of the manifest's shape.
    fg = []
    for image in frames:
        logits = decode(encode(image))
        if list(logits.shape) != list(logits_shape):
            sys.exit(f"logits are {list(logits.shape)}, the manifest says {logits_shape}")
        if not np.isfinite(logits).all():
            sys.exit("the decoder produced non-finite logits")
        fg.append(float((logits > 0).mean()))

    encoded = [encode(image) for image in frames]
    n = args.frames

    def timed(fn, count):
        for i in range(WARMUP):
            fn(i)
        out = []
        for i in range(count):
            t0 = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t0)
        return out

    enc_t = timed(lambda i: encode(frames[i % FRAME_VARIANTS]), n)
    dec_t = timed(lambda i: decode(encoded[i % FRAME_VARIANTS]), n)
    frame_t = timed(lambda i: decode(encode(frames[i % FRAME_VARIANTS])), n)

    result = {
        "runtime": "onnxruntime",
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "providers": enc.get_providers(),
        "onnx_dir": str(args.onnx_dir) if args.onnx_dir else None,
        "engine": str(args.engine) if args.engine else None,
        "model": manifest.get("name"),
        "threads": args.threads,
        "frames": n,
        "warmup": WARMUP,
        "encoder": stats(enc_t),
        "decoder": stats(dec_t),
        "frame": stats(frame_t),
        "logits_finite": True,
        "logits_positive_fraction_mean": sum(fg) / len(fg),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s), {n} runs each ({manifest.get('name')})")
    print(f"{'stage':<18} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for key, label in (("encoder", "encoder"), ("decoder", "decoder"), ("frame", "encoder+decoder")):
        st = result[key]
        print(f"{label:<18} {st['p50']:>8.3f} {st['p90']:>8.3f} {st['p99']:>8.3f} {st['mean']:>8.3f}")


if __name__ == "__main__":
    main()
