"""Measure inference-time levers of a segicl-ref checkpoint in PyTorch, on the same draws:

    python3 models/ref/levers.py --checkpoint target/ref/lodo2/model.pt --sets SET,SET,... \
        [--split all|val] [--limit 60] [--draws 3] [--json-out FILE]

For every task of the named sets (whole sets, or their validation groups with `--split val`), each
draw picks 3 shots (from other groups than the queries where the task has groups) and scores up to
`--limit` queries at 128x128 with:

- `plain k=1..3`: the first 1, 2 or 3 shots, as the runtime runs them without shot views;
- `gamma k=1..3`: every shot also encoded with gamma 0.7 and 1.4 (after the min-max), and the
  three copies' tokens averaged into the shot's slot;
- `mirror k=1..3`: every shot also encoded mirrored left-right, the mirror's 4x4 grid tokens put
  back in the original's order, and the two copies' tokens averaged;
- `gamma+mirror k=1..3`: both, six copies;
- `loo-threshold k=3`: the threshold chosen on the shots: each shot segmented from the other
  two, the logit threshold (from -2 to 2) with the best mean Dice on them used for the queries.

These are the candidates of issue 14's "support-side ensembling" and "per-task threshold". Dice
here is at 128x128 (not the runtime's full-size masks). On the leave-datasets-out
model of 2026-12-07 neither paid (README, "The reference model"), so the runtime has neither; commit 48430fb
has the runtime's shot views (manifest `shot_views`, format 1.3) that measured the same at full
size, for whoever tries them on another model.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import load_tasks  # noqa: E402
from model import GRID, PROTOTYPE_TOKENS, S, SegICL  # noqa: E402

THRESHOLDS = np.linspace(-2.0, 2.0, 17)
VIEWS = {"plain": (False, False), "gamma": (True, False), "mirror": (False, True), "gamma+mirror": (True, True)}
VARIANTS = tuple(f"{v} k={k}" for v in VIEWS for k in (1, 2, 3)) + ("loo-threshold k=3",)


def minmax(x):
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp(min=1e-6)


def unflip_grid(ctx):
    """Tokens of a mirrored shot with the 4x4 grid tokens put back in the unmirrored order."""
    grid = ctx[:, PROTOTYPE_TOKENS:].reshape(ctx.shape[0], GRID, GRID, -1).flip(2)
    return torch.cat([ctx[:, :PROTOTYPE_TOKENS], grid.reshape(ctx.shape[0], GRID * GRID, -1)], dim=1)


def shot_tokens(model, images, masks, gamma=False, flip=False):
    """Context tokens [k,T,D] of k shots (images [k,1,R,R] after min-max), averaged over copies."""
    copies = [model.encoder(images, masks)[0]]
    if gamma:
        copies += [model.encoder(minmax(images**g), masks)[0] for g in (0.7, 1.4)]
    if flip:
        copies.append(unflip_grid(model.encoder(images.flip(-1), masks.flip(-1))[0]))
        if gamma:
            copies += [unflip_grid(model.encoder(minmax(images.flip(-1) ** g), masks.flip(-1))[0]) for g in (0.7, 1.4)]
    return torch.stack(copies).mean(0)


def decode(model, feats, tokens, idx):
    """Logits of queries (features `feats`) with the shots `idx` of `tokens` as the context."""
    n = feats[0].shape[0]
    t, d = tokens.shape[1:]
    ctx = torch.zeros(n, S, t, d)
    valid = torch.zeros(n, S)
    ctx[:, : len(idx)] = tokens[idx][None]
    valid[:, : len(idx)] = 1
    ctx_valid = valid[:, :, None].expand(n, S, t).reshape(n, S * t)
    return model.decoder(*feats, ctx.reshape(n, S * t, d), ctx_valid)


def dice(logits, target, cut=0.0):
    p = (logits > cut).float()
    inter = (p * target).sum(dim=(1, 2, 3))
    total = p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def loo_threshold(model, x, m, tokens):
    """The logit threshold with the best mean Dice of each shot segmented from the others."""
    k = len(x)
    scores = np.zeros(len(THRESHOLDS))
    for i in range(k):
        others = [j for j in range(k) if j != i]
        _, *feats = model.encoder(x[i : i + 1], torch.zeros_like(x[i : i + 1]))
        logits = decode(model, feats, tokens, others)
        scores += [dice(logits, m[i : i + 1], c).item() for c in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(scores))])


@torch.no_grad()
def evaluate_task(model, task, split, limit, draws, seed):
    pool = task.val if split == "val" else np.arange(len(task.images))
    if len(pool) < 4:
        return None
    rng = np.random.default_rng(seed)
    x_all = minmax(torch.from_numpy(task.images[pool].astype(np.float32) / 255.0)[:, None])
    m_all = torch.from_numpy(task.masks[pool].astype(np.float32))[:, None]
    groups = task.group[pool]
    scores = {v: [] for v in VARIANTS}
    for _ in range(draws):
        first = rng.integers(len(pool))
        others = np.flatnonzero(groups != groups[first])
        candidates = others if len(others) >= 2 else np.delete(np.arange(len(pool)), first)
        shots = np.concatenate([[first], rng.choice(candidates, 2, replace=False)])
        rest = np.flatnonzero(~np.isin(groups, groups[shots]))
        if len(rest) == 0:
            rest = np.setdiff1d(np.arange(len(pool)), shots)
        queries = rng.permutation(rest)[:limit]
        xs, ms = x_all[shots], m_all[shots]
        _, *feats = model.encoder(x_all[queries], torch.zeros_like(x_all[queries]))
        target = m_all[queries]
        for name, (g, f) in VIEWS.items():
            tokens = shot_tokens(model, xs, ms, g, f)
            for k in (1, 2, 3):
                scores[f"{name} k={k}"] += dice(decode(model, feats, tokens, list(range(k))), target).tolist()
        plain = shot_tokens(model, xs, ms)
        cut = loo_threshold(model, xs, ms, plain)
        scores["loo-threshold k=3"] += dice(decode(model, feats, plain, [0, 1, 2]), target, cut).tolist()
    return {v: float(np.mean(s)) for v, s in scores.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--sets", required=True, help="comma-separated set names, or `all`")
    ap.add_argument("--data", default="target/ref-data")
    ap.add_argument("--split", choices=("all", "val"), default="all")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-out")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = SegICL()
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    wanted = set(args.sets.split(","))
    tasks = [t for t in load_tasks(args.data) if args.sets == "all" or t.set in wanted or t.name in wanted]
    results = {}
    print("| task | " + " | ".join(VARIANTS).replace("gamma+mirror", "g+m") + " |")
    print("|" + "---|" * (len(VARIANTS) + 1))
    for task in tasks:
        r = evaluate_task(model, task, args.split, args.limit, args.draws, args.seed)
        if r is None:
            continue
        results[task.name] = r
        print(f"| {task.name} | " + " | ".join(f"{r[v]:.3f}" for v in VARIANTS) + " |", flush=True)
    means = {v: float(np.mean([r[v] for r in results.values()])) for v in VARIANTS}
    print(f"| mean of {len(results)} | " + " | ".join(f"{means[v]:.3f}" for v in VARIANTS) + " |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"tasks": results, "mean": means}, f, indent=2)


if __name__ == "__main__":
    main()
