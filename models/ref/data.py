"""Training data for segicl-ref: real tasks (from prepare_data.py's tree), self-supervised
pseudo-tasks on real images, and synthetic shape/texture tasks, all as episodes of k shots and one
query at 128x128.

A task folder (`target/ref-data/<task>/`) holds `r128.npz` (images, masks, groups, stems) and
`groups.tsv`. Each task's groups (patients, cases, videos) are split once, by a fixed seed, into
training (80 %) and validation (20 %) groups, so correlated frames never cross the split.
"""

import json
import os

import numpy as np
from scipy import ndimage

R = 128
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 1234


def validation_groups(groups):
    """The validation groups of a task, from its sorted unique group ids and a fixed seed."""
    unique = sorted(set(groups))
    if len(unique) < 2:
        return set()
    n = max(1, int(round(len(unique) * VALIDATION_FRACTION)))
    rng = np.random.default_rng(SPLIT_SEED)
    return set(rng.choice(np.array(unique, dtype=object), size=n, replace=False).tolist())


def read_groups(taskdir):
    with open(os.path.join(taskdir, "groups.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [(stem, group) for stem, group in rows]


def validation_stems(taskdir):
    """Stems of the task's validation split (never trained on)."""
    rows = read_groups(taskdir)
    val = validation_groups([g for _, g in rows])
    return [s for s, g in rows if g in val]


class Task:
    """One real task at 128x128, split into training and validation indices."""

    def __init__(self, root, entry):
        self.name = entry["task"]
        self.set = entry["set"]
        self.modality = entry.get("modality", "")
        path = os.path.join(root, self.name)
        z = np.load(os.path.join(path, "r128.npz"))
        self.images, self.masks = z["images"], z["masks"]
        stem_group = dict(read_groups(path))
        groups = [stem_group[str(s)] for s in z["stems"]]
        val = validation_groups(groups)
        self.group = np.unique(np.array(groups), return_inverse=True)[1]
        self.train = np.array([i for i, g in enumerate(groups) if g not in val])
        self.val = np.array([i for i, g in enumerate(groups) if g in val])


def load_tasks(root, exclude_sets=()):
    with open(os.path.join(root, "index.json")) as f:
        index = json.load(f)
    tasks = [Task(root, e) for e in index if e["set"] not in exclude_sets]
    return [t for t in tasks if len(t.train) >= 4]


def pick_episode(rng, task, k, split="train"):
    """k shot indices and one query index; the query comes from another group when it can."""
    pool = task.train if split == "train" else task.val
    query = rng.choice(pool)
    others = pool[task.group[pool] != task.group[query]]
    if len(others) < k:
        others = pool[pool != query]
    shots = rng.choice(others, size=k, replace=False)
    return list(shots), query


def real_episode(rng, task, k, with_source=False):
    """k shots and a query of `task` (images, masks); with_source also returns (task, indices)."""
    shots, query = pick_episode(rng, task, k)
    idx = shots + [query]
    episode = task.images[idx].astype(np.float32) / 255.0, task.masks[idx].astype(np.float32)
    return (*episode, (task, idx)) if with_source else episode


def pseudo_mask(rng, image):
    """A self-supervised target: one connected region of a smoothed, thresholded image."""
    for _ in range(6):
        smooth = ndimage.gaussian_filter(image, sigma=rng.choice([1.0, 2.0, 3.0, 5.0]))
        cut = np.quantile(smooth, rng.uniform(0.15, 0.85))
        binary = smooth > cut if rng.random() < 0.5 else smooth <= cut
        labels, n = ndimage.label(binary)
        if n == 0:
            continue
        sizes = ndimage.sum(binary, labels, index=np.arange(1, n + 1)) / binary.size
        ok = np.flatnonzero((sizes > 0.01) & (sizes < 0.5))
        if len(ok):
            region = labels == (rng.choice(ok) + 1)
            return ndimage.binary_closing(region, iterations=2).astype(np.float32)
    return None


def ssl_episode(rng, tasks, k, with_source=False):
    """k+1 copies of one real image with a pseudo-target; views differ by per-image augmentation.
    with_source also returns (task, indices)."""
    while True:
        task = tasks[rng.integers(len(tasks))]
        index = rng.choice(task.train)
        image = task.images[index].astype(np.float32) / 255.0
        mask = pseudo_mask(rng, image)
        if mask is not None:
            episode = np.repeat(image[None], k + 1, 0), np.repeat(mask[None], k + 1, 0)
            return (*episode, (task, [index] * (k + 1))) if with_source else episode


def smooth_noise(rng, scale):
    n = rng.standard_normal((R, R)).astype(np.float32)
    n = ndimage.gaussian_filter(n, scale)
    return (n - n.mean()) / (n.std() + 1e-6)


def synthetic_episode(rng, k):
    """A synthetic task: one shape family, intensity and texture contrast shared by all k+1
    images; shapes and textures drawn anew for each image (ultrasound-like speckle sometimes)."""
    fg_mean, bg_mean = rng.uniform(0.1, 0.9, size=2)
    if abs(fg_mean - bg_mean) < 0.12:
        fg_mean = np.clip(bg_mean + rng.choice([-0.3, 0.3]), 0.05, 0.95)
    tex_scale, tex_amp = rng.uniform(1, 6), rng.uniform(0.02, 0.15)
    fg_tex = rng.uniform(0.0, 0.15)
    speckle = rng.random() < 0.4
    blobs = rng.integers(1, 3)
    size = rng.uniform(0.08, 0.3)
    ring = rng.random() < 0.2
    yy, xx = np.mgrid[0:R, 0:R] / R
    images, masks = [], []
    for _ in range(k + 1):
        m = np.zeros((R, R), bool)
        for _ in range(blobs):
            cy, cx = rng.uniform(0.25, 0.75, 2)
            ry, rx = size * rng.uniform(0.6, 1.4, 2)
            a = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u, v = dy * np.cos(a) + dx * np.sin(a), -dy * np.sin(a) + dx * np.cos(a)
            wobble = 1 + 0.25 * smooth_noise(rng, 8) * rng.uniform(0, 1)
            e = (u / ry) ** 2 + (v / rx) ** 2 < wobble
            if ring:
                e &= (u / ry) ** 2 + (v / rx) ** 2 > 0.45 * wobble
            m |= e
        img = bg_mean + tex_amp * smooth_noise(rng, tex_scale) + (0.1 * smooth_noise(rng, 20))
        img = np.where(m, fg_mean + fg_tex * smooth_noise(rng, tex_scale), img)
        if speckle:
            img = img * rng.rayleigh(0.8, (R, R))
        img = ndimage.gaussian_filter(img, 0.7)
        images.append(img)
        masks.append(m.astype(np.float32))
    images = np.stack(images).astype(np.float32)
    return images, np.stack(masks)
