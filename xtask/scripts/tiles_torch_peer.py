"""The PyTorch peer of iuf's tiled view (issue 22): the whole image and its tiles scored by
nearest-neighbour memories of Lite0 patches and fused, as crates/iuf-data/src/image/tiles.rs,
crates/iuf-incremental/src/scorer/tiles.rs, crates/iuf-model/src/map.rs (`stitch`,
`gaussian_blur`, `image_scores`) and the calibrator do, in plain PyTorch, so that `iuf predict`
with `--tile` can be timed against PyTorch doing the same work on the same CPU.

Per class of a data set in MVTec AD layout (e.g. `cargo xtask small-defects --out DIR --size
1024`; any data set whose images are larger than the tiles works):
- whole view: the image resized to 224x224 (Pillow bilinear), Lite0 memory features (blocks 4 and
  10, block 10 resized to 28x28 bilinear align_corners=True, concatenated, 3x3 mean with padding
  not counted: [152, 28, 28], memory_torch_peer.memory_features);
- tiled view: the image resized to --input x --input (Pillow bilinear; skipped when it already
  has that size), cut into square tiles of --tile px spread edge to edge with at least --overlap
  px of overlap (n = ceil((input - overlap) / (tile - overlap)) per side, tile i starts at
  round(i * (input - tile) / (n - 1))), each tile resized to 224 (Pillow bilinear), same features;
- memories: one per view and class from the train/good images that are not held out
  (memory_torch_peer.build_memory: --candidates random patches, Gaussian projection to
  --projection, greedy k-center to --patches; the tiled memory pools the patches of every tile
  position), rounded to f16 as iuf's model file stores them (--no-f16: kept f32);
- maps: per patch the Euclidean distance to the nearest memory patch. Whole view: the 28x28 map
  upsampled to 224 (bilinear, align_corners=True), Gaussian-blurred (sigma --sigma px, kernel cut
  at ceil(4 sigma), weights renormalised at the border, separable matrices as map.rs does), then
  upsampled (align_corners=True) to the fused side round(input * 224 / tile). Tiled view: each
  tile's 28x28 map upsampled to its footprint [round(y * side / input), round((y + tile) * side /
  input)) in the side x side map, overlaps averaged (map.rs `stitch`), then the same blur;
- calibration: each view's map normalised per class by (median, q99 - median) of the pixels of
  the --holdout held-out good training images' maps (nearest-rank quantiles, as calibrate.rs);
  the fused map is the sum of the two normalised maps (both weights 1); the image score is the
  max of a 16x16 average pool, stride 1, of the fused map;
- AUROC (sklearn roc_auc_score) of the image scores: per class over all test images, and per
  defect-type folder (that folder against the class's good test images); also of the whole view
  alone and the tiled view alone (each its normalised map, same pool).

What it times (time.perf_counter, torch.no_grad, torch.set_num_threads(--threads)), per test
image, from the PNG path to the image score, as `iuf predict` of one image does:
- decode: PNG decode, resize to 224 and to the working size, cut and resize the tiles, to uint8
  tensors (Pillow; single-threaded);
- backbone: the whole view's forward (batch B) and the tiles' forward (batch B*T), separately;
- nn: the nearest-neighbour search of the whole view's and the tiles' patches;
- maps: upsampling, stitching, the blurs, normalisation, fusion and the image score;
- end to end: the wall time of all of the above.
Batch 1 (each test image alone; the medians over the test images after --warmup untimed images)
and batch --batch (groups of that many test images, ms per image, median over the full groups).
Memory builds are timed once (seconds).

Images are decoded and resized with Pillow when it is installed (its resize(BILINEAR) is the
reference iuf-data reproduces bit for bit); without Pillow (or with --decoder numpy) with
memory_torch_peer's numpy PNG reader and Pillow port, which is exact but much slower (PNG rows
filtered with Paeth/Average are undone in Python), so its decode times mean little.

    pip install torch numpy scikit-learn pillow
    cargo xtask small-defects --out ../small-defects-1024 --size 1024 --train 40 --test-good 10 --per-size 2
    nice -n 10 python3 xtask/scripts/tiles_torch_peer.py --data ../small-defects-1024 \
        [--classes brushed_metal,pcb --input 1024 --tile 512 --overlap 0 --patches 4096 \
        --candidates 65536 --projection 32 --threads 2 --holdout 4 --limit-train N \
        --limit-test N --batch 8 --batch-groups N --warmup 2 --markdown out.md --json out.json]

Prints markdown tables on stdout (progress goes to stderr); --markdown also writes them to a
file, --json writes the numbers.
"""

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbone_torch_model import efficientnet, load_pth  # noqa: E402
from memory_torch_peer import (  # noqa: E402
    QUERY_BLOCK, SCORE_POOL, SIZE, WEIGHTS, auroc, build_memory, memory_features, patches_of,
    pngs, read_png, resize_bilinear)

