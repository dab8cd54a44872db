"""iuf: industrial anomaly detection from Python.

Open a model file written by ``iuf train`` / ``iuf learn`` and score images exactly as
``iuf predict`` does (the same preprocessing, model and thresholds: the answers are bit for bit
those of ``iuf predict --json``)::

    import iuf
    model = iuf.Model.load("model.safetensors")
    r = model.inspect("bottle.png")          # or bytes, or an H x W x 3 uint8 array
    print(r.object, r.score, r.threshold, r.decision)
    r.map                                    # float32 anomaly map at the image's size

``iuf.train`` and ``iuf.learn`` learn models as ``iuf train`` and ``iuf learn`` do (the same
arguments, the same model file), reporting ``iuf.Progress`` to an optional callback::

    iuf.train("mvtec", "model.safetensors", classes=["bottle"], progress=print)
    iuf.learn("model.safetensors", "mvtec", "model2.safetensors", classes=["pill"])

``iuf.metrics`` evaluates scores and maps (AUROC, AP, F1-max, AU-PRO).
"""

from ._iuf import (
    PRO_MAX_FPR,
    IufError,
    ImageError,
    Inspection,
    Model,
    ModelError,
    Progress,
    WeightsError,
    __version__,
    learn,
    train,
)
from . import metrics

__all__ = [
    "Model",
    "Inspection",
    "train",
    "learn",
    "Progress",
    "IufError",
    "ModelError",
    "WeightsError",
    "ImageError",
    "metrics",
    "PRO_MAX_FPR",
    "__version__",
]
