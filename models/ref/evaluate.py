"""Evaluate an engine in context on task folders with `segicl-edge eval` and print Markdown tables.

    python3 models/ref/evaluate.py --engine target/ref/lodo.plan --sets busi-breast-ultrasound-subset,... \
        [--split all|val] [--roi] [--limit 40] [--draws 3] [--json-out FILE]
    python3 models/ref/evaluate.py --engine models/segicl-ref.plan --split val --sets all \
        --compare models/segicl-ref-int8.plan,models/segicl-ref-fp16.plan --no-baselines
    python3 models/ref/evaluate.py --engine models/segicl-ref.plan --split val --sets all --refine \
        [--refiner models/litemedsam-int8.refiner] --limit 30

Every task of each named set in target/ref-data is evaluated with 1, 2 and 3 shots on the same
draws as the baselines `eval` prints (copy the shots' masks; the prototype engine). `--split val`
restricts a task to its validation groups (for a model that trained on the set); a left-out set
is evaluated whole. `--compare` scores other engines (quantised versions) on the same draws and
prints their 3-shot Dice next to the engine's. `--refine` also scores the engine with the
refinement pass on the same draws (the gate decides per draw) and prints refined Dice at 1/2/3
shots with the difference to pass 1. The numbers come from the Rust runtime (tract), not from
PyTorch.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from split_folder import link, split_stems  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def val_folder(taskdir, work):
    """A folder of symlinks to the task's validation pairs."""
    out = os.path.join(work, os.path.basename(taskdir))
    link(taskdir, split_stems(taskdir, "val"), out)
    return out


def run_eval(binary, engine, folder, args, baselines=True):
    cmd = [binary, "--engine", engine, "eval", "--data", folder, "--limit", str(args.limit), "--draws",
           str(args.draws), "--seed", str(args.seed), "--json"]
    if args.no_baselines or not baselines:
        cmd.append("--no-baselines")
    if args.threshold is not None:
        cmd += ["--threshold", str(args.threshold)]
    if args.roi:
        cmd += ["--roi", "--roi-margin", str(args.roi_margin)]
    if args.refine:
        cmd.append("--refine")
        if args.refiner:
            cmd += ["--refiner", args.refiner]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--sets", required=True, help="comma-separated set names (or task names)")
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "ref-data"))
    ap.add_argument("--split", choices=("all", "val"), default="all")
    ap.add_argument("--roi", action="store_true")
    ap.add_argument("--roi-margin", type=float, default=0.5)
    ap.add_argument("--refine", action="store_true", help="also score the refinement pass on the same draws")
    ap.add_argument("--refiner", help="refiner file (default: the bundled one)")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    ap.add_argument("--compare", default="", help="comma-separated engines scored on the same draws")
    ap.add_argument("--no-baselines", action="store_true", help="skip copy-shots and prototype")
    ap.add_argument("--threshold", type=float, help="probability threshold (default: the engine's)")
    ap.add_argument("--segicl-edge", default=os.path.join(ROOT, "target", "release", "segicl-edge"))
    args = ap.parse_args()

    with open(os.path.join(args.data, "index.json")) as f:
        index = json.load(f)
    wanted = args.sets.split(",")
    tasks = [e["task"] for e in index if args.sets == "all" or e["set"] in wanted or e["task"] in wanted]
    others = [e for e in args.compare.split(",") if e]
    results = {}
    compared = {engine: {} for engine in others}
    with tempfile.TemporaryDirectory() as work:
        for task in tasks:
            folder = os.path.join(args.data, task)
            if args.split == "val":
                folder = val_folder(folder, work)
                if len(os.listdir(os.path.join(folder, "images"))) < 4:
                    print(f"skipped {task}: fewer than 4 validation pairs", file=sys.stderr)
                    continue
            results[task] = run_eval(args.segicl_edge, args.engine, folder, args)
            for engine in others:
                compared[engine][task] = run_eval(args.segicl_edge, engine, folder, args, baselines=False)
            print(f"evaluated {task}", file=sys.stderr, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"engine": results, "compare": compared} if others else results, f, indent=2)
    if others:
        print_comparison(results, compared)
    else:
        print_tables(results, args.roi)
        if args.refine:
            print_refined(results)


