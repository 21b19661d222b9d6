#!/usr/bin/env python3
"""Prints the segicl-edge vs ONNX Runtime table from the JSON files in bench/out/.

Reads segicl-tT.json (`segicl-edge bench --json`) and ort-tT.json (`ort_bench.py --json`) for
each thread count T. Standard library only.
"""

import argparse
import json
import sys
from pathlib import Path


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def segicl_stage(doc, name):
    for row in doc["stages"]:
        if row["stage"] == name:
            return row["p50_ms"]
    sys.exit(f"segicl bench JSON has no stage `{name}`")


def fmt(ms):
    return "n/a" if ms is None else f"{ms:.3f}"


def ratio(segicl, ort):
    return "n/a" if segicl is None or ort is None or ort <= 0 else f"{segicl / ort:.1f}×"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", type=Path, default=Path("bench/out"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nproc", default="?")
    ap.add_argument("--segicl-edge", default="segicl-edge", help="binary that was timed")
    ap.add_argument("--segicl-version", default="")
    ap.add_argument("--segicl-built", default="", help="modification time of the binary")
    ap.add_argument("--load", nargs=2, metavar=("BEFORE", "AFTER"), help="load averages around the runs")
    args = ap.parse_args()

    segs = {t: json.loads((args.out_dir / f"segicl-t{t}.json").read_text()) for t in args.threads}
    orts = {t: json.loads((args.out_dir / f"ort-t{t}.json").read_text()) for t in args.threads}
    first_seg, first_ort = segs[args.threads[0]], orts[args.threads[0]]
    rows = []
    for t in args.threads:
        seg, ort = segs[t], orts[t]
        s_enc, s_dec = segicl_stage(seg, "encoder"), segicl_stage(seg, "decoder")
        s_frame = segicl_stage(seg, "frame (cached context)")
        o_enc, o_dec, o_frame = ort["encoder"]["p50"], ort["decoder"]["p50"], ort["frame"]["p50"]
        rows += [
            (t, "encoder", o_enc, s_enc),
            (t, "decoder", o_dec, s_dec),
            (t, "encoder+decoder ¹", o_frame, s_enc + s_dec),
            (t, "whole frame, pre+post included ²", None, s_frame),
        ]

    head = ("threads", "stage", "ONNX Runtime p50 ms", "segicl (tract) p50 ms", "segicl/ORT")
    table = [head] + [(str(t), st, fmt(o), fmt(s), ratio(s, o)) for t, st, o, s in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    right = {0, 2, 3, 4}

    def line(r):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "| " + " | ".join(cells) + " |"

    print(
        f"Same ONNX graphs ({first_seg.get('model')}), {first_seg['shots']} shots in the context, "
        f"{first_seg['frames']} timed frames per measurement, p50 in milliseconds."
    )
    print()
    print(line(head))
    print("|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|")
    for r in table[1:]:
        print(line(r))
    print()
    print("¹ ONNX Runtime: p50 of timed encoder→decoder runs. segicl: sum of its encoder and decoder p50")
    ort_sums = ", ".join(
        f"{t} thread(s) {fmt(orts[t]['encoder']['p50'] + orts[t]['decoder']['p50'])}" for t in args.threads
    )
    print(f"  (segicl-edge bench reports no combined figure). ONNX Runtime's own sum of stage p50s: {ort_sums}.")
    print("² segicl's `frame (cached context)`: pre-processing of a "
          f"{first_seg['frame_size'][0]}×{first_seg['frame_size'][1]} frame, encoder, decoder, post-processing;"
          " ORT has no pre/post here.")
    print()
    binary = args.segicl_edge
    profile = "debug profile" if "/debug/" in binary else "release profile" if "/release/" in binary else "profile unknown"
    print(f"machine: {cpu_model()}, nproc {args.nproc}")
    if args.load:
        print(f"load average (1/5/15 min) before: {args.load[0]}, after: {args.load[1]}")
    print(f"segicl: {args.segicl_version or 'segicl-edge'} ({binary}, {profile}{', built ' + args.segicl_built if args.segicl_built else ''}), backend {first_seg.get('backend')}")
    print(f"ONNX Runtime: onnxruntime {first_ort['onnxruntime_version']} {', '.join(first_ort['providers'])}, "
          f"numpy {first_ort['numpy_version']}; ORT logits finite: {all(o['logits_finite'] for o in orts.values())}")


if __name__ == "__main__":
    main()
