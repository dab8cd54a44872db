"""Evaluation metrics of anomaly detection, computed by the Rust crate iuf-metrics.

Each is defined exactly as the reference: ``auroc`` is scikit-learn's ``roc_auc_score``,
``average_precision`` its ``average_precision_score``, ``f1_max`` the best F1 along its
``precision_recall_curve`` (tied scores form one threshold in all three), and ``au_pro`` the
normalised area under the per-region-overlap curve of the MVTec AD evaluation up to a
false-positive-rate limit (``PRO_MAX_FPR`` = 0.3).

Scores and maps are evaluated as float32 (converted when given in another dtype; values equal
in float32 are tied). Labels and masks: nonzero / True means anomalous. Maps and masks are
``N x H x W`` arrays (one map and one mask per image). Invalid input (NaN scores, a missing
class, mismatched shapes) raises ``ValueError``; the GIL is released while computing.
"""

from typing import NamedTuple

import numpy as np

from . import _iuf

PRO_MAX_FPR: float = _iuf.PRO_MAX_FPR

__all__ = [
    "F1Max",
    "PRO_MAX_FPR",
    "auroc",
    "average_precision",
    "f1_max",
    "pixel_auroc",
    "pixel_average_precision",
    "pixel_f1_max",
    "au_pro",
]


class F1Max(NamedTuple):
    """The best F1 over all thresholds and the threshold reaching it (``score >= threshold``
    is predicted anomalous; among equal F1 values the lowest threshold)."""

    f1: float
    threshold: float


def _scores(scores, name="scores"):
    a = np.asarray(scores)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, found shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _labels(labels, name="labels"):
    a = np.asarray(labels)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, found shape {a.shape}")
    return np.ascontiguousarray(a != 0)


def _maps(maps):
    a = np.asarray(maps)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"maps: expected an N x H x W array, found shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _masks(masks):
    a = np.asarray(masks)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"masks: expected an N x H x W array, found shape {a.shape}")
    if a.dtype == np.bool_ or a.dtype == np.uint8:
        return np.ascontiguousarray(a).view(np.uint8)
    return np.ascontiguousarray(a != 0).view(np.uint8)


def auroc(scores, labels) -> float:
    """Area under the ROC curve of image scores against labels (1/True = anomalous)."""
    return _iuf.auroc(_scores(scores), _labels(labels))


def average_precision(scores, labels) -> float:
    """Average precision of image scores against labels (1/True = anomalous)."""
    return _iuf.average_precision(_scores(scores), _labels(labels))


def f1_max(scores, labels) -> F1Max:
    """Best F1 over all thresholds of image scores against labels, with its threshold."""
    return F1Max(*_iuf.f1_max(_scores(scores), _labels(labels)))


def pixel_auroc(maps, masks) -> float:
    """AUROC over every pixel of every map (``N x H x W``) against the masks."""
    return _iuf.pixel_auroc(_maps(maps), _masks(masks))


def pixel_average_precision(maps, masks) -> float:
    """Average precision over every pixel of every map (``N x H x W``) against the masks."""
    return _iuf.pixel_average_precision(_maps(maps), _masks(masks))


def pixel_f1_max(maps, masks) -> F1Max:
    """Best F1 over every pixel of every map (``N x H x W``) against the masks."""
    return F1Max(*_iuf.pixel_f1_max(_maps(maps), _masks(masks)))


def au_pro(maps, masks, max_fpr: float = PRO_MAX_FPR) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr``.

    Regions are the 8-connected components of each mask; PRO(t) is the mean over all regions of
    all images of the fraction of the region's pixels scoring >= t, FPR(t) the fraction of all
    normal pixels scoring >= t. The curve from (0, 0) through every distinct score to (1, 1) is
    integrated by the trapezoid rule up to ``max_fpr`` (interpolated there) and divided by
    ``max_fpr``, so a perfect map scores 1.
    """
    return _iuf.au_pro(_maps(maps), _masks(masks), float(max_fpr))
