"""Fixtures of the Python tests: a small real model learned once per session with the `iuf`
program (the `memory` method on 30 good images each of mvtec-mini's bottle and pill, with the
shared Lite0 weights: seconds on 2 cores), and the real test images it inspects.

Where things are (run-tests.sh sets them; the defaults fit a checkout with ../shared beside it):
IUF_BIN (the `iuf` program, default target/debug/iuf), IUF_SHARED (default ../shared).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("IUF_SHARED", REPO.parent / "shared"))
IUF_BIN = Path(os.environ.get("IUF_BIN", REPO / "target" / "debug" / "iuf"))
LITE0 = SHARED / "weights" / "efficientnet-lite0" / "efficientnet-lite0-57934424.pth"
MVTEC_MINI = SHARED / "datasets" / "mvtec-mini"
CLASSES = ["bottle", "pill"]
TRAIN_IMAGES = 30


def iuf(*args, check=True):
    """Runs the `iuf` program; returns the completed process (stdout and stderr as text)."""
    p = subprocess.run(
        [str(IUF_BIN), *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"iuf {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def lite0():
    if not LITE0.is_file():
        pytest.fail(f"no Lite0 weights at {LITE0}; set IUF_SHARED to the shared folder")
    return LITE0


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, lite0):
    """A `memory` model of bottle and pill learned by `iuf train`."""
    if not IUF_BIN.is_file():
        pytest.fail(f"no iuf program at {IUF_BIN}; build it with `cargo build -p iuf-cli`")
    root = tmp_path_factory.mktemp("model")
    data = root / "data"
    for c in CLASSES:
        src = MVTEC_MINI / c
        good = data / c / "train" / "good"
        good.mkdir(parents=True)
        for f in sorted((src / "train" / "good").iterdir())[:TRAIN_IMAGES]:
            (good / f.name).symlink_to(f)
        for sub in ["test", "ground_truth"]:
            (data / c / sub).symlink_to(src / sub)
    model = root / "model.safetensors"
    iuf(
        "--weights", lite0, "--no-feature-cache", "train",
        "--data", data, "--classes", ",".join(CLASSES), "--method", "memory",
        "--preset", "cpu", "--out", model,
    )
    return model


@pytest.fixture(scope="session")
def images():
    """Two images of each test folder of each object (real PNGs)."""
    out = []
    for c in CLASSES:
        for kind in sorted((MVTEC_MINI / c / "test").iterdir()):
            out.extend(sorted(kind.iterdir())[:2])
    return out


@pytest.fixture(scope="session")
def model(model_path, lite0):
    import iuf

    return iuf.Model.load(model_path, weights=lite0)


def predict_json(model_path, weights, paths, out, *extra):
    """`iuf predict --json` on `paths`: its lines, by path."""
    p = iuf(
        "--json", "--weights", weights, "--no-feature-cache", "predict",
        "--model", model_path, "--out", out, *extra, *paths,
    )
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    return {str(Path(o["path"])): o for o in lines}