def pairs(result):
    """Pairs evaluated: every draw queries all pairs but its shots."""
    row = result["results"][0]
    return row["queries"] // result["draws"] + row["shots"]


def print_tables(results, roi):
    """One row per task: model Dice at 1/2/3 shots, baselines at 3 shots (when scored), margin over
    the better; then the means at 1/2/3 shots."""
    baselines = all("baselines" in {row["shots"]: row for row in r["results"]}[3] for r in results.values())
    head = "| task | pairs | 1 shot | 2 shots | 3 shots |" + (" 3 shots +roi |" if roi else "")
    head += " copy-shots (3) | prototype (3) | margin |" if baselines else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    means = {k: [] for k in (1, 2, 3)}
    for task, r in results.items():
        rows = {row["shots"]: row for row in r["results"]}
        three = rows[3]
        cells = [f"{rows[k]['dice_mean']:.3f}" for k in (1, 2, 3)]
        if roi:
            cells.append(f"{three['roi']['dice_mean']:.3f}")
        if baselines:
            copy, proto = three["baselines"]["copy-shots"]["dice_mean"], three["baselines"]["prototype"]["dice_mean"]
            cells += [f"{copy:.3f}", f"{proto:.3f}", f"{three['dice_mean'] - max(copy, proto):+.3f}"]
        for k in (1, 2, 3):
            means[k].append(rows[k]["dice_mean"])
        print(f"| {task} | {pairs(r)} | " + " | ".join(cells) + " |")
    n = len(means[3])
    print(f"\nmean 3-shot Dice over {n} task(s): {sum(means[3]) / n:.3f} "
          f"(1 shot {sum(means[1]) / n:.3f}, 2 shots {sum(means[2]) / n:.3f})")


def print_refined(results):
    """One row per task: pass 1 and refined Dice at 1/2/3 shots, the 3-shot difference and how often
    the gate kept refinement on; then the means and the sets more than 0.02 below pass 1."""
    print("\n| task | 1 shot | refined | 2 shots | refined | 3 shots | refined | Δ (3) | gate on (3) |")
    print("|" + "---|" * 9)
    deltas, base, refined = [], [], []
    for task, r in results.items():
        rows = {row["shots"]: row for row in r["results"]}
        cells = []
        for k in (1, 2, 3):
            cells += [f"{rows[k]['dice_mean']:.3f}", f"{rows[k]['refine']['dice_mean']:.3f}"]
        three = rows[3]
        delta = three["refine"]["dice_mean"] - three["dice_mean"]
        deltas.append((task, delta))
        base.append(three["dice_mean"])
        refined.append(three["refine"]["dice_mean"])
        print(f"| {task} | " + " | ".join(cells) + f" | {delta:+.3f} | {three['refine']['gate_on']:.2f} |")
    n = len(base)
    print(f"\nmean 3-shot Dice over {n} task(s): pass 1 {sum(base) / n:.3f}, refined {sum(refined) / n:.3f}"
          f" ({(sum(refined) - sum(base)) / n:+.3f})")
    worse = [f"{t} ({d:+.3f})" for t, d in deltas if d < -0.02]
    print(f"tasks more than 0.02 below pass 1: {', '.join(worse) if worse else 'none'}")


def print_comparison(results, compared):
    """One row per task: the engine's 3-shot Dice and each compared engine's, with the difference."""
    names = [os.path.basename(e) for e in compared]
    head = "| task | pairs | engine (3) |" + "".join(f" {n} (3) | Δ |" for n in names)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    worst = {n: 0.0 for n in names}
    for task, r in results.items():
        base = {row["shots"]: row for row in r["results"]}[3]["dice_mean"]
        cells = []
        for n, other in zip(names, compared.values()):
            dice = {row["shots"]: row for row in other[task]["results"]}[3]["dice_mean"]
            worst[n] = max(worst[n], abs(dice - base))
            cells.append(f"{dice:.4f} | {dice - base:+.4f}")
        print(f"| {task} | {pairs(r)} | {base:.4f} | " + " | ".join(cells) + " |")
    for n in names:
        print(f"\n{n}: largest |Δ 3-shot Dice| over {len(results)} task(s): {worst[n]:.4f}")


if __name__ == "__main__":
    main()
