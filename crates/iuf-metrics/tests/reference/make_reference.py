#!/usr/bin/env python3
"""Reference values for the iuf-metrics integration tests (tests/it/).

Run from anywhere:  python3 crates/iuf-metrics/tests/reference/make_reference.py
Needs numpy, scipy and scikit-learn (`pip install scikit-learn numpy`). It rewrites
sklearn_reference.json next to this script. The JSON records the versions that produced it.

- Ranking metrics (AUROC, average precision, F1-max) come straight from scikit-learn:
  `roc_auc_score`, `average_precision_score` and `precision_recall_curve`.
- Every score is a float32 value (cast with numpy before scikit-learn sees it), so the Rust side,
  which takes `&[f32]`, gets exactly the same numbers and a 1e-9 comparison is meaningful.
- The million-sized cases are not stored: both this script and the Rust test regenerate them
  from a splitmix64 stream (parameters stored in the JSON), and only the metric values are kept.
- PRO has no scikit-learn counterpart. It is computed here by brute force from the MVTec AD
  definition: for every distinct threshold t, PRO(t) = mean over all ground-truth regions
  (8-connected components, scipy.ndimage.label with a 3x3 structure) of the fraction of the region
  scoring >= t, FPR(t) = fraction of all normal pixels scoring >= t; the curve (0,0), points
  ordered by decreasing t, (1,1) is integrated with the trapezoid rule up to max_fpr (linearly
  interpolated there) and divided by max_fpr.
- Image scores: maximum of the k x k mean (stride 1, no padding), k clamped to the map size,
  computed with numpy's sliding_window_view in float64.
"""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy
import scipy.ndimage
import sklearn
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(seed: int, n: int) -> np.ndarray:
    """The first n outputs of splitmix64 started at `seed` (same as tests/it/generator.rs)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(1, n + 1, dtype=np.uint64) * GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def generated_case(p: dict):
    """Scores q / 2^bits (exact in float32) and labels whose positive rate grows with the score."""
    u = splitmix64(p["seed_score"], p["n"])
    v = splitmix64(p["seed_label"], p["n"])
    bits = p["score_bits"]
    q = u >> np.uint64(64 - bits)
    scores = (q.astype(np.float64) / float(2**bits)).astype(np.float32)
    level = q >> np.uint64(bits - 4)
    labels = (v % np.uint64(p["label_modulus"])) < (
        np.uint64(p["label_base"]) + np.uint64(p["label_slope"]) * level
    )
    return scores, labels


def f1_max(scores: np.ndarray, labels: np.ndarray):
    """Best F1 over sklearn's precision_recall_curve thresholds.

    F1 is decided exactly (F1 = 2 TP / (TP + FP + P) as a fraction) so that float rounding cannot
    pick a different maximiser among exact ties; ties go to the lowest threshold, which is what
    np.argmax over sklearn's ascending thresholds returns.
    """
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    p, r = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    positives = int(labels.sum())
    # Only candidates within float noise of the maximum need the exact comparison.
    candidates = np.flatnonzero(f1 >= f1.max() - 1e-12)
    best = None
    for i in candidates:  # ascending thresholds: strict > keeps the first (lowest) maximiser
        t = thresholds[i]
        tp = int(labels[scores >= t].sum())
        predicted = int((scores >= t).sum())
        exact = Fraction(2 * tp, predicted + positives)
        if best is None or exact > best[0]:
            best = (exact, float(t))
    return float(best[0]), best[1]


def ranking_reference(scores, labels):
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=bool)
    out = {}
    if labels.any() and not labels.all():
        out["auroc"] = float(roc_auc_score(labels, scores))
    if labels.any():
        out["average_precision"] = float(average_precision_score(labels, scores))
        f1, threshold = f1_max(scores, labels)
        out["f1_max"] = f1
        out["f1_threshold"] = threshold
    return out


def fixed_cases():
    rng = np.random.default_rng(20240917)
    cases = []

    def add(name, scores, labels):
        scores = np.asarray(scores, dtype=np.float32)
        labels = np.asarray(labels, dtype=bool)
        case = {"name": name, "scores": [float(s) for s in scores], "labels": [bool(x) for x in labels]}
        case.update(ranking_reference(scores, labels))
        cases.append(case)

    add("distinct", [0.1, 0.4, 0.35, 0.8, 0.65, 0.2, 0.9, 0.05], [0, 0, 1, 1, 0, 0, 1, 1])
    add("ties_across_classes", [0.5, 0.5, 0.5, 0.2, 0.2, 0.9, 0.9, 0.1, 0.7, 0.7],
        [1, 0, 0, 1, 0, 1, 0, 0, 1, 1])
    add("all_equal_scores", [0.25] * 12, [1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0])
    add("perfect", [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1])
    add("inverted", [0.9, 0.8, 0.7, 0.3, 0.2, 0.1], [0, 0, 0, 1, 1, 1])
    add("signed_zero_and_negative", [-0.0, 0.0, -1.5, 2.0, 0.0, -0.0, -1.5, 3.25],
        [1, 0, 1, 1, 0, 0, 0, 1])
    add("single_positive_among_1000", rng.random(1000).astype(np.float32), np.arange(1000) == 417)
    add("heavy_imbalance_with_ties", np.round(rng.random(3000) * 50) / 50, rng.random(3000) < 0.01)
    add("only_positives", [0.3, 0.1, 0.3, 0.9], [1, 1, 1, 1])
    quantized = np.floor(rng.random(2000) * 64) / 64
    add("random_quantized_64_levels", quantized, rng.random(2000) < 0.2 + 0.6 * quantized)
    add("random_wide_range", (rng.standard_normal(1500) * 1e3).astype(np.float32),
        rng.random(1500) < 0.3)
    return cases


def generated_cases():
    params = [
        dict(name="million_fine", n=1_000_000, seed_score=1, seed_label=2, score_bits=24,
             label_modulus=1000, label_base=20, label_slope=30),
        dict(name="million_coarse_256_levels", n=1_000_000, seed_score=3, seed_label=4,
             score_bits=8, label_modulus=1000, label_base=20, label_slope=30),
        dict(name="million_imbalanced", n=1_000_000, seed_score=5, seed_label=6, score_bits=24,
             label_modulus=10000, label_base=1, label_slope=1),
    ]
    out = []
    for p in params:
        scores, labels = generated_case(p)
        case = dict(p)
        case["positives"] = int(labels.sum())
        case["first_scores"] = [float(s) for s in scores[:5]]
        case.update(ranking_reference(scores, labels))
        out.append(case)
    return out


def pro_brute_force(maps, masks, max_fpr):
    regions = []  # boolean masks, one per region of every image (flattened over all images)
    normal = []
    for i, mask in enumerate(masks):
        labeled, n = scipy.ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        for k in range(1, n + 1):
            regions.append((i, labeled == k))
        normal.append(mask == 0)
    normal_scores = np.concatenate([m[nm] for m, nm in zip(maps, normal)])
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        xs.append(float((normal_scores >= t).mean()))
        ys.append(float(np.mean([(maps[i][r] >= t).mean() for i, r in regions])))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for j in range(1, len(xs)):
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        if x1 <= max_fpr:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_at) * (max_fpr - x0)
            break
    return area / max_fpr, len(regions)


def pro_cases():
    rng = np.random.default_rng(7)
    width, height, count = 23, 17, 6
    maps, masks = [], []
    for i in range(count):
        mask = np.zeros((height, width), dtype=np.uint8)
        if i != 2:  # image 2 is a normal image: it only adds to the FPR
            for _ in range(rng.integers(1, 4)):
                x0, y0 = rng.integers(0, width - 3), rng.integers(0, height - 3)
                mask[y0:y0 + rng.integers(1, 6), x0:x0 + rng.integers(1, 7)] = 1
        if i == 4:  # two pixels touching only diagonally: one 8-connected region
            mask[:] = 0
            mask[3, 3] = mask[4, 4] = 1
            mask[10, 15] = 1
        # Scores on 40 levels (many ties), higher inside the mask so the curve is not trivial.
        base = rng.random((height, width)) * 0.7 + 0.3 * mask * rng.random((height, width))
        maps.append((np.floor(base * 40) / 40).astype(np.float32))
        masks.append(mask)
    out = []
    for max_fpr in (0.3, 0.05, 1.0):
        value, n_regions = pro_brute_force(maps, masks, max_fpr)
        out.append({"max_fpr": max_fpr, "pro_auc": value, "regions": n_regions})
    return {
        "width": width,
        "height": height,
        "maps": [[float(v) for v in m.ravel()] for m in maps],
        "masks": [[int(v) for v in m.ravel()] for m in masks],
        "results": out,
    }


def image_score_cases():
    rng = np.random.default_rng(11)
    out = []
    for width, height, k in ((20, 14, 5), (9, 9, 1), (7, 5, 16), (30, 3, 4)):
        m = rng.random((height, width)).astype(np.float32)
        kh, kw = min(k, height), min(k, width)
        pooled = np.lib.stride_tricks.sliding_window_view(m.astype(np.float64), (kh, kw)).mean(axis=(2, 3))
        out.append({"width": width, "height": height, "k": k, "map": [float(v) for v in m.ravel()],
                    "score": float(pooled.max())})
    return out


def main():
    reference = {
        "generated_by": "crates/iuf-metrics/tests/reference/make_reference.py",
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__},
        "fixed": fixed_cases(),
        "generated": generated_cases(),
        "pro": pro_cases(),
        "image_score": image_score_cases(),
    }
    path = Path(__file__).with_name("sklearn_reference.json")
    path.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
