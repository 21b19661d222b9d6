#!/usr/bin/env python3
"""Prints the native / tract / ONNX Runtime table from the JSON files in bench/out/.

Reads, for each engine NAME, thread count T and round R, NAME-cpu-tT-rR.json and
NAME-tract-tT-rR.json (`segicl-edge bench --json`, or {"skipped": why}), NAME-ort-tT-rR.json
(`ort_bench.py --json`) and peak-rR.txt (bench/fma_peak.c, GFLOP/s). Every figure is the median
(and min) over the rounds of a run's p50. Standard library only.
"""

import argparse
import json
import statistics
from pathlib import Path


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def stage(doc, name):
    return next(row["p50_ms"] for row in doc["stages"] if row["stage"] == name)


def graphs_ms(doc, contender):
    """Encoder + decoder p50 of one run."""
    if contender == "ort":
        return doc["encoder"]["p50"] + doc["decoder"]["p50"]
    return stage(doc, "encoder") + stage(doc, "decoder")


def summary(values):
    return (statistics.median(values), min(values)) if values else (None, None)


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", type=Path, default=Path("bench/out"))
    ap.add_argument("--engines", nargs="+", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--nproc", default="?")
    ap.add_argument("--segicl-version", default="")
    ap.add_argument("--load", nargs=2, metavar=("BEFORE", "AFTER"), help="load averages around the runs")
    args = ap.parse_args()
    out = args.out_dir
    rounds = range(1, args.rounds + 1)

    peaks = [float((out / f"peak-r{r}.txt").read_text()) for r in rounds]
    peak = statistics.median(peaks)
    print(f"CPU: {cpu_model()} ({args.nproc} CPUs); {args.segicl_version}")
    print(f"FMA peak of one core (bench/fma_peak.c): median {peak:.1f} GFLOP/s, min {min(peaks):.1f}")
    print(f"{args.rounds} rounds, contenders alternated in each; figures: median / min over rounds of each run's p50")
    if args.load:
        print(f"load average before {args.load[0]}, after {args.load[1]}")
    gflop = {}
    for name in args.engines:
        for r in rounds:
            doc = json.loads((out / f"{name}-cpu-t{args.threads[0]}-r{r}.json").read_text())
            if doc.get("graph_gflop_per_frame"):
                gflop[name] = doc["graph_gflop_per_frame"]
        if name not in gflop:
            # An int8 engine does not lower; its graphs do the work of its float twin.
            twin = name.removesuffix("-int8").removesuffix("-fp16")
            gflop[name] = gflop.get(twin)
    for name in args.engines:
        work = gflop[name]
        print()
        head = f"{name}" + (f" ({work * 1e3:.0f} MFLOP per frame in convolutions and matrix products)" if work else "")
        print(head)
        print(f"{'threads':>7}  {'runtime':<13} {'enc+dec ms':>10} {'min':>7} {'× ORT':>6} {'× ORT fp32':>10} {'% peak':>7}"
              f" {'pre+post ms':>11} {'frame ms':>9} {'open ms':>8} {'RSS MiB':>8}")
        for t in args.threads:
            ort = [graphs_ms(json.loads((out / f"{name}-ort-t{t}-r{r}.json").read_text()), "ort") for r in rounds]
            ort_med, _ = summary(ort)
            # The float twin's ORT time (the int8 target is set against ORT fp32).
            twin = name.removesuffix("-int8").removesuffix("-fp16")
            fp32_med = ort_med
            if twin != name and twin in args.engines:
                docs = [json.loads((out / f"{twin}-ort-t{t}-r{r}.json").read_text()) for r in rounds]
                fp32_med, _ = summary([graphs_ms(d, "ort") for d in docs])
            elif twin != name:
                fp32_med = None
            for contender, label in (("cpu", "native"), ("tract", "tract"), ("ort", "onnxruntime")):
                docs = [json.loads((out / f"{name}-{contender}-t{t}-r{r}.json").read_text()) for r in rounds]
                if any("skipped" in d for d in docs):
                    why = next(d["skipped"] for d in docs if "skipped" in d).splitlines()[-1]
                    print(f"{t:>7}  {label:<13} not run: {why[:110]}")
                    continue
                med, low = summary([graphs_ms(d, contender) for d in docs])
                ratio = f"{med / ort_med:.2f}" if ort_med else "n/a"
                ratio_fp32 = f"{med / fp32_med:.2f}" if fp32_med else "n/a"
                share = f"{100 * work / (med / 1e3) / (peak * t):.0f}%" if work else "n/a"
                if contender == "ort":
                    extra = f"{'':>11} {'':>9} {'':>8} {'':>8}"
                else:
                    prepost, _ = summary([stage(d, "preprocess") + stage(d, "postprocess") for d in docs])
                    frame, _ = summary([stage(d, "frame (cached context)") for d in docs])
                    opened, _ = summary([d["open_ms"] for d in docs])
                    rss = max(d["peak_rss_mib"] or 0 for d in docs)
                    extra = f"{fmt(prepost, 3):>11} {fmt(frame):>9} {fmt(opened, 1):>8} {rss:>8.1f}"
                print(f"{t:>7}  {label:<13} {fmt(med):>10} {fmt(low):>7} {ratio:>6} {ratio_fp32:>10} {share:>7} {extra}")
    print()
    print("enc+dec: the encoder and decoder graphs of one frame with 3 cached shots (segicl: its own stage")
    print("timings; ORT: the same graphs from the same engine file). % peak: the frame's MFLOP over that")
    print("time, against the one-core FMA peak times the threads. × ORT fp32: against ONNX Runtime on the")
    print("float twin's graphs (models/X.plan for X-int8 and X-fp16), when it is among the engines.")


if __name__ == "__main__":
    main()