try:
    from PIL import Image
except ImportError:  # the numpy decoder only
    Image = None


# ---------------------------------------------------------------------------------------------
# Tiling (crates/iuf-data/src/image/tiles.rs)
# ---------------------------------------------------------------------------------------------

def round_half_away(x):
    """Rust's f64::round for x >= 0 (Python's round() rounds half to even)."""
    return int(math.floor(x + 0.5))


class Tiling:
    def __init__(self, input, tile, overlap):
        if not (16 <= tile <= input and 0 <= overlap < tile):
            raise SystemExit(f"bad tiling: input {input}, tile {tile}, overlap {overlap}")
        self.input, self.tile, self.overlap = input, tile, overlap

    def per_side(self):
        if self.tile >= self.input:
            return 1
        return -(-(self.input - self.overlap) // (self.tile - self.overlap))

    def starts(self):
        n = self.per_side()
        if n == 1:
            return [0]
        span = self.input - self.tile
        return [round_half_away(span * i / (n - 1)) for i in range(n)]

    def origins(self):
        s = self.starts()
        return [(y, x) for y in s for x in s]

    def map_side(self):
        """TileConfig::map_side: the working image at the scale a tile has in the backbone."""
        return round_half_away(self.input * SIZE / self.tile)


# ---------------------------------------------------------------------------------------------
# Input: PNG -> whole view [3, 224, 224] and tiles [T, 3, 224, 224], uint8
# ---------------------------------------------------------------------------------------------

def prepare_pillow(path, tiling):
    img = Image.open(path).convert("RGB")
    whole = np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR))
    work = img if img.size == (tiling.input, tiling.input) else \
        img.resize((tiling.input, tiling.input), Image.BILINEAR)
    t = tiling.tile
    tiles = [np.asarray(work.crop((x, y, x + t, y + t)).resize((SIZE, SIZE), Image.BILINEAR))
             for (y, x) in tiling.origins()]
    return whole.transpose(2, 0, 1), np.stack(tiles).transpose(0, 3, 1, 2)


def prepare_numpy(path, tiling):
    img = read_png(path)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    whole = resize_bilinear(img, SIZE, SIZE)
    work = img if img.shape[:2] == (tiling.input, tiling.input) else \
        resize_bilinear(img, tiling.input, tiling.input)
    t = tiling.tile
    tiles = [resize_bilinear(work[y:y + t, x:x + t], SIZE, SIZE) for (y, x) in tiling.origins()]
    return whole.transpose(2, 0, 1), np.stack(tiles).transpose(0, 3, 1, 2)


def prepare(paths, tiling, decoder):
    """Paths -> (whole uint8 [B, 3, 224, 224], tiles uint8 [B*T, 3, 224, 224]) tensors."""
    fn = prepare_pillow if decoder == "pillow" else prepare_numpy
    done = [fn(p, tiling) for p in paths]
    whole = torch.from_numpy(np.ascontiguousarray(np.stack([w for w, _ in done])))
    tiles = torch.from_numpy(np.ascontiguousarray(np.concatenate([t for _, t in done])))
    return whole, tiles


def features(net, u8, batch=32):
    return torch.cat([memory_features(net, u8[i:i + batch]) for i in range(0, len(u8), batch)])


# ---------------------------------------------------------------------------------------------
# Maps (crates/iuf-model/src/memory.rs score, map.rs stitch / gaussian_blur / image_scores)
# ---------------------------------------------------------------------------------------------

