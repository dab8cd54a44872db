"""The PyTorch peer of crates/iuf-model/src/memory.rs: the per-object nearest-neighbour feature
memory of ALGORITHM.md section 10 (PatchCore-style), run with plain PyTorch on the same Lite0
features, so that our Rust memory can be timed against PyTorch doing the same method.

Per class of the data set (e.g. mvtec-mini: bottle, pill, tire, magnetic_tile) it
- extracts the memory features of every train/good and test image (as iuf-backbone's `extract`):
  Lite0 blocks 4 (stride 8, 40 channels, 28x28) and 10 (stride 16, 112 channels, 14x14, resized
  to 28x28 bilinear with align_corners=True), concatenated (152 channels), then a 3x3 mean, stride
  1, padding not counted (avg_pool2d count_include_pad=False);
- builds the memory from the train patches [N*28*28, 152]: a random subset of at most --candidates
  patches, projected with a Gaussian matrix [152, --projection] scaled 1/sqrt(d), greedy k-center
  (start at a random candidate, repeatedly add the candidate farthest from the chosen set) until
  --patches are chosen; the memory holds the chosen candidates' 152-dim features;
- scores every test image: per patch the Euclidean distance to its nearest memory patch from
  |q|^2 + |m|^2 - 2 q.m (clamped at 0, square root), the [28, 28] map upsampled bilinear
  (align_corners=True) to 224x224, image score = max of a 16x16 average pool, stride 1;
- reports image AUROC and pixel AUROC (sklearn roc_auc_score, raw, masks resized nearest).

What it times (time.perf_counter, torch.no_grad, torch.set_num_threads(--threads)):
- extract: backbone + memory features, ms per image (train and test images, one pass; decoding
  and resizing the PNGs are not counted);
- build: the whole memory build from the train features (patch layout, candidate draw,
  projection, greedy selection, gathering the memory and its norms), seconds, median of --repeats;
- score: nearest-neighbour distances + upsampling + image scores of all test images from their
  features, ms per image, median of --repeats (after one untimed warm-up batch).

Images are read and resized without Pillow, but exactly as Pillow 13's resize(BILINEAR) (and
resize(NEAREST) for masks) does it, which is what ALGORITHM.md section 1 and crates/iuf-data do.

    pip install torch numpy scikit-learn
    nice -n 10 python3 xtask/scripts/memory_torch_peer.py --data ../shared/datasets/mvtec-mini \
        --classes bottle,pill,tire,magnetic_tile [--patches 4096 --candidates 65536 \
        --projection 64 --threads 2 --repeats 3 --json out.json]

Prints a markdown table on stdout (progress goes to stderr); --json writes the same numbers.
"""

import argparse
import functools
import json
import math
import os
import statistics
import struct
import sys
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbone_torch_model import efficientnet, load_pth  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WEIGHTS = os.path.join(ROOT, "..", "shared", "weights", "efficientnet-lite0",
                       "efficientnet-lite0-57934424.pth")
DATA = os.path.join(ROOT, "..", "shared", "datasets", "mvtec-mini")

SIZE = 224  # input side (section 1)
MEMORY_BLOCKS = (4, 10)  # Lite0: last block of the stride-8 and of the stride-16 stage
SCORE_POOL = 16  # image score: average pool side (section 6)
QUERY_BLOCK = 1024  # query patches per distance product (bounds the [rows, M] buffer)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
# Image input without Pillow: a small PNG reader and Pillow's 8-bit resampling, ported to numpy.
# ---------------------------------------------------------------------------------------------

