"""Figures of a `puppet train` run for the docs: loss curves, and targets next to the trained
generator's renders for a few identities of its dataset (one sample each).

Usage:
  python scripts/train_figures.py RUN_DIR [--prefix docs/figures/train_tiny_stage1] [--identities 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CURVES = ("reconstruction", "gan_g", "d_total", "imitation", "landmark", "pose_smooth")


def main() -> None:
    from puppet.generator.checkpoint import load_checkpoint
    from puppet.generator.train import (GENERATOR_FILE, CHECKPOINT_DIR, LOG_FILE, RUN_FILE, TrainingData,
                                        image_grid, loss_curves, read_log, render_batch)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--prefix", type=Path, default=Path("docs/figures/train_tiny_stage1"))
    ap.add_argument("--identities", type=int, default=4)
    ap.add_argument("--tile", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = json.loads((args.run / RUN_FILE).read_text())
    rows = read_log(args.run / LOG_FILE)
    Image.fromarray(loss_curves(rows, tuple(k for k in CURVES if k in rows[-1]))).save(
        f"{args.prefix}_losses.png", optimize=True)

    generator, extra = load_checkpoint(args.run / CHECKPOINT_DIR / GENERATOR_FILE)
    data = TrainingData(Path(run["dataset"]["folder"]), generator.config, batch=1, seed=0, rig_cache=None)
    labels = np.concatenate([data.dataset.shard(k)["identity"] for k in range(data.dataset.num_shards)])
    firsts = [int(np.argmax(labels == j)) for j in np.unique(labels)]
    step = max(1, len(firsts) // args.identities)
    picked = firsts[::step][:args.identities]
    batch = data.batch(data.samples(picked), run["portrait_size"], run["face_size"],
                       generator.config.ray_half_depth)
    gp, gf = render_batch(generator, data.rig_tensors.take(batch.identity), batch, extra["stage"],
                          run["portrait_size"], run["face_size"])
    grid = image_grid(batch.portrait, gp, batch.face, gf, tile=args.tile)
    Image.fromarray(grid).save(f"{args.prefix}_grid.png", optimize=True)
    print(f"samples {picked} (identities {batch.identity.tolist()}), step {extra['step']}: "
          f"{args.prefix}_losses.png, {args.prefix}_grid.png")


if __name__ == "__main__":
    main()
