"""Train segicl-ref episodically: every step is a batch of in-context episodes (k shots + 1 query,
k drawn per batch from 1..3), mixing real tasks, self-supervised pseudo-tasks and synthetic tasks.

    python3 models/ref/prepare_data.py                      # once: ../shared/data -> target/ref-data
    python3 models/ref/train.py --out target/ref/full --steps 5000 --seed 0
    python3 models/ref/train.py --out target/ref/full2 --steps 3000 --seed 1 --lr 1e-3 --init target/ref/full/model.pt
    python3 models/ref/train.py --out target/ref/lodo --exclude busi-breast-ultrasound-subset,...

`--exclude` leaves whole datasets out (their images are not used by any episode kind), for the
leave-dataset-out evaluation. The run is reproducible from its seed on the same machine and
thread count (`--threads`, default 1). Writes OUT/model.pt and OUT/log.jsonl.

A quarter of the real and synthetic episodes are zoomed: every image is cropped around its own
mask with a shared random margin, as the runtime's ROI pass sees shots and frames.

Task augmentation (one random transform for the whole episode, UniverSeg-style): flips, 90-degree
rotations, an affine warp, intensity inversion and gamma; then a smaller per-image jitter so the
shots and the query never line up exactly.

`--distill DIR` adds a distillation loss (issue 14's lever): the encoder's 1/8 features of each
real or pseudo-task query, through a small head that is never exported, are pulled towards a
pretrained medical encoder's features of the same image (LiteMedSAM's, made once by teacher.py),
warped with the query. The exported model and the engine contract do not change.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import load_tasks, pick_episode, real_episode, ssl_episode, synthetic_episode  # noqa: E402
from model import D, R, S, SegICL, parameter_count  # noqa: E402

KINDS = ("real", "ssl", "synthetic")
ZOOM_SHARE = 0.25  # episodes cropped around their masks (the ROI pass's view)


def affine(rng, rot, scale, shift):
    a = math.radians(rng.uniform(-rot, rot))
    s = math.exp(rng.uniform(-math.log(scale), math.log(scale)))
    tx, ty = rng.uniform(-shift, shift, 2)
    return np.array([[s * math.cos(a), -s * math.sin(a), tx], [s * math.sin(a), s * math.cos(a), ty], [0, 0, 1]])


def roi_crop(rng, mask, margin):
    """The affine (normalised coordinates) of a square crop around the mask's bounding box with a
    relative margin, as the runtime's ROI pass crops shots and frames; the box is jittered."""
    ys, xs = np.nonzero(mask)
    lo, hi = np.array([xs.min(), ys.min()]), np.array([xs.max() + 1, ys.max() + 1])
    centre = (lo + hi) / 2 / R * 2 - 1
    half = max((hi - lo).max() / R * (1 + 2 * margin), 0.25)
    centre = centre + rng.uniform(-0.1, 0.1, 2) * half
    return np.array([[half, 0, centre[0]], [0, half, centre[1]], [0, 0, 1]])


