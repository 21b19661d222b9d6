#!/usr/bin/env python3
"""Helpers of device-check.sh (numpy and Pillow only; no torch, no onnx).

    devcheck.py extract-shots ENGINE DIR           the engine's default shots as DIR/images/TASK-i.png + DIR/masks/TASK-i.png
    devcheck.py dice --a DIR --b DIR [--gt DIR] [--label L] [--json PATH]
                                                   Dice agreement of the *.mask.png in two folders (cpu vs cuda)
    devcheck.py print-bench BENCH.json             a segicl-edge bench --json result as a table
    devcheck.py summary --out DIR                  the final table from the JSON files device-check.sh wrote

`dice` exits 1 when a mask is missing, differs in size, or the mean agreement is below --min
(default 0.99). `summary` exits 1 when a stage failed, 2 when every stage ran but a target was
missed, 0 when every target is met.
"""

import argparse
import glob
import json
import os
import struct
import sys

import numpy as np
from PIL import Image

FRAME_ROW = "frame (cached context)"
TARGET_P50_MS = 1.0
TARGET_SPEEDUP = 3.0
TARGET_DICE = 0.99


# ---------------------------------------------------------------- extract-shots


def engine_sections(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"SEGICLEF":
        raise SystemExit(f"{path}: not a segicl engine")
    count, = struct.unpack_from("<I", data, 16)
    out = {}
    for i in range(count):
        tag, offset, size, _crc, _flags = struct.unpack_from("<8sQQII", data, 64 + 32 * i)
        out[tag.rstrip(b"\0").decode("ascii", "replace")] = data[offset:offset + size]
    return out


def default_shots(payload):
    """SHOTS section (docs/engine-format.md §6) -> [(task, i, image array, mask array)]."""
    pos = 0

    def u32():
        nonlocal pos
        v, = struct.unpack_from("<I", payload, pos)
        pos += 4
        return v

    shots = []
    for _ in range(u32()):
        n = u32()
        task = payload[pos:pos + n].decode("utf-8")
        pos += n
        for i in range(u32()):
            fmt, w, h = u32(), u32(), u32()
            bpp = {0: 1, 2: 3}[fmt]
            img = np.frombuffer(payload, np.uint8, w * h * bpp, pos).reshape((h, w, bpp) if bpp == 3 else (h, w))
            pos += w * h * bpp
            mask = np.frombuffer(payload, np.uint8, w * h, pos).reshape(h, w)
            pos += w * h
            shots.append((task, i, img, mask))
    return shots


def cmd_extract(args):
    sections = engine_sections(args.engine)
    if "SHOTS" not in sections:
        print(f"{args.engine}: no SHOTS section, no real frames")
        return 0
    os.makedirs(os.path.join(args.dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(args.dir, "masks"), exist_ok=True)
    shots = default_shots(sections["SHOTS"])
    for task, i, img, mask in shots:
        name = f"{task}-{i}.png"
        Image.fromarray(img).save(os.path.join(args.dir, "images", name))
        Image.fromarray(np.where(mask >= 128, 255, 0).astype(np.uint8)).save(os.path.join(args.dir, "masks", name))
    tasks = sorted({t for t, *_ in shots})
    print(f"wrote {len(shots)} real image/mask pairs of {len(tasks)} tasks ({', '.join(tasks)}) to {args.dir}")
    return 0


# ---------------------------------------------------------------- dice


def load_mask(path):
    return np.asarray(Image.open(path).convert("L")) >= 128


def dice(a, b):
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def cmd_dice(args):
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(args.a, "*.mask.png")))
    rows, problems = [], []
    if not names:
        problems.append(f"no *.mask.png in {args.a}")
    if not os.path.isdir(args.b):
        problems.append(f"{args.b} missing (no masks from that run)")
        names = []
    for name in names:
        pa, pb = os.path.join(args.a, name), os.path.join(args.b, name)
        if not os.path.exists(pb):
            problems.append(f"{name}: missing in {args.b}")
            continue
        try:
            a, b = load_mask(pa), load_mask(pb)
        except (OSError, ValueError) as e:
            problems.append(f"{name}: unreadable ({e})")
            continue
        if a.shape != b.shape:
            problems.append(f"{name}: size {a.shape} vs {b.shape}")
            continue
        row = {"mask": name, "dice": dice(a, b), "pixels_differing": int((a != b).sum()), "pixels": int(a.size),
               "fg_a": int(a.sum()), "fg_b": int(b.sum())}
        if args.gt:
            gt_path = os.path.join(args.gt, name[:-len(".mask.png")] + ".png")
            if os.path.exists(gt_path):
                g = load_mask(gt_path)
                if g.shape == a.shape:
                    row["dice_gt_a"], row["dice_gt_b"] = dice(a, g), dice(b, g)
        rows.append(row)
    d = np.array([r["dice"] for r in rows]) if rows else np.array([0.0])
    out = {"label": args.label, "a": args.a, "b": args.b, "frames": len(rows), "mean_dice": float(d.mean()),
           "min_dice": float(d.min()), "below_min": int((d < args.min).sum()),
           "pixels_differing": int(sum(r["pixels_differing"] for r in rows)),
           "pixels": int(sum(r["pixels"] for r in rows)), "problems": problems,
           "rows": rows}
    gt = [r for r in rows if "dice_gt_a" in r]
    if gt:
        out["mean_dice_gt_a"] = float(np.mean([r["dice_gt_a"] for r in gt]))
        out["mean_dice_gt_b"] = float(np.mean([r["dice_gt_b"] for r in gt]))
    worst = sorted(rows, key=lambda r: r["dice"])[:3]
    gt_txt = (f"; vs ground truth a {out['mean_dice_gt_a']:.3f}, b {out['mean_dice_gt_b']:.3f}" if gt else "")
    print(f"{args.label:<28} {len(rows):>4} frames  agreement Dice mean {out['mean_dice']:.4f} min {out['min_dice']:.4f}"
          f"  ({out['pixels_differing']} of {out['pixels']} pixels differ){gt_txt}")
    if rows and out["min_dice"] < 1.0:
        print("    worst: " + ", ".join(f"{r['mask']} {r['dice']:.4f} ({r['pixels_differing']} px)" for r in worst))
    for p in problems[:3]:
        print(f"    FAIL {p}")
    if len(problems) > 3:
        print(f"    ... and {len(problems) - 3} more")
    ok = not problems and out["mean_dice"] >= args.min
    out["ok"] = ok
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if not ok and not problems:
        print(f"    FAIL mean agreement {out['mean_dice']:.4f} < {args.min}")
    return 0 if ok else 1


