"""A plain numpy/scipy AU-PRO, written from the definition (ALGORITHM.md section 6, the MVTec AD
evaluation): the reference the Rust metric is measured against.

- Regions: the 8-connected components of each ground-truth mask (scipy.ndimage.label).
- For a threshold t: PRO(t) = mean over every region of every image of the fraction of its pixels
  with map >= t; FPR(t) = fraction of all normal pixels with map >= t.
- The curve: (0, 0), then (FPR(t), PRO(t)) for every distinct map value t from the highest down,
  then (1, 1); AU-PRO = (area under it for FPR in [0, max_fpr], by the trapezoid rule, the curve
  linearly interpolated at max_fpr) / max_fpr.
"""

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=int)


def au_pro(maps, masks, max_fpr=0.3):
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks) != 0
    n = maps.shape[0]
    # Each anomalous pixel's weight is 1 / (its region's size); every region then sums to 1.
    weight = np.zeros(maps.shape, dtype=np.float64)
    regions = 0
    for i in range(n):
        labels, count = ndimage.label(masks[i], structure=EIGHT)
        if count:
            sizes = np.bincount(labels.ravel())
            w = 1.0 / sizes[labels]
            w[labels == 0] = 0.0
            weight[i] = w
        regions += count
    scores = maps.ravel()
    anomalous = masks.ravel()
    weight = weight.ravel()
    normal_count = int((~anomalous).sum())
    # Highest score first; every pixel of one score value switches at the same threshold.
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    fpr = np.cumsum(~anomalous[order]) / normal_count
    pro = np.cumsum(weight[order]) / regions
    last_of_value = np.r_[s[1:] != s[:-1], True]
    fpr = np.r_[0.0, fpr[last_of_value], 1.0]
    pro = np.r_[0.0, np.minimum(pro[last_of_value], 1.0), 1.0]
    # Cut at max_fpr: keep the points up to it, add the interpolated point at it.
    inside = fpr <= max_fpr
    x, y = fpr[inside], pro[inside]
    if x[-1] < max_fpr:
        k = np.searchsorted(fpr, max_fpr, side="right")
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        x, y = np.r_[x, max_fpr], np.r_[y, y_at]
    area = np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0)
    return float(area / max_fpr)