def augment_episode(rng, images, masks, kind, feats=None):
    """Same transform for the episode's images (task augmentation), then per-image jitter.
    images, masks: [k+1, R, R] float32 -> tensors [k+1, 1, R, R]. Teacher features `feats`
    [k+1, C, h, w] (or None) get the same spatial transforms; returns (images, masks, feats)."""
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    m = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
    f = None if feats is None else torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    spatial = [x, m, f]

    def each(op):
        spatial[:] = [None if t is None else op(t) for t in spatial]

    if rng.random() < 0.5:
        each(lambda t: t.flip(-1))
    if rng.random() < 0.3:
        each(lambda t: t.flip(-2))
    quarter = int(rng.integers(4)) if rng.random() < 0.3 else 0
    each(lambda t: torch.rot90(t, quarter, (-2, -1)))
    x, m, f = spatial
    episode = affine(rng, 15, 1.2, 0.1) if rng.random() < 0.5 else np.eye(3)
    strength = 2.0 if kind == "ssl" else 1.0
    jitter = [affine(rng, 8 * strength, 1 + 0.08 * strength, 0.06 * strength) for _ in range(len(x))]
    if kind != "ssl" and rng.random() < ZOOM_SHARE:
        margin = rng.uniform(0.15, 0.5)
        jitter = [roi_crop(rng, mask[0].numpy(), margin) @ affine(rng, 5, 1.05, 0.03) for mask in m]
    thetas = [(episode @ j)[:2] for j in jitter]
    theta = torch.tensor(np.stack(thetas), dtype=torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if f is not None:
        small = F.affine_grid(theta, list(f.shape), align_corners=False)
        f = F.grid_sample(f, small, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    m = (F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    if rng.random() < 0.15:
        x = 1 - x
    x = x.clamp(0, 1) ** float(math.exp(rng.uniform(-0.5, 0.5)))
    x = x + torch.randn_like(x) * float(rng.uniform(0, 0.04))
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-6), m, f  # the runtime's per-image min-max


def make_batch(rng, tasks, batch, k, mix, teacher=None):
    """A batch of episodes. With `teacher` (task name -> [N, C, h, w] features of its images), also
    the queries' teacher features (zeros for synthetic episodes) and which queries have them."""
    shots = torch.zeros(batch, S, 1, R, R)
    shot_masks = torch.zeros(batch, S, 1, R, R)
    queries, targets, taught, has = [], [], [], []
    for b in range(batch):
        kind = KINDS[rng.choice(3, p=mix)]
        for _ in range(20):
            feats = None
            if kind == "real":
                episode = real_episode(rng, tasks[rng.integers(len(tasks))], k, with_source=teacher is not None)
            elif kind == "ssl":
                episode = ssl_episode(rng, tasks, k, with_source=teacher is not None)
            else:
                episode = synthetic_episode(rng, k)
            images, masks = episode[:2]
            if teacher is not None and kind != "synthetic":
                task, idx = episode[2]
                feats = teacher[task.name][idx]
            x, m, f = augment_episode(rng, images, masks, kind, feats)
            if m[-1].sum() > 0 and (m[:-1].flatten(1).sum(1) > 0).all():
                break
        shots[b, :k], shot_masks[b, :k] = x[:k], m[:k]
        queries.append(x[k])
        targets.append(m[k])
        if teacher is not None:
            c, h, w = next(iter(teacher.values())).shape[1:]
            taught.append(torch.zeros(c, h, w) if f is None else f[k])
            has.append(float(f is not None))
    valid = torch.zeros(batch, S)
    valid[:, :k] = 1
    batch = (shots, shot_masks, valid, torch.stack(queries), torch.stack(targets))
    return batch + ((torch.stack(taught), torch.tensor(has)) if teacher is not None else ())


class DistillHead(torch.nn.Module):
    """Maps the student's 1/8 features (the encoder's second projection, D channels) to the
    teacher's channels; trained with the model, never exported."""

    def __init__(self, channels):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(D, 128, 1), torch.nn.ReLU(), torch.nn.Conv2d(128, channels, 1))

    def forward(self, x):
        return self.net(x)


def distill_loss(student, teacher, has):
    """1 - cosine similarity per pixel, averaged over the pixels of the queries that have teacher
    features."""
    cos = F.cosine_similarity(student, teacher, dim=1, eps=1e-6).mean(dim=(1, 2))
    return ((1 - cos) * has).sum() / has.sum().clamp(min=1)


def load_teacher(folder, tasks):
    """Teacher features of every task (teacher.py's OUT/<task>.npy), checked against the task."""
    teacher = {}
    for task in tasks:
        path = os.path.join(folder, f"{task.name}.npy")
        if not os.path.exists(path):
            sys.exit(f"--distill: {path} is missing (models/ref/teacher.py makes it)")
        teacher[task.name] = np.load(path, mmap_mode="r")
        if len(teacher[task.name]) != len(task.images):
            sys.exit(f"--distill: {path} has {len(teacher[task.name])} rows, the task {len(task.images)} images")
    return teacher


def loss_fn(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


def dice(logits, target):
    p = (logits > 0).float()
    inter = (p * target).sum(dim=(1, 2, 3))
    return (2 * inter / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))).clamp(min=1)).mean().item()