# ---------------------------------------------------------------- summary


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def bench_frame(bench, row=FRAME_ROW):
    if not bench:
        return None
    for s in bench.get("stages", []):
        if s.get("stage") == row:
            return s
    return None


def torch_row(torch_json, mode, dtype, bn="keep"):
    if not torch_json:
        return None
    for r in torch_json.get("table", []):
        if r["mode"] == mode and r["dtype"] == dtype and r["bn"] == bn:
            return r["wall"]
    return None


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def cmd_print_bench(args):
    b = load_json(args.json)
    if not b:
        print(f"{args.json}: no bench JSON")
        return 1
    size = "×".join(map(str, b.get("frame_size", [])))
    print(f"segicl-edge bench: backend {b.get('backend')}, {b.get('shots')} shots, {b.get('frames')} frames of {size}, "
          f"{b.get('frames_per_s', 0):.1f} frames/s cached, peak RSS {fmt(b.get('peak_rss_mib'), '.1f')} MiB")
    print(f"  {'stage':<36} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for s in b.get("stages", []):
        print(f"  {s['stage']:<36} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['mean_ms']:>8.3f}")
    return 0


def cmd_summary(args):
    out = args.out
    stages = []
    path = os.path.join(out, "stages.tsv")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    stages.append({"stage": parts[0], "status": parts[1], "seconds": float(parts[2])})
    bench_cuda = load_json(os.path.join(out, "bench-cuda.json"))
    cuda = bench_frame(bench_cuda)
    cuda_dev = bench_frame(bench_cuda, "device: frame")
    bench_cuda32 = load_json(os.path.join(out, "bench-cuda-f32.json"))
    cuda32, cuda32_dev = bench_frame(bench_cuda32), bench_frame(bench_cuda32, "device: frame")
    cuda_nog = bench_frame(load_json(os.path.join(out, "bench-cuda-nographs.json")))
    cpu = bench_frame(load_json(os.path.join(out, "bench-cpu.json")))
    tj = load_json(os.path.join(out, "torch.json"))
    eager16, graph16 = torch_row(tj, "eager", "f16"), torch_row(tj, "graph", "f16")
    eager32, graph32 = torch_row(tj, "eager", "f32"), torch_row(tj, "graph", "f32")
    eager16f, graph16f = torch_row(tj, "eager", "f16", "fold"), torch_row(tj, "graph", "f16", "fold")
    agreements = [a for a in (load_json(p) for p in sorted(glob.glob(os.path.join(out, "agreement-*.json")))) if a]

    print(f"{'one frame, 3 cached shots (wall time unless noted)':<50} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'torch eager f16 / this':>23}")
    gev = {}
    for r in (tj or {}).get("table", []):
        if "gpu_event" in r:
            gev[(r["mode"], r["dtype"], r["bn"])] = r["gpu_event"]
    lines = [("segicl-edge cuda (default precision)", cuda), ("  device time only (events)", cuda_dev),
             ("segicl-edge cuda, SEGICL_CUDA_GRAPHS=0", cuda_nog),
             ("segicl-edge cuda f32", cuda32), ("  device time only (events)", cuda32_dev),
             ("segicl-edge cpu (1 thread)", cpu), ("torch eager f16 (model.py, BatchNorm)", eager16),
             ("torch CUDA graph f16 (model.py, BatchNorm)", graph16), ("torch eager f16 (BatchNorm folded)", eager16f),
             ("torch CUDA graph f16 (BatchNorm folded)", graph16f), ("torch eager f32", eager32),
             ("torch CUDA graph f32", graph32),
             ("torch eager f16, GPU events (copy-in..copy-out)", gev.get(("eager", "f16", "keep"))),
             ("torch CUDA graph f16, GPU events", gev.get(("graph", "f16", "keep")))]
    table = []
    for name, r in lines:
        if r is None:
            continue
        ratio = eager16["p50_ms"] / r["p50_ms"] if eager16 and r["p50_ms"] > 0 else None
        print(f"{name:<50} {fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8} {fmt(ratio, '.2f') + '×' if ratio else '-':>23}")
        table.append({"row": name, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "torch_eager_f16_over_this": ratio})
    size = "×".join(map(str, (bench_cuda or {}).get("frame_size", []))) or "synthetic"
    print(f"(segicl-edge's frame: a {size} gray8 frame in, resized to 128², mask out at the frame's size; "
          "torch's: a 128² float frame in, logits out, H2D/D2H included)")

    targets = []
    if cuda:
        targets.append(("cuda frame p50 ≤ 1 ms", f"{cuda['p50_ms']:.3f} ms", cuda["p50_ms"] <= TARGET_P50_MS))
    else:
        targets.append(("cuda frame p50 ≤ 1 ms", "not measured", None))
    if cuda and eager16:
        sp = eager16["p50_ms"] / cuda["p50_ms"]
        targets.append(("≥ 3× faster than torch eager f16 (p50)", f"{sp:.2f}×", sp >= TARGET_SPEEDUP))
        if graph16:
            targets.append(("(info) vs torch CUDA graph f16 (p50)", f"{graph16['p50_ms'] / cuda['p50_ms']:.2f}×", None))
    else:
        targets.append(("≥ 3× faster than torch eager f16 (p50)", "not measured", None))
    if agreements:
        main = [a for a in agreements if not a.get("label", "").startswith("f32")] or agreements
        worst_mean = min(a["mean_dice"] for a in main)
        frames = sum(a["frames"] for a in main)
        stage_ok = all(st["status"] == "ok" for st in stages if st["stage"] == "stage_agreement")
        targets.append((f"cpu/cuda Dice agreement ≥ 0.99 (worst of {len(main)} sets, {frames} frames)",
                        f"{worst_mean:.4f}", worst_mean >= TARGET_DICE and all(a.get("ok") for a in main) and stage_ok))
        f32 = [a for a in agreements if a.get("label", "").startswith("f32")]
        if f32:
            targets.append((f"(info) same with the cuda backend in f32 ({sum(a['frames'] for a in f32)} frames)",
                            f"{min(a['mean_dice'] for a in f32):.4f}", None))
    else:
        targets.append(("cpu/cuda Dice agreement ≥ 0.99", "not measured", None))
    if tj and isinstance(tj.get("check_onnx"), dict):
        targets.append(("(info) torch rebuild vs ONNX, max |logit diff|",
                        f"{tj['check_onnx']['max_abs_diff']['logits']:.2e}", None))
    if tj and tj.get("check_parity"):
        targets.append(("(info) torch rebuild vs original checkpoint", f"{tj['check_parity']['max_abs_diff_logits']:.2e}",
                        None))
    print()
    print(f"{'target':<62} {'measured':>12}  result")
    for name, value, ok in targets:
        print(f"{name:<62} {value:>12}  {'-' if ok is None else ('met' if ok else 'NOT MET')}")
    print()
    failed = [s for s in stages if s["status"].startswith("FAILED")]
    print("stages: " + ", ".join(f"{s['stage']} {s['status']} ({s['seconds']:.0f} s)" for s in stages))
    missed = [t for t in targets if t[2] is False or (t[2] is None and t[1] == "not measured")]
    code = 1 if failed else (2 if missed else 0)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"table": table, "targets": [{"target": n, "measured": v, "met": ok} for n, v, ok in targets],
                   "stages": stages, "exit": code}, f, indent=2)
    return code


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract-shots")
    e.add_argument("engine")
    e.add_argument("dir")
    d = sub.add_parser("dice")
    d.add_argument("--a", required=True)
    d.add_argument("--b", required=True)
    d.add_argument("--gt")
    d.add_argument("--label", default="")
    d.add_argument("--min", type=float, default=TARGET_DICE)
    d.add_argument("--json")
    pb = sub.add_parser("print-bench")
    pb.add_argument("json")
    s = sub.add_parser("summary")
    s.add_argument("--out", required=True)
    args = ap.parse_args()
    return {"extract-shots": cmd_extract, "dice": cmd_dice, "print-bench": cmd_print_bench,
            "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
