"""Export a trained checkpoint to the two ONNX graphs, write the manifest, and pack an engine.

    python3 models/ref/export.py --checkpoint target/ref/full/model.pt --out models/segicl-ref.plan \
        [--card models/ref/CARD.md] [--shots TASK=TASKDIR ...] [--parity tests/golden/segicl-ref-parity.bin]
        [--onnx-dir target/ref/onnx]

Graphs: opset 17, `torch.onnx.export(..., dynamo=False)`, static shapes, BatchNorm folded by the
exporter's constant folding. `segicl-edge pack` (built from this repository) assembles the engine
and refuses it if tract cannot load the graphs or they do not match the manifest.

Default shots (`--shots optic-disc=target/ref-data/drishti-gs1-disc-cup--disc`): three pairs of
the task folder's validation split, chosen by a fixed seed, are copied into a temporary
images/ + masks/ folder that `pack --shots` stores in the engine's SHOTS section.

`--parity FILE` writes a fixture for the runtime's parity test: a fixed input (a shot and a query
made from seeded noise and shapes) with PyTorch's context tokens and logits, so that a test can
check tract against PyTorch without Python.
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import D, R, S, T, DecoderExport, EncoderExport, SegICL  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def tensor_row(graph, direction, name, shape):
    return {"graph": graph, "direction": direction, "name": name, "shape": list(shape), "dtype": "f32"}


def export_graphs(model, workdir):
    """Writes encoder.onnx and decoder.onnx; returns the manifest's tensor table."""
    model.eval()
    enc, dec = EncoderExport(model).eval(), DecoderExport(model).eval()
    image, mask = torch.zeros(1, 1, R, R), torch.zeros(1, 1, R, R)
    with torch.no_grad():
        ctx, *feats = enc(image, mask)
    feat_names = [f"feat_{i}" for i in range(len(feats))]
    torch.onnx.export(enc, (image, mask), os.path.join(workdir, "encoder.onnx"), input_names=["image", "mask"],
                      output_names=["ctx"] + feat_names, opset_version=17, dynamo=False, do_constant_folding=True)
    ctx_all, ctx_valid = torch.zeros(1, S * T, D), torch.ones(1, S * T)
    torch.onnx.export(dec, (*feats, ctx_all, ctx_valid), os.path.join(workdir, "decoder.onnx"),
                      input_names=feat_names + ["ctx", "ctx_valid"], output_names=["logits"], opset_version=17,
                      dynamo=False, do_constant_folding=True)
    rows = [tensor_row("encoder", "input", "image", image.shape), tensor_row("encoder", "input", "mask", mask.shape),
            tensor_row("encoder", "output", "ctx", ctx.shape)]
    rows += [tensor_row("encoder", "output", n, f.shape) for n, f in zip(feat_names, feats)]
    rows += [tensor_row("decoder", "input", n, f.shape) for n, f in zip(feat_names, feats)]
    rows += [tensor_row("decoder", "input", "ctx", ctx_all.shape),
             tensor_row("decoder", "input", "ctx_valid", ctx_valid.shape),
             tensor_row("decoder", "output", "logits", (1, 1, R, R))]
    return rows


def manifest(tensors, version, tasks):
    return {
        "name": "segicl-ref", "version": version, "resolution": R, "channels": 1, "colour": "luma",
        "normalisation": {"kind": "min_max"}, "max_shots": S, "tokens_per_shot": T, "token_width": D,
        "threshold": 0.5, "precision": {"encoder": "f32", "decoder": "f32"}, "tensors": tensors,
        "default_shot_tasks": tasks,
    }


def stage_shots(spec, workdir, seed=0):
    """TASK=TASKDIR -> (task, folder with 3 validation pairs as images/ + masks/)."""
    task, taskdir = spec.split("=", 1)
    from data import validation_stems  # the split the training left out
    stems = validation_stems(taskdir)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(stems, size=min(3, len(stems)), replace=False))
    out = os.path.join(workdir, "shots", task)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out, sub))
    for i, stem in enumerate(chosen):
        for sub in ("images", "masks"):
            shutil.copy(os.path.join(taskdir, sub, stem + ".png"), os.path.join(out, sub, f"{i}-{stem}.png"))
    return task, out, chosen


def parity_fixture(model, path, seed=7):
    """A fixed gray8 shot, its mask and a gray8 query (R x R, so the runtime's resize is the
    identity), with PyTorch's logits for the query given that one shot (slots 1, 2 empty).
    Layout: b"SEGPRTY1", u32 R, then u8 shot[R*R], u8 mask[R*R], u8 query[R*R], f32 logits[R*R]
    (little-endian). The runtime's parity test feeds the same bytes through a Session."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:R, 0:R]

    def scene(cy, cx, ry, rx):
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image = 70 + 90 * blob + rng.integers(0, 40, size=(R, R))
        return image.astype(np.uint8), (blob * 255).astype(np.uint8)

    shot, mask = scene(60, 70, 22, 30)
    query, _ = scene(70, 55, 26, 24)

    def tensor(image):  # the runtime's min-max rule
        x = torch.from_numpy(image.astype(np.float32))
        return ((x - x.min()) / (x.max() - x.min())).reshape(1, 1, R, R)

    model.eval()
    with torch.no_grad():
        ctx, *_ = model.encoder(tensor(shot), torch.from_numpy(mask >= 128).float().reshape(1, 1, R, R))
        _, *feats = model.encoder(tensor(query), torch.zeros(1, 1, R, R))
        ctx_all = torch.zeros(1, S * T, D)
        ctx_all[:, :T] = ctx[0]
        valid = torch.zeros(1, S * T)
        valid[:, :T] = 1
        logits = model.decoder(*feats, ctx_all, valid)
    with open(path, "wb") as f:
        f.write(b"SEGPRTY1" + struct.pack("<I", R))
        for a in (shot, mask, query):
            f.write(a.tobytes())
        f.write(logits[0, 0].numpy().astype("<f4").tobytes())
    return float(logits.abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--card")
    ap.add_argument("--shots", action="append", default=[], metavar="TASK=TASKDIR")
    ap.add_argument("--parity")
    ap.add_argument("--onnx-dir", help="also keep encoder.onnx, decoder.onnx and manifest.json here "
                    "(bench/ort_bench.py --onnx-dir times them in ONNX Runtime)")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--segicl-edge", default=os.path.join(ROOT, "target", "release", "segicl-edge"))
    args = ap.parse_args()

    model = SegICL()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)
    with tempfile.TemporaryDirectory() as work:
        tensors = export_graphs(model, work)
        staged = [stage_shots(s, work) for s in args.shots]
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump(manifest(tensors, args.version, [t for t, _, _ in staged]), f, indent=2)
        cmd = [args.segicl_edge, "pack", "--manifest", os.path.join(work, "manifest.json"),
               "--encoder", os.path.join(work, "encoder.onnx"), "--decoder", os.path.join(work, "decoder.onnx"),
               "-o", args.out]
        if args.card:
            cmd += ["--card", args.card]
        for task, folder, chosen in staged:
            cmd += ["--shots", f"{task}={folder}"]
            print(f"default shots {task}: {', '.join(chosen)}")
        subprocess.run(cmd, check=True)
        if args.onnx_dir:
            os.makedirs(args.onnx_dir, exist_ok=True)
            for name in ("encoder.onnx", "decoder.onnx", "manifest.json"):
                shutil.copy(os.path.join(work, name), os.path.join(args.onnx_dir, name))
    if args.parity:
        print(f"parity fixture {args.parity}: max |logit| {parity_fixture(model, args.parity):.2f}")


if __name__ == "__main__":
    main()