@torch.no_grad()
def validate(model, tasks, episodes=6, k=3, seed=99, device="cpu"):
    """Mean 3-shot Dice over fixed validation episodes of every task that has a validation split."""
    model.eval()
    rng = np.random.default_rng(seed)
    scores = {}
    for task in tasks:
        if len(task.val) < k + 1:
            continue
        batch = []
        for _ in range(episodes):
            shots, query = pick_episode(rng, task, k, split="val")
            batch.append(shots + [query])
        idx = np.array(batch)
        x = torch.from_numpy(task.images[idx].astype(np.float32) / 255.0)[:, :, None].to(device)
        lo = x.amin(dim=(2, 3, 4), keepdim=True)
        x = (x - lo) / (x.amax(dim=(2, 3, 4), keepdim=True) - lo).clamp(min=1e-6)
        m = torch.from_numpy(task.masks[idx].astype(np.float32))[:, :, None].to(device)
        valid = torch.ones(len(idx), S, device=device)
        scores[task.name] = dice(model(x[:, :k], m[:, :k], valid, x[:, k]), m[:, k])
    model.train()
    return scores


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="target/ref-data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--exclude", default="", help="comma-separated dataset (set) names to leave out")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--mix", default="0.6,0.25,0.15", help="real,ssl,synthetic episode shares")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device to train on (`cuda` where a GPU is at hand; "
                    "episodes are still made on the CPU, and results differ from a CPU run in the last bits)")
    ap.add_argument("--validate-every", type=int, default=500)
    ap.add_argument("--init", help="start from this checkpoint's weights (a warm restart: new optimiser "
                    "and schedule); the shipped recipe is 5000 steps, then 3000 more from them")
    ap.add_argument("--distill", metavar="DIR", help="teacher features (models/ref/teacher.py) to distil into "
                    "the encoder's 1/8 features of every real and pseudo-task query")
    ap.add_argument("--distill-weight", type=float, default=0.5, help="weight of the distillation loss")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/model.pt "
                    "(weights, optimiser, schedule and random states of its last save): the same result as "
                    "an uninterrupted run")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    exclude = {s for s in args.exclude.split(",") if s}
    tasks = load_tasks(args.data, exclude)
    missing = exclude - {t.set for t in load_tasks(args.data)}
    if missing:
        sys.exit(f"--exclude names unknown sets: {', '.join(sorted(missing))}")
    mix = np.array([float(v) for v in args.mix.split(",")])
    mix /= mix.sum()
    os.makedirs(args.out, exist_ok=True)
    model = SegICL()
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True)["model"])
    model.to(args.device)
    teacher = load_teacher(args.distill, tasks) if args.distill else None
    head, taught = None, {}
    if teacher is not None:
        head = DistillHead(next(iter(teacher.values())).shape[1]).to(args.device)
        # The encoder runs on the shots, then on the query: the hook keeps the query's features.
        model.encoder.proj[1].register_forward_hook(lambda _m, _i, out: taught.update(student=out))
    print(f"{len(tasks)} tasks, {parameter_count(model)} parameters, excluding {sorted(exclude) or 'nothing'}")
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    warmup = min(200, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    checkpoint = os.path.join(args.out, "model.pt")
    first, spent = 1, 0.0
    if args.resume:
        saved = torch.load(checkpoint, map_location=args.device, weights_only=False)
        if "optimiser" not in saved or saved["args"]["steps"] != args.steps:
            sys.exit(f"{checkpoint} is not a resumable save of a {args.steps}-step run")
        model.load_state_dict(saved["model"])
        if head is not None:
            head.load_state_dict(saved["distill_head"])
        opt.load_state_dict(saved["optimiser"])
        sched.load_state_dict(saved["schedule"])
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"].cpu())
        if "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"].cpu())
        first, spent = saved["step"] + 1, saved["seconds"]
        print(f"resuming at step {first} of {args.steps}")
    log = open(os.path.join(args.out, "log.jsonl"), "a" if args.resume else "w")
    started = time.time() - spent
    running = []
    for step in range(first, args.steps + 1):
        k = int(rng.integers(1, S + 1))
        batch = [t.to(args.device) for t in make_batch(rng, tasks, args.batch, k, mix, teacher)]
        shots, shot_masks, valid, query, target = batch[:5]
        logits = model(shots, shot_masks, valid, query)
        loss = loss_fn(logits, target)
        distilled = distill_loss(head(taught["student"]), *batch[5:]) if head is not None else torch.zeros(())
        loss = loss + args.distill_weight * distilled
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append((loss.item(), dice(logits.detach(), target), distilled.item()))
        if step % 50 == 0:
            l, d, t = np.mean(running, axis=0)
            running = []
            extra = f" distill {t:.3f}" if head is not None else ""
            print(f"step {step}/{args.steps} loss {l:.3f} dice {d:.3f}{extra} {time.time() - started:.0f}s", flush=True)
            log.write(json.dumps({"step": step, "loss": l, "dice": d, "seconds": time.time() - started,
                                  **({"distill": t} if head is not None else {})}) + "\n")
        if step % args.validate_every == 0 or step == args.steps:
            scores = validate(model, tasks, device=args.device)
            mean = float(np.mean(list(scores.values()))) if scores else float("nan")
            print(f"validation 3-shot dice {mean:.3f}", flush=True)
            log.write(json.dumps({"step": step, "val_dice": mean, "val": scores}) + "\n")
            log.flush()
            # Everything --resume needs; export.py and --init read only "model".
            torch.save({"model": model.state_dict(), "step": step, "args": vars(args),
                        "seconds": time.time() - started, "optimiser": opt.state_dict(),
                        "schedule": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                        **({"distill_head": head.state_dict()} if head is not None else {}),
                        **({"cuda_rng": torch.cuda.get_rng_state()} if args.device.startswith("cuda") else {})},
                       checkpoint)


if __name__ == "__main__":
    main()
