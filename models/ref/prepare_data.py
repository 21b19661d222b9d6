"""Convert the real data sets in ../shared/data into one uniform folder per segmentation task.

Usage (from the repository root; both arguments are the defaults):

    python3 models/ref/prepare_data.py --data ../shared/data --out target/ref-data

Input: one folder per set, each with a SOURCE.txt (provenance, encoding, grouping). Any folder
in the plain layout `images/<stem>.*` + `masks/<stem>.*` is picked up without code changes:
intensity masks (0/255, JPEG, anti-aliased) give one task with foreground = value >= 128; label
maps (palette or every value <= MAX_LABEL) give one task per non-zero label value. Three older
layouts have explicit converters that follow their SOURCE.txt:
  busi-breast-ultrasound-subset   masks/<stem>_mask.png (+ _mask_1.png, a second lesion: union), > 0
  ddti-thyroid-nodule-ultrasound  masks/<stem>.gif, > 0, grouped by case
  drishti-gs1-disc-cup            images/*.jpg + disc_softmap/ + cup_softmap/ (4-expert agreement,
                                  >= 128); three tasks: disc, cup and rim (disc minus cup)

Output, per task (`<set>` for a single structure, `<set>--<structure>` otherwise):
  <out>/<task>/images/<stem>.png  the image, gray or RGB as in the source (other modes made 8-bit),
                                  BOX-downscaled to a longest side <= MAX_SIDE (never upscaled)
  <out>/<task>/masks/<stem>.png   0/255 gray8, same size (BOX-resized 0/255 mask >= 128)
  <out>/<task>/groups.tsv         stem<TAB>group id (patient / case / video / volume; else one
                                  group per image)
  <out>/<task>/r128.npz           images uint8 [N,128,128]: luma of the full-resolution image,
                                  BOX-resized (stretched) to 128x128 as the runtime does; masks
                                  uint8 [N,128,128] 0/1 (BOX-resized 0/255 mask >= 128); groups
                                  int32 [N]; stems; same order as groups.tsv (sorted stems)
  <out>/index.json                one entry per task: task, set, structure, source_pairs, pairs,
                                  groups, dropped, fg_fraction_mean, modality
Pairs whose resized mask is empty or below MIN_FG of the pixels are dropped (and counted). Sets
with more than MAX_PAIRS pairs are cut to whole groups, chosen in a seeded random order, before
conversion. The output is deterministic (sorted listings, fixed seed).
"""

import argparse
import fnmatch
import functools
import json
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

MAX_SIDE = 384
R = 128
MIN_FG = 0.001
MAX_PAIRS = 400
SEED = 0
WORKERS = 2
MAX_LABEL = 15
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"}

# Grouping of correlated frames, as stated in each SOURCE.txt (fnmatch pattern on the set name ->
# regex on the stem; group 1 is the group key). A set not listed has one group per image.
GROUP_PATTERNS = {
    "carotid-artery-ultrasound-momot": r"ccaus_(.+)_slice_\d+$",  # acquisition (one video sweep)
    "chaos-ct-liver-mini": r"chaos_(\d+)_\d+$",  # case
    "cvc-clinicdb-polyp": r"cvc_(seq\d+)_frame\d+$",  # video sequence
    "ddti-thyroid-nodule-ultrasound": r"(\d+)_",  # case (patient)
    "hocm-cardiac-ct-*": r"hocm_(\d+)_\d+$",  # CT volume
    "isbi2012-em-membranes": r"(isbi2012)_",  # one volume of consecutive sections
    "kits19-kidney-tumor-ct-mini": r"kits19_(\d+)_\d+$",  # case
    "lgg-brain-mri-flair-abnormality": r"(TCGA_.+)_\d+$",  # patient
    "msd-spleen-ct-mini": r"msd_(\d+)_spleen_\d+$",  # case
    "panseg-pancreas-t2-mri-mini": r"panseg_t2_(\d+)_\d+$",  # case
}
# Sets whose correlated frames are runs of adjacent slices: "<volume>_<slice number>" stems, one
# group per run of consecutive slice numbers within a volume.
SLICE_RUNS = {"epfl-em-*": r"(epfl_\w+)_(\d+)$"}