class Memory:
    def __init__(self, feats, args, seed, f16):
        bank, _ = build_memory(feats, args.patches, args.candidates, args.projection, seed)
        if f16:  # iuf rounds the memory to f16 when it builds it (MemoryConfig::f16, default)
            bank = bank.half().float()
        self.bank_t = bank.t().contiguous()
        self.bank_sq = (bank * bank).sum(1).unsqueeze(0)
        self.size = bank.shape[0]

    def distances(self, f):
        """Features [N, C, h, w] -> nearest-memory distances [N, h, w]."""
        n, _, h, w = f.shape
        q = patches_of(f).contiguous()
        d2 = torch.cat([torch.addmm(self.bank_sq, qb, self.bank_t, alpha=-2.0).amin(1)
                        + (qb * qb).sum(1) for qb in q.split(QUERY_BLOCK)])
        return d2.clamp_min_(0.0).sqrt_().reshape(n, h, w)


@functools.lru_cache(maxsize=None)
def gaussian_matrix(n, sigma):
    """map.rs gaussian_matrix: [n, n] row-normalised Gaussian weights, cut at ceil(4 sigma)."""
    radius = math.ceil(4.0 * sigma)
    m = np.zeros((n, n), np.float64)
    for i in range(n):
        lo, hi = max(i - radius, 0), min(i + radius, n - 1)
        j = np.arange(lo, hi + 1)
        wgt = np.exp(-((j - i) ** 2) / (2.0 * sigma * sigma))
        m[i, lo:hi + 1] = wgt / wgt.sum()
    return torch.from_numpy(m.astype(np.float32))


def gaussian_blur(maps, sigma):
    """[B, H, W] -> G_h maps G_w^T (sigma 0: unchanged)."""
    if sigma <= 0:
        return maps
    _, h, w = maps.shape
    return gaussian_matrix(h, sigma) @ maps @ gaussian_matrix(w, sigma).t()


def up(maps, side):
    """[B, h, w] -> [B, side, side], bilinear, align_corners=True."""
    return F.interpolate(maps.unsqueeze(1), size=(side, side), mode="bilinear",
                         align_corners=True).squeeze(1)


def stitch(tiles, origins, tile, input, out):
    """map.rs stitch: tile maps [B, T, h, w] -> [B, out, out], each upsampled to its footprint,
    overlaps averaged (uncovered pixels 0)."""
    b = tiles.shape[0]
    at = lambda p: round_half_away(p * out / input)  # noqa: E731
    total = tiles.new_zeros(b, out, out)
    count = tiles.new_zeros(out, out)
    for i, (y, x) in enumerate(origins):
        y0, y1, x0, x1 = at(y), min(at(y + tile), out), at(x), min(at(x + tile), out)
        if y1 <= y0 or x1 <= x0:
            continue
        total[:, y0:y1, x0:x1] += F.interpolate(tiles[:, i:i + 1], size=(y1 - y0, x1 - x0),
                                                mode="bilinear", align_corners=True)[:, 0]
        count[y0:y1, x0:x1] += 1.0
    return total / count.clamp_min(1.0)


def view_maps(dw, dt, tiling, sigma):
    """Raw distances (whole [B, 28, 28], tiles [B*T, 28, 28]) -> the two views' maps at the fused
    side, [B, side, side] each (before normalisation)."""
    side = tiling.map_side()
    whole = gaussian_blur(up(dw, SIZE), sigma)
    if side != SIZE:
        whole = up(whole, side)
    b = dw.shape[0]
    tiles = dt.reshape(b, -1, *dt.shape[1:])
    tiled = gaussian_blur(stitch(tiles, tiling.origins(), tiling.tile, tiling.input, side), sigma)
    return whole, tiled


def image_scores(maps):
    """Section 6: max of a 16x16 average pool, stride 1, of [B, H, W] -> [B]."""
    return F.avg_pool2d(maps.unsqueeze(1), SCORE_POOL, stride=1).amax(dim=(1, 2, 3))