def read_png(path):
    """8-bit, non-interlaced PNG (grey, grey+alpha, RGB, RGBA) -> uint8 [H, W, C] (C = 1 or 3;
    alpha dropped, as Pillow's convert("RGB") does)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = header
    channels = {0: 1, 4: 2, 2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: unsupported PNG (depth {depth}, colour {colour}, "
                         f"interlace {interlace})")
    raw = zlib.decompress(b"".join(idat))
    px = unfilter(raw, w, h, channels)
    if channels in (2, 4):
        px = px[:, :, :channels - 1]
    return px


def unfilter(raw, w, h, bpp):
    """Undoes the PNG per-row filters (None, Sub, Up, Average, Paeth) -> uint8 [h, w, bpp]."""
    stride = w * bpp
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: running sum per channel, modulo 256
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(stride)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            f, b, cur_l = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = cur_l[i - bpp] if i >= bpp else 0
                if kind == 3:
                    pred = (a + b[i]) >> 1
                else:
                    c = b[i - bpp] if i >= bpp else 0
                    p = a + b[i] - c
                    pa, pb, pc = abs(p - a), abs(p - b[i]), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b[i] if pb <= pc else c)
                cur_l[i] = (f[i] + pred) & 0xFF
            cur = np.array(cur_l, np.uint8)
        else:
            raise ValueError(f"bad PNG filter {kind}")
        out[y] = cur
        prev = cur
    return out.reshape(h, w, bpp)


PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)


@functools.lru_cache(maxsize=None)
def bilinear_weights(in_size, out_size):
    """Pillow's precompute_coeffs (triangle filter, support widened when shrinking) and
    normalize_coeffs_8bpc, as a dense [out, in] matrix of fixed-point weights (integers, held as
    float64: every sum of a pass stays an integer below 2^53, so BLAS computes it exactly)."""
    scale = in_size / out_size
    support = filterscale = max(scale, 1.0)
    weights = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        k = [max(0.0, 1.0 - abs((x - center + 0.5) / filterscale)) for x in range(xmin, xmax)]
        total = sum(k)
        for x, kx in enumerate(k):
            v = (kx / total if total != 0.0 else kx) * (1 << PRECISION_BITS)
            weights[xx, xmin + x] = int(v - 0.5) if v < 0 else int(v + 0.5)
    return weights


def fixed_point_pass(weights, x, axis):
    """One separable pass: Pillow's rounding (start at half) and clipping to uint8."""
    acc = np.tensordot(weights, x.astype(np.float64), axes=([1], [axis]))
    acc = np.moveaxis(acc, 0, axis).astype(np.int64)
    return np.clip((acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_bilinear(img, out_w, out_h):
    """Pillow 13's resize((out_w, out_h), BILINEAR) of uint8 [H, W, C], bit for bit: horizontal
    pass first unless the height shrinks more than twice as much as the width."""
    in_h, in_w = img.shape[:2]
    horizontal_first = not (in_h > out_h and in_h - out_h > (in_w - out_w) * 2)
    passes = [(1, in_w, out_w), (0, in_h, out_h)]
    for axis, n_in, n_out in (passes if horizontal_first else passes[::-1]):
        if n_in != n_out:
            img = fixed_point_pass(bilinear_weights(n_in, n_out), img, axis)
    return img


def nearest_indices(in_size, out_size):
    """Pillow's resize(NEAREST) source indices: position (i + 0.5) * in / out, accumulated."""
    step, pos, out = in_size / out_size, in_size / out_size * 0.5, []
    for _ in range(out_size):
        out.append(min(int(max(pos, 0.0)), in_size - 1))
        pos += step
    return np.array(out)


def load_image(path):
    """Section 1: RGB (grey -> 3 equal channels), 224x224 Pillow bilinear, uint8 [3, 224, 224]."""
    img = resize_bilinear(read_png(path), SIZE, SIZE)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img.transpose(2, 0, 1)


def load_mask(path):
    """Section 1: grey mask, 224x224 nearest, positive where > 0 -> bool [224, 224]."""
    m = read_png(path)[:, :, 0]
    rows, cols = nearest_indices(m.shape[0], SIZE), nearest_indices(m.shape[1], SIZE)
    return m[rows][:, cols] > 0


def pngs(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".png"))


def load_class(root, cls):
    """Train/good images, test images with labels (1 = in a defect folder) and masks."""
    train = np.stack([load_image(p) for p in pngs(os.path.join(root, cls, "train", "good"))])
    images, labels, masks = [], [], []
    test_root = os.path.join(root, cls, "test")
    for defect in sorted(os.listdir(test_root)):
        for p in pngs(os.path.join(test_root, defect)):
            images.append(load_image(p))
            labels.append(int(defect != "good"))
            mask = os.path.join(root, cls, "ground_truth", defect,
                                os.path.basename(p)[:-4] + "_mask.png")
            masks.append(load_mask(mask) if defect != "good" and os.path.exists(mask)
                         else np.zeros((SIZE, SIZE), bool))
    return train, np.stack(images), np.array(labels), np.stack(masks)


# ---------------------------------------------------------------------------------------------
# The method (ALGORITHM.md section 10), as crates/iuf-backbone `extract` and iuf-model memory.rs.
# ---------------------------------------------------------------------------------------------

def memory_features(net, u8):
    """uint8 [B, 3, 224, 224] -> memory features [B, 152, 28, 28]."""
    x = (u8.float() / 255.0 - MEAN) / STD
    outs = net.forward_blocks(x, last=max(MEMORY_BLOCKS))
    fine, coarse = outs[MEMORY_BLOCKS[0]], outs[MEMORY_BLOCKS[1]]
    coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True)
    return F.avg_pool2d(torch.cat([fine, coarse], 1), 3, stride=1, padding=1,
                        count_include_pad=False)