# Modality from SOURCE.txt: the keyword found earliest in the title line (else in the whole text).
MODALITY_WORDS = [
    (word, re.compile(rx, flags))
    for word, rx, flags in [
        ("ultrasound", r"ultrasound|sonograph|B-mode", re.I),
        ("fundus", r"fundus|retina", re.I),
        ("endoscopy", r"colonoscop|endoscop", re.I),
        ("dermoscopy", r"dermoscop", re.I),
        ("xray", r"X-ray|radiograph", re.I),
        ("ct", r"\bCT\b", 0),
        ("mri", r"\bMRI?\b|magnetic resonance", 0),
        ("histology", r"histolog|H&E|patholog", re.I),
        ("em", r"\bEM\b|electron microscop|FIB-SEM|\b(ss)?TEM\b", 0),
    ]
]

@dataclass(frozen=True)
class Pair:
    """One image with the mask files its structures are computed from."""

    stem: str
    image: str
    masks: tuple
    group: str


@dataclass(frozen=True)
class Structure:
    """One task of a set: `rule(planes)` turns the pair's decoded mask planes into a bool mask."""

    name: str | None  # None for a single-structure set
    rule: Callable


@dataclass
class DataSet:
    name: str
    modality: str
    source_pairs: int  # before the MAX_PAIRS cap
    pairs: list
    structures: list


# Mask rules (module-level functions wrapped in functools.partial, so they pickle to workers).
def any_at_least(planes, low):
    """Foreground where any plane is >= low (the union of the mask files)."""
    return np.logical_or.reduce([p >= low for p in planes])


def plane_at_least(planes, index, low):
    return planes[index] >= low


def equals(planes, value):
    return planes[0] == value


def rim(planes, low):
    """Disc (plane 0) minus cup (plane 1)."""
    return (planes[0] >= low) & ~(planes[1] >= low)


def task_name(dataset, structure):
    return dataset if structure.name is None else f"{dataset}--{structure.name}"


def to_8bit(img):
    """The image as 8-bit gray ('L') or RGB; 16-bit / float gray is stretched linearly between its
    0.5 and 99.5 percentiles, other modes are converted by PIL."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in ("1", "LA"):
        return img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(a, [0.5, 99.5])
        a = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1) * 255
        return Image.fromarray(np.round(a).astype(np.uint8))
    return img.convert("RGB")


def decode_mask(img):
    """A mask file as a 2-D integer array: palette and integer masks as their values, anything
    else ('1', colour) as 8-bit luma."""
    if img.mode not in ("L", "P") and not img.mode.startswith("I"):
        img = img.convert("L")
    return np.asarray(img).astype(np.int32)


def fit_size(width, height):
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def box_mask(mask, size):
    """A bool mask BOX-resized as 0/255 gray8 to `size`, then >= 128."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize(size, Image.BOX)) >= 128