def norm_of(maps):
    """calibrate.rs MapNorm::of_good_maps: (median, max(q99 - median, floor)), nearest rank."""
    v = np.sort(maps.reshape(-1).numpy())
    v = v[np.isfinite(v)]
    med = float(v[round_half_away((len(v) - 1) * 0.5)])
    q99 = float(v[round_half_away((len(v) - 1) * 0.99)])
    return med, max(q99 - med, 1e-6 * max(abs(med), 1.0))


def normalised(m, norm):
    return (m - norm[0]) / norm[1]


# ---------------------------------------------------------------------------------------------
# Per class
# ---------------------------------------------------------------------------------------------

STAGES = ("decode", "backbone_whole", "backbone_tiles", "nn", "maps", "end_to_end")


def infer(net, mem_w, mem_t, norms, paths, tiling, args, times):
    """Scores `paths` as one batch; adds each stage's seconds to `times`. Returns the fused,
    whole-only and tiles-only image scores."""
    t0 = time.perf_counter()
    whole_u8, tiles_u8 = prepare(paths, tiling, args.decoder)
    t1 = time.perf_counter()
    fw = memory_features(net, whole_u8)
    t2 = time.perf_counter()
    ft = features(net, tiles_u8)
    t3 = time.perf_counter()
    dw, dt = mem_w.distances(fw), mem_t.distances(ft)
    t4 = time.perf_counter()
    whole, tiled = view_maps(dw, dt, tiling, args.sigma)
    whole, tiled = normalised(whole, norms[0]), normalised(tiled, norms[1])
    fused = image_scores(whole + tiled)
    t5 = time.perf_counter()
    for k, v in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
        times[k] = times.get(k, 0.0) + v
    return fused, image_scores(whole), image_scores(tiled)