def extract_all(net, images, batch):
    return torch.cat([memory_features(net, torch.from_numpy(images[i:i + batch]))
                      for i in range(0, len(images), batch)])


def patches_of(features):
    """[N, C, h, w] -> rows [N*h*w, C] (image-major, then row, then column)."""
    n, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(n * h * w, c)


def greedy_k_center(x, k, first):
    """Rows of x [n, d] chosen greedily: start at `first`, then repeatedly the row farthest from
    the chosen set. Distances from |x|^2 + |c|^2 - 2 x.c (one matrix-vector product per round);
    argmax ties go to the lowest index, as in the Rust code."""
    sq = (x * x).sum(1)
    min_d = torch.full_like(sq, math.inf)
    chosen, nxt = [], first
    for _ in range(min(k, x.shape[0])):
        chosen.append(nxt)
        d = torch.addmv(sq, x, x[nxt], alpha=-2.0).add_(sq[nxt])
        torch.minimum(min_d, d, out=min_d)
        min_d[nxt] = -math.inf  # never picked again
        nxt = int(min_d.argmax())
    return torch.tensor(chosen)


def build_memory(features, patches, candidates, projection, seed):
    """One object's memory from its train features [N, 152, 28, 28]: (bank [M, 152], |m|^2)."""
    g = torch.Generator().manual_seed(seed)
    rows = patches_of(features)
    total, c = rows.shape
    if 0 < candidates < total:
        idx = torch.randperm(total, generator=g)[:candidates].sort().values
        pool = rows[idx]
    else:
        pool = rows.contiguous()
    if projection > 0:
        r = torch.randn(c, projection, generator=g) / math.sqrt(projection)
        proj = pool @ r
    else:
        proj = pool
    first = int(torch.randint(pool.shape[0], (1,), generator=g))
    bank = pool[greedy_k_center(proj, patches, first)].contiguous()
    return bank, (bank * bank).sum(1)


