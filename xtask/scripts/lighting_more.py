"""Writes the two-lighting test product of docs/results/line/README.md under OUT (default
target/lighting-more): copies of mvtec-mini's bottle, resized to 256 px.

  L1/bottle/...        lighting 1 (the originals): train/good, test/*, ground_truth/*
  L2more/bottle/train/good   20 good images in lighting 2 (for `iuf learn --more`; its test/
                       and ground_truth/ are links to L1's, which --more does not read)
  L2rest/              the other 209 good images in lighting 2 (189 train + 20 test good)
  orig1000/            1000 good images in lighting 1: the 20 test good images, each in 50
                       variants (a gain of 0.995-1.005, seeded),
                       for the drift watch's "no warning in 1000" check

Lighting 2: 0.7 x brightness, then a colour cast (+18 red, -14 blue), clipped to 0-255.
Usage: python3 lighting_more.py MVTEC_MINI [OUT]
"""

import os
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 256


def load(p, mask=False):
    im = Image.open(p)
    im = im.convert("L" if mask else "RGB")
    return im.resize((SIDE, SIDE), Image.NEAREST if mask else Image.BILINEAR)


def lighting2(im):
    a = np.asarray(im).astype(np.float32) * 0.7
    a += np.array([18.0, 0.0, -14.0], np.float32)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def variant(im, rng):
    # A gain of 0.995-1.005 and nothing else: flips, rotations and shifts change the scores of
    # the per-position Gaussian (a flipped bottle is not lit like the training images); measured:
    # the median score rose from 2.0 to 3.0 with flips, to 7.4 with rotations and shifts.
    a = np.asarray(im).astype(np.float32) * rng.uniform(0.995, 1.005)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def main():
    src = Path(sys.argv[1]) / "bottle"
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "target/lighting-more")
    l1 = out / "L1" / "bottle"
    if len(sys.argv) > 3 and sys.argv[3] == "orig-only":
        make_orig(src, out, random.Random(26))
        return
    for p in sorted(src.rglob("*.png")):
        rel = p.relative_to(src)
        dst = l1 / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        load(p, mask=rel.parts[0] == "ground_truth").save(dst)
    train = sorted((src / "train" / "good").glob("*.png"))
    test_good = sorted((src / "test" / "good").glob("*.png"))
    rng = random.Random(25)
    order = train[:]
    rng.shuffle(order)
    more = out / "L2more" / "bottle" / "train" / "good"
    rest = out / "L2rest"
    more.mkdir(parents=True, exist_ok=True)
    rest.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(order):
        dst = (more if i < 20 else rest) / f"train-{p.stem}.png"
        lighting2(load(p)).save(dst)
    for p in test_good:
        lighting2(load(p)).save(rest / f"test-{p.stem}.png")
    # The dataset layout wants a test set beside train/good (it is not read by --more).
    for d in ("test", "ground_truth"):
        link = out / "L2more" / "bottle" / d
        link.symlink_to(os.path.relpath(l1 / d, link.parent))
    make_orig(src, out, random.Random(26))
    print(f"wrote {out}")


def make_orig(src, out, rng):
    orig = out / "orig1000"
    orig.mkdir(parents=True, exist_ok=True)
    test_good = sorted((src / "test" / "good").glob("*.png"))
    for j in range(50):
        for p in test_good:
            variant(load(p), rng).save(orig / f"{j:02d}-{p.stem}.png")


if __name__ == "__main__":
    main()