def run_class(net, args, tiling, root, cls):
    log = lambda msg: print(f"[{cls}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    good = pngs(os.path.join(root, cls, "train", "good"))
    if len(good) <= args.holdout:
        raise SystemExit(f"{cls}: {len(good)} train/good images, need more than --holdout")
    held, train = good[len(good) - args.holdout:], good[:len(good) - args.holdout]
    if args.limit_train:
        train = train[:args.limit_train]
    test_root = os.path.join(root, cls, "test")
    test, folders = [], []
    for defect in sorted(os.listdir(test_root)):
        ps = pngs(os.path.join(test_root, defect))
        if args.limit_test:
            ps = ps[:args.limit_test]
        test += ps
        folders += [defect] * len(ps)
    labels = np.array([int(f != "good") for f in folders])

    # Memories from the train images (not timed per image: that is `iuf train`).
    t = time.perf_counter()
    fw, ft = [], []
    for i in range(0, len(train), args.batch):
        w, tl = prepare(train[i:i + args.batch], tiling, args.decoder)
        fw.append(memory_features(net, w))
        ft.append(features(net, tl))
    fw, ft = torch.cat(fw), torch.cat(ft)
    train_s = time.perf_counter() - t
    log(f"{len(train)} train images, {len(tiling.origins())} tiles each: features "
        f"{tuple(fw.shape)} + tiles {tuple(ft.shape)}: {train_s:.1f} s")
    t = time.perf_counter()
    mem_w = Memory(fw, args, args.seed, not args.no_f16)
    build_whole_s = time.perf_counter() - t
    t = time.perf_counter()
    mem_t = Memory(ft, args, args.seed + 1, not args.no_f16)
    build_tiles_s = time.perf_counter() - t
    log(f"memories {mem_w.size} + {mem_t.size} patches: {build_whole_s:.1f} + "
        f"{build_tiles_s:.1f} s")
    del fw, ft

    # Normalisation from the held-out good images.
    w, tl = prepare(held, tiling, args.decoder)
    whole, tiled = view_maps(mem_w.distances(memory_features(net, w)),
                             mem_t.distances(features(net, tl)), tiling, args.sigma)
    norms = (norm_of(whole), norm_of(tiled))
    log(f"norms from {len(held)} held-out images: whole {norms[0]}, tiles {norms[1]}")

    # Batch 1: every test image alone (scores from here), the first --warmup untimed.
    for p in test[:args.warmup]:
        infer(net, mem_w, mem_t, norms, [p], tiling, args, {})
    per_image = {k: [] for k in STAGES}
    scores = {"fused": [], "whole": [], "tiles": []}
    for i, p in enumerate(test):
        times = {}
        s = infer(net, mem_w, mem_t, norms, [p], tiling, args, times)
        for k, v in zip(scores, s):
            scores[k].append(float(v[0]))
        for k in STAGES:
            per_image[k].append(times[k] * 1e3)
        if (i + 1) % 20 == 0:
            log(f"batch 1: {i + 1}/{len(test)} images, "
                f"{statistics.median(per_image['end_to_end']):.0f} ms/image")
    b1 = {k: statistics.median(v) for k, v in per_image.items()}

    # Batch --batch: full groups of test images, ms per image.
    per_group = {k: [] for k in STAGES}
    groups = [test[i:i + args.batch] for i in range(0, len(test) - args.batch + 1, args.batch)]
    if args.batch_groups:  # spread over the test set (good and defective images)
        groups = groups[::max(1, len(groups) // args.batch_groups)][:args.batch_groups]
    if groups:
        infer(net, mem_w, mem_t, norms, groups[0], tiling, args, {})  # warm-up
    for g in groups:
        times = {}
        infer(net, mem_w, mem_t, norms, g, tiling, args, times)
        for k in STAGES:
            per_group[k].append(times[k] * 1e3 / len(g))
    bn = {k: statistics.median(v) for k, v in per_group.items() if v}
    log(f"batch 1 {b1['end_to_end']:.0f} ms/image, batch {args.batch} "
        f"{bn.get('end_to_end', float('nan')):.0f} ms/image")

    auc = {k: auroc(labels, v) for k, v in scores.items()}
    by_defect = {}
    good_idx = [i for i, f in enumerate(folders) if f == "good"]
    for defect in sorted(set(folders) - {"good"}):
        idx = good_idx + [i for i, f in enumerate(folders) if f == defect]
        by_defect[defect] = {k: auroc(labels[idx], np.array(v)[idx]) for k, v in scores.items()}
        by_defect[defect]["images"] = len(idx) - len(good_idx)
    return {
        "class": cls,
        "train_images": len(train),
        "holdout_images": len(held),
        "test_images": len(test),
        "test_good": len(good_idx),
        "memory_patches": {"whole": mem_w.size, "tiles": mem_t.size},
        "train_features_s": train_s,
        "build_s": {"whole": build_whole_s, "tiles": build_tiles_s},
        "norms": {"whole": norms[0], "tiles": norms[1]},
        "ms_per_image_batch1": b1,
        f"ms_per_image_batch{args.batch}": bn,
        "ms_per_image_batch1_runs": per_image,
        "image_auroc": auc,
        "by_defect": by_defect,
        "scores": scores,
        "folders": folders,
    }


def fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report(rows, args, tiling):
    out = []
    p = out.append
    p(f"torch {torch.__version__}, {torch.get_num_threads()} threads, decoder {args.decoder}; "
      f"data {args.data}; input {tiling.input}, tile {tiling.tile}, overlap {tiling.overlap} "
      f"({tiling.per_side()} x {tiling.per_side()} tiles, starts {tiling.starts()}), fused map "
      f"{tiling.map_side()} px; patches {args.patches}, candidates {args.candidates}, projection "
      f"{args.projection}, f16 memory {not args.no_f16}, sigma {args.sigma}")
    p("")
    p("Time per test image, ms (median; batch 1 after "
      f"{args.warmup} warm-up images, batch {args.batch} per image over full groups):")
    p("")
    p("| class | batch | decode+resize+cut | backbone whole | backbone tiles | nn search "
      "| stitch+blur+score | end to end |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for b in (1, args.batch):
            t = r[f"ms_per_image_batch{b}"]
            if not t:
                continue
            p(f"| {r['class']} | {b} | " + " | ".join(fmt(t[k], 1) for k in STAGES) + " |")
    p("")
    p("Image AUROC (fused = both normalised views summed; whole / tiles = that view alone):")
    p("")
    p("| class | train | held out | test (good) | memory patches whole / tiles | build s whole / "
      "tiles | fused | whole | tiles |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a = r["image_auroc"]
        p(f"| {r['class']} | {r['train_images']} | {r['holdout_images']} | {r['test_images']} "
          f"({r['test_good']}) | {r['memory_patches']['whole']} / {r['memory_patches']['tiles']} "
          f"| {r['build_s']['whole']:.1f} / {r['build_s']['tiles']:.1f} | {fmt(a['fused'])} "
          f"| {fmt(a['whole'])} | {fmt(a['tiles'])} |")
    if len(rows) > 1:
        m = {k: statistics.mean(r["image_auroc"][k] for r in rows)
             for k in ("fused", "whole", "tiles")}
        p(f"| mean | | | | | | {fmt(m['fused'])} | {fmt(m['whole'])} | {fmt(m['tiles'])} |")
    p("")
    p("Image AUROC per defect folder (against the class's good test images), fused / whole / "
      "tiles:")
    p("")
    p("| defect | " + " | ".join(r["class"] for r in rows) + " |")
    p("|---|" + "---:|" * len(rows))
    defects = sorted({d for r in rows for d in r["by_defect"]},
                     key=lambda d: (d.rsplit("-", 1)[0], int(d.rsplit("-", 1)[1][:-2])
                                    if d.endswith("px") and d.rsplit("-", 1)[1][:-2].isdigit()
                                    else 0, d))
    for d in defects:
        cells = []
        for r in rows:
            a = r["by_defect"].get(d)
            cells.append("" if a is None else
                         f"{fmt(a['fused'])} / {fmt(a['whole'])} / {fmt(a['tiles'])} "
                         f"({a['images']})")
        p(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data set root (<class>/train/good, ...)")
    ap.add_argument("--classes", help="comma-separated (default: every folder with train/good)")
    ap.add_argument("--weights", default=WEIGHTS, help="EfficientNet-Lite0 .pth")
    ap.add_argument("--input", type=int, default=1024, help="working resolution, px")
    ap.add_argument("--tile", type=int, default=512, help="tile side in working px")
    ap.add_argument("--overlap", type=int, default=0, help="least overlap in working px")
    ap.add_argument("--patches", type=int, default=4096, help="memory patches per view and object")
    ap.add_argument("--candidates", type=int, default=65536,
                    help="random patches the selection considers (0: all)")
    ap.add_argument("--projection", type=int, default=32,
                    help="width of the random projection of the selection (0: none)")
    ap.add_argument("--no-f16", action="store_true", help="keep the memories in f32")
    ap.add_argument("--sigma", type=float, default=4.0, help="Gaussian blur of the maps, px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--holdout", type=int, default=4,
                    help="last N train/good images held out for the normalisation")
    ap.add_argument("--limit-train", type=int, default=0, help="at most N train images (0: all)")
    ap.add_argument("--limit-test", type=int, default=0, help="at most N per test folder")
    ap.add_argument("--batch", type=int, default=8, help="the second timed batch size")
    ap.add_argument("--batch-groups", type=int, default=0,
                    help="time at most N groups of --batch images (0: all full groups)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batch-1 images first")
    ap.add_argument("--decoder", choices=("pillow", "numpy"),
                    default="pillow" if Image is not None else "numpy")
    ap.add_argument("--markdown", help="also write the tables here")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.decoder == "pillow" and Image is None:
        raise SystemExit("--decoder pillow needs Pillow (pip install pillow)")

    tiling = Tiling(args.input, args.tile, args.overlap)
    classes = args.classes.split(",") if args.classes else sorted(
        c for c in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, c, "train")))
    torch.set_num_threads(args.threads)
    net = efficientnet("lite0")
    net.load_state_dict(load_pth(args.weights))
    net.eval()

    with torch.no_grad():
        rows = [run_class(net, args, tiling, args.data, c) for c in classes if c]

    text = report(rows, args, tiling)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "markdown")}
        with open(args.json, "w") as f:
            json.dump({"torch_version": torch.__version__, "threads": torch.get_num_threads(),
                       "settings": settings, "map_side": tiling.map_side(),
                       "tile_starts": tiling.starts(), "classes": rows}, f, indent=2)


if __name__ == "__main__":
    main()
