"""A folder of image/mask pairs (symlinks, `images/` + `masks/`) from one split of the tasks in
target/ref-data: the calibration folder of `segicl-quantize` (a few training-split pairs of every
task) or an evaluation folder (a task's validation split, never trained on).

    python3 models/ref/split_folder.py --split train --per-task 3 --out target/calib
    python3 models/ref/split_folder.py --split val --tasks ddti-thyroid-nodule-ultrasound --out target/eval/ddti
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import read_groups, validation_groups  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def split_stems(taskdir, split):
    """Sorted stems of the task's training or validation split."""
    rows = read_groups(taskdir)
    val = validation_groups([g for _, g in rows])
    return sorted(s for s, g in rows if (g in val) == (split == "val"))


def link(taskdir, stems, out, prefix=""):
    """Symlinks `out/{images,masks}/PREFIX+STEM.png` to the task's pairs."""
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for stem in stems:
        for sub in ("images", "masks"):
            target = os.path.abspath(os.path.join(taskdir, sub, stem + ".png"))
            name = os.path.join(out, sub, prefix + stem + ".png")
            if not os.path.lexists(name):
                os.symlink(target, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "ref-data"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", choices=("train", "val"), required=True)
    ap.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    ap.add_argument("--per-task", type=int, default=0, help="pairs per task, drawn at random (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with open(os.path.join(args.data, "index.json")) as f:
        tasks = [e["task"] for e in json.load(f)]
    if args.tasks != "all":
        wanted = args.tasks.split(",")
        unknown = set(wanted) - set(tasks)
        if unknown:
            sys.exit(f"unknown task(s): {', '.join(sorted(unknown))}")
        tasks = wanted
    rng = np.random.default_rng(args.seed)
    total = 0
    for task in tasks:
        taskdir = os.path.join(args.data, task)
        stems = split_stems(taskdir, args.split)
        if args.per_task:
            stems = sorted(rng.choice(stems, size=min(args.per_task, len(stems)), replace=False))
        link(taskdir, stems, args.out, prefix=f"{task}--" if len(tasks) > 1 else "")
        total += len(stems)
    print(f"{total} {args.split} pairs from {len(tasks)} task(s) in {args.out}")


if __name__ == "__main__":
    main()