def luma128(img):
    """Luma (0.299 R + 0.587 G + 0.114 B) of the full-resolution image, BOX-resized to RxR."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3:
        a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    small = Image.fromarray(a).resize((R, R), Image.BOX)
    return np.clip(np.round(np.asarray(small)), 0, 255).astype(np.uint8)


def convert_pair(job):
    """Converts one pair for every structure of its set; writes the PNGs of the kept ones.

    Returns (stem, error, r128 image, results) with one (fg fraction, r128 mask, None when
    dropped) per structure; error is a message when the pair cannot be used."""
    pair, structures, task_dirs = job
    with Image.open(pair.image) as src:
        image = to_8bit(src)
        image.load()
    planes = []
    for path in pair.masks:
        with Image.open(path) as m:
            planes.append(decode_mask(m))
    for path, plane in zip(pair.masks, planes):
        if plane.shape != (image.height, image.width):
            return pair.stem, f"mask {os.path.basename(path)} is {plane.shape[::-1]}, image {image.size}", None, []
    size = fit_size(*image.size)
    small = image.resize(size, Image.BOX) if size != image.size else image
    image128 = luma128(image)
    results = []
    for structure, task_dir in zip(structures, task_dirs):
        full = structure.rule(planes)
        mask = box_mask(full, size)
        fg = float(mask.mean())
        if fg < MIN_FG:
            results.append((fg, None))
            continue
        small.save(os.path.join(task_dir, "images", pair.stem + ".png"))
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(task_dir, "masks", pair.stem + ".png"))
        results.append((fg, box_mask(full, (R, R)).astype(np.uint8)))
    return pair.stem, None, image128, results


def mask_values(path):
    with Image.open(path) as m:
        return m.mode, np.unique(decode_mask(m))


def list_images(folder):
    """{stem: path} of the image files in `folder`."""
    out = {}
    for f in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(f)
        if ext.lower() in IMAGE_EXTS:
            out[stem] = os.path.join(folder, f)
    return out


def lookup(table, name):
    return next((v for k, v in table.items() if fnmatch.fnmatchcase(name, k)), None)


def assign_groups(name, stems):
    """Group keys for the stems of set `name` (see GROUP_PATTERNS and SLICE_RUNS)."""
    pattern = lookup(GROUP_PATTERNS, name)
    if pattern is not None:
        return [m.group(1) if (m := re.match(pattern, s)) else s for s in stems]
    pattern = lookup(SLICE_RUNS, name)
    if pattern is None:
        return list(stems)
    keys, last = [], {}
    for stem in stems:  # sorted, so the slices of a volume come in increasing order
        m = re.match(pattern, stem)
        if not m:
            keys.append(stem)
            continue
        volume, number = m.group(1), int(m.group(2))
        start, previous = last.get(volume, (number, None))
        if previous is None or number != previous + 1:
            start = number
        last[volume] = (start, number)
        keys.append(f"{volume}_{start:04d}")
    return keys


def make_pairs(name, images, masks):
    """Pairs from {stem: image path} and {stem: tuple of mask paths}; warns about unpaired files."""
    stems = sorted(set(images) & set(masks))
    lonely = sorted(set(images) ^ set(masks))
    if lonely:
        print(f"  {name}: {len(lonely)} unpaired file(s) ignored, e.g. {lonely[0]}")
    groups = assign_groups(name, stems)
    return [Pair(s, images[s], masks[s], g) for s, g in zip(stems, groups)]


def modality(source_text):
    """The modality word whose keyword occurs first in the title line, else in the whole text."""
    for text in (source_text.split("\n", 1)[0], source_text):
        found = [(m.start(), word) for word, rx in MODALITY_WORDS if (m := rx.search(text))]
        if found:
            return min(found)[1]
    return "unknown"


def busi(path):
    """BUSI: masks/<stem>_mask.png, plus <stem>_mask_1.png for a second lesion (union), > 0."""
    images = list_images(os.path.join(path, "images"))
    files = list_images(os.path.join(path, "masks"))
    masks = {}
    for stem in images:
        found = [files[k] for k in sorted(files) if re.fullmatch(re.escape(stem) + r"_mask(_\d+)?", k)]
        if found:
            masks[stem] = tuple(found)
    return make_pairs("busi-breast-ultrasound-subset", images, masks), [
        Structure(None, functools.partial(any_at_least, low=1))
    ]


def ddti(path):
    """DDTI: images/<stem>.png + masks/<stem>.gif, 0/255, foreground > 0."""
    images = list_images(os.path.join(path, "images"))
    masks = {k: (v,) for k, v in list_images(os.path.join(path, "masks")).items()}
    return make_pairs("ddti-thyroid-nodule-ultrasound", images, masks), [
        Structure(None, functools.partial(any_at_least, low=1))
    ]


def drishti(path):
    """Drishti-GS1: disc and cup soft maps (4-expert agreement), majority (>= 128); rim = disc - cup."""
    images = list_images(os.path.join(path, "images"))
    disc = list_images(os.path.join(path, "disc_softmap"))
    cup = list_images(os.path.join(path, "cup_softmap"))
    masks = {s: (disc[s], cup[s]) for s in sorted(set(disc) & set(cup))}
    return make_pairs("drishti-gs1-disc-cup", images, masks), [
        Structure("disc", functools.partial(plane_at_least, index=0, low=128)),
        Structure("cup", functools.partial(plane_at_least, index=1, low=128)),
        Structure("rim", functools.partial(rim, low=128)),
    ]


CONVERTERS = {
    "busi-breast-ultrasound-subset": busi,
    "ddti-thyroid-nodule-ultrasound": ddti,
    "drishti-gs1-disc-cup": drishti,
}


def plain(name, path, pool):
    """The plain layout: images/<stem>.* + masks/<stem>.*; intensity mask or label map."""
    images = list_images(os.path.join(path, "images"))
    masks = {k: (v,) for k, v in list_images(os.path.join(path, "masks")).items()}
    pairs = make_pairs(name, images, masks)
    scanned = pool.map(mask_values, [p.masks[0] for p in pairs])
    values = np.unique(np.concatenate([v for _, v in scanned])) if scanned else np.zeros(0)
    labels = [int(v) for v in values if v != 0]
    is_label_map = all(mode == "P" for mode, _ in scanned) or (labels and max(labels) <= MAX_LABEL)
    if is_label_map and len(labels) > 1:
        return pairs, [Structure(f"label{v}", functools.partial(equals, value=v)) for v in labels]
    low = 1 if is_label_map else 128
    return pairs, [Structure(None, functools.partial(any_at_least, low=low))]


def cap(pairs):
    """At most MAX_PAIRS pairs: whole groups in a seeded random order, each taken if it fits."""
    if len(pairs) <= MAX_PAIRS:
        return pairs
    by_group = {}
    for p in pairs:
        by_group.setdefault(p.group, []).append(p)
    order = np.random.default_rng(SEED).permutation(sorted(by_group))
    chosen, n = set(), 0
    for g in order:
        if n + len(by_group[g]) <= MAX_PAIRS:
            chosen.add(g)
            n += len(by_group[g])
    return [p for p in pairs if p.group in chosen]


def discover(data, pool):
    sets = []
    for name in sorted(os.listdir(data)):
        path = os.path.join(data, name)
        if not os.path.isdir(path):
            continue
        if name in CONVERTERS:
            pairs, structures = CONVERTERS[name](path)
        elif os.path.isdir(os.path.join(path, "images")) and os.path.isdir(os.path.join(path, "masks")):
            pairs, structures = plain(name, path, pool)
        else:
            print(f"  skipped {name}: no images/ + masks/ and no converter")
            continue
        source = os.path.join(path, "SOURCE.txt")
        text = open(source, encoding="utf-8").read() if os.path.exists(source) else ""
        sets.append(DataSet(name, modality(text), len(pairs), cap(pairs), structures))
    return sets


def write_task(out, dataset, structure, kept, dropped):
    """Writes groups.tsv and r128.npz of one task; `kept` is [(pair, fg, image128, mask128)]."""
    task = task_name(dataset.name, structure)
    keys = sorted({p.group for p, *_ in kept})
    ids = {k: i for i, k in enumerate(keys)}
    with open(os.path.join(out, task, "groups.tsv"), "w") as f:
        f.writelines(f"{p.stem}\t{ids[p.group]}\n" for p, *_ in kept)
    np.savez_compressed(
        os.path.join(out, task, "r128.npz"),
        images=np.stack([k[2] for k in kept]) if kept else np.zeros((0, R, R), np.uint8),
        masks=np.stack([k[3] for k in kept]) if kept else np.zeros((0, R, R), np.uint8),
        groups=np.array([ids[p.group] for p, *_ in kept], dtype=np.int32),
        stems=np.array([p.stem for p, *_ in kept], dtype=str),
    )
    return {
        "task": task,
        "set": dataset.name,
        "structure": structure.name,
        "source_pairs": dataset.source_pairs,
        "pairs": len(kept),
        "groups": len(keys),
        "dropped": dropped,
        "fg_fraction_mean": round(float(np.mean([k[1] for k in kept])), 5) if kept else 0.0,
        "modality": dataset.modality,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data", help="folder of data sets (one per folder)")
    ap.add_argument("--out", default="target/ref-data", help="output folder (one per task)")
    args = ap.parse_args()
    start = time.time()
    os.makedirs(args.out, exist_ok=True)
    index = []
    with multiprocessing.Pool(WORKERS) as pool:
        sets = discover(args.data, pool)
        jobs = []
        for ds in sets:
            dirs = [os.path.join(args.out, task_name(ds.name, s)) for s in ds.structures]
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(os.path.join(d, "images"))
                os.makedirs(os.path.join(d, "masks"))
            jobs += [(p, ds.structures, dirs) for p in ds.pairs]
        results = pool.imap(convert_pair, jobs, chunksize=4)
        for ds in sets:
            t0 = time.time()
            kept = [[] for _ in ds.structures]
            dropped = [0 for _ in ds.structures]
            for pair in ds.pairs:
                stem, error, image128, res = next(results)
                if error:
                    print(f"  {ds.name}/{stem}: skipped ({error})")
                    continue
                for i, (fg, mask128) in enumerate(res):
                    if mask128 is None:
                        dropped[i] += 1
                    else:
                        kept[i].append((pair, fg, image128, mask128))
            for i, structure in enumerate(ds.structures):
                e = write_task(args.out, ds, structure, kept[i], dropped[i])
                index.append(e)
                print(
                    f"[{len(index):2d}] {e['task']:42s} {e['modality']:10s}"
                    f" pairs {e['pairs']:3d}/{e['source_pairs']:3d}  groups {e['groups']:3d}"
                    f"  dropped {e['dropped']:2d}  fg {e['fg_fraction_mean']:.3f}  ({time.time() - t0:.1f} s)",
                    flush=True,
                )
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    print(f"{len(index)} tasks from {len(sets)} sets in {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