def score(bank, bank_sq, features, batch):
    """Test features [B, 152, 28, 28] -> anomaly maps [B, 224, 224] and image scores [B]."""
    maps, scores = [], []
    bank_t = bank.t()
    for i in range(0, features.shape[0], batch):
        f = features[i:i + batch]
        b, _, h, w = f.shape
        q = patches_of(f).contiguous()
        d2 = torch.cat([
            torch.addmm(bank_sq.unsqueeze(0), qb, bank_t, alpha=-2.0).amin(1) + (qb * qb).sum(1)
            for qb in q.split(QUERY_BLOCK)])
        dist = d2.clamp_min_(0.0).sqrt_().reshape(b, 1, h, w)
        amap = F.interpolate(dist, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
        scores.append(F.avg_pool2d(amap, SCORE_POOL, stride=1).amax(dim=(1, 2, 3)))
        maps.append(amap[:, 0])
    return torch.cat(maps), torch.cat(scores)


def auroc(labels, scores):
    """Raw AUROC (never flipped); NaN when only one class is present."""
    labels = np.asarray(labels).ravel()
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores).ravel()))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_class(net, args, cls):
    log = lambda msg: print(f"[{cls}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    train, test, labels, masks = load_class(args.data, cls)
    log(f"{len(train)} train, {len(test)} test images read")

    t_train, train_f = timed(lambda: extract_all(net, train, args.batch))
    t_test, test_f = timed(lambda: extract_all(net, test, args.batch))
    extract_ms = (t_train + t_test) / (len(train) + len(test)) * 1e3
    log(f"features {tuple(train_f.shape)}: {extract_ms:.1f} ms/image")

    build_s = []
    for _ in range(args.repeats):
        t, (bank, bank_sq) = timed(lambda: build_memory(
            train_f, args.patches, args.candidates, args.projection, args.seed))
        build_s.append(t)
    log(f"memory {tuple(bank.shape)}: build {statistics.median(build_s):.2f} s")

    score(bank, bank_sq, test_f[:args.batch], args.batch)  # warm-up
    score_ms = []
    for _ in range(args.repeats):
        t, (maps, scores) = timed(lambda: score(bank, bank_sq, test_f, args.batch))
        score_ms.append(t / len(test) * 1e3)

    return {
        "class": cls,
        "train_images": len(train),
        "test_images": len(test),
        "memory_patches": bank.shape[0],
        "extract_ms_per_image": extract_ms,
        "build_s": statistics.median(build_s),
        "build_s_runs": build_s,
        "score_ms_per_image": statistics.median(score_ms),
        "score_ms_per_image_runs": score_ms,
        "image_auroc": auroc(labels, scores.numpy()),
        "pixel_auroc": auroc(masks, maps.numpy()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA, help="data set root (<class>/train/good, ...)")
    ap.add_argument("--classes", default="bottle,pill,tire,magnetic_tile")
    ap.add_argument("--weights", default=WEIGHTS, help="EfficientNet-Lite0 .pth")
    ap.add_argument("--patches", type=int, default=4096, help="memory patches per object")
    ap.add_argument("--candidates", type=int, default=65536,
                    help="random patches the selection considers (0: all)")
    ap.add_argument("--projection", type=int, default=64,
                    help="width of the random projection of the selection (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed builds and scorings (median)")
    ap.add_argument("--batch", type=int, default=8, help="images per forward / scoring batch")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    net = efficientnet("lite0")
    net.load_state_dict(load_pth(args.weights))
    net.eval()

    with torch.no_grad():
        rows = [run_class(net, args, c) for c in args.classes.split(",") if c]

    settings = {k: getattr(args, k) for k in
                ("patches", "candidates", "projection", "seed", "threads", "repeats", "batch")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          + ", ".join(f"{k} {v}" for k, v in settings.items()))
    print()
    print("| class | train images | extract ms/image | build s (median) | score ms/image (median) "
          "| image AUROC | pixel AUROC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['class']} | {r['train_images']} | {r['extract_ms_per_image']:.1f} "
              f"| {r['build_s']:.2f} | {r['score_ms_per_image']:.2f} "
              f"| {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} |")
    if len(rows) > 1:
        mean = {k: statistics.mean(r[k] for r in rows) for k in ("image_auroc", "pixel_auroc")}
        print(f"| mean | | | | | {mean['image_auroc']:.3f} | {mean['pixel_auroc']:.3f} |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch_version": torch.__version__, "settings": settings,
                       "classes": rows}, f, indent=2)


if __name__ == "__main__":
    main()
