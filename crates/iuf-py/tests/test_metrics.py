"""iuf.metrics against plain numpy/scipy references on the same inputs."""

import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import rankdata

import iuf
from pro_reference import au_pro as reference_au_pro


def maps_and_masks(n=100, size=256, seed=0):
    """`n` smooth noisy maps with blob-shaped defects (several regions of very different sizes,
    some images without any) that the maps partly find, as an evaluation would give them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        if i % 4 == 3:
            continue  # a good image
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.uniform(2, 30)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 3, 3))
    signal = ndimage.gaussian_filter((masks > 0).astype(float), sigma=(0, 4, 4))
    maps = (noise * 4 + signal * rng.uniform(0.2, 2.0, (n, 1, 1))).astype(np.float32)
    # Coarse values as well: many ties, which the curve must treat as one threshold.
    maps[::5] = np.round(maps[::5], 1)
    return maps, masks


def test_au_pro_equals_the_numpy_reference_and_is_faster():
    maps, masks = maps_and_masks()
    start = time.perf_counter()
    expected = reference_au_pro(maps, masks)
    t_ref = time.perf_counter() - start
    start = time.perf_counter()
    got = iuf.metrics.au_pro(maps, masks)
    t_iuf = time.perf_counter() - start
    print(
        f"\nAU-PRO on 100 maps of 256 x 256: iuf {got:.12f} in {t_iuf * 1e3:.1f} ms, "
        f"numpy/scipy reference {expected:.12f} in {t_ref * 1e3:.1f} ms: "
        f"|difference| {abs(got - expected):.2e}, {t_ref / t_iuf:.1f}x faster"
    )
    assert 0.05 < expected < 0.95  # neither trivial nor perfect
    assert abs(got - expected) <= 1e-6
    for limit in [0.05, 0.3, 1.0]:
        assert abs(iuf.metrics.au_pro(maps, masks, max_fpr=limit) - reference_au_pro(maps, masks, limit)) <= 1e-6
    # bool masks and float64 maps are accepted as they are.
    assert iuf.metrics.au_pro(maps.astype(np.float64), masks > 0) == got


def test_au_pro_of_perfect_and_reversed_maps():
    _, masks = maps_and_masks(n=8, size=64, seed=1)
    perfect = masks.astype(np.float32)
    assert abs(iuf.metrics.au_pro(perfect, masks) - 1.0) < 1e-12
    assert iuf.metrics.au_pro(-perfect, masks) < 1e-9


def reference_auroc(scores, labels):
    """Mann-Whitney U with average ranks for ties: what roc_auc_score computes."""
    r = rankdata(scores.astype(np.float32))
    p = labels.sum()
    n = len(labels) - p
    return (r[labels].sum() - p * (p + 1) / 2) / (p * n)


def curve(scores, labels):
    """TP and FP counts at every distinct threshold, highest first (sklearn's _binary_clf_curve)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[s[1:] != s[:-1], True]
    return np.cumsum(y)[last], np.cumsum(~y)[last], s[last]


def reference_ap(scores, labels):
    tp, fp, _ = curve(scores.astype(np.float32), labels)
    precision = tp / (tp + fp)
    recall = tp / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def reference_f1_max(scores, labels):
    tp, fp, thresholds = curve(scores.astype(np.float32), labels)
    f1 = 2 * tp / (tp + fp + labels.sum())
    return float(f1.max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_equal_references(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    scores = rng.normal(size=500) + labels * rng.uniform(0.5, 2)
    scores[::7] = np.round(scores[::7])  # ties
    assert abs(iuf.metrics.auroc(scores, labels) - reference_auroc(scores, labels)) < 1e-12
    assert abs(iuf.metrics.average_precision(scores, labels) - reference_ap(scores, labels)) < 1e-12
    f1 = iuf.metrics.f1_max(scores, labels)
    assert abs(f1.f1 - reference_f1_max(scores, labels)) < 1e-12
    predicted = scores.astype(np.float32) >= f1.threshold
    tp = (predicted & labels).sum()
    assert abs(2 * tp / (predicted.sum() + labels.sum()) - f1.f1) < 1e-12
    # 0/1 integer labels are labels too.
    assert iuf.metrics.auroc(scores, labels.astype(int)) == iuf.metrics.auroc(scores, labels)


def test_pixel_metrics_are_the_metrics_of_all_pixels():
    maps, masks = maps_and_masks(n=10, size=64, seed=3)
    flat_scores, flat_labels = maps.ravel(), masks.ravel() > 0
    assert iuf.metrics.pixel_auroc(maps, masks) == iuf.metrics.auroc(flat_scores, flat_labels)
    assert abs(iuf.metrics.pixel_auroc(maps, masks) - reference_auroc(flat_scores, flat_labels)) < 1e-9
    assert iuf.metrics.pixel_average_precision(maps, masks) == iuf.metrics.average_precision(flat_scores, flat_labels)
    assert iuf.metrics.pixel_f1_max(maps, masks) == iuf.metrics.f1_max(flat_scores, flat_labels)


def test_metric_errors_are_value_errors():
    with pytest.raises(ValueError, match="NaN"):
        iuf.metrics.auroc([0.1, np.nan, 0.3], [True, False, False])
    with pytest.raises(ValueError, match="positive"):
        iuf.metrics.auroc([0.1, 0.2], [False, False])
    with pytest.raises(ValueError, match="expected 3 values, found 2"):
        iuf.metrics.auroc([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="same N x H x W shape"):
        iuf.metrics.au_pro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="max_fpr"):
        iuf.metrics.au_pro(np.zeros((1, 2, 2)), [[[1, 0], [0, 0]]], max_fpr=0.0)
    with pytest.raises(ValueError, match="1-D"):
        iuf.metrics.auroc(np.zeros((2, 2)), np.zeros((2, 2)))
