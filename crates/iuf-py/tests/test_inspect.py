"""iuf.Model against `iuf predict --json` and `iuf info --json` on a real model and real images,
the three image inputs (path, bytes, array) against each other, batches, threads, and errors."""

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import iuf
from conftest import iuf as run_iuf, predict_json


def bits(x):
    """The float32 bit pattern of x (a float32 value, or the shortest decimal of one)."""
    return int(np.float32(x).view(np.uint32))


def same_answer(r, line):
    """`r` (an Inspection) answers what `line` (a line of predict --json) says, bit for bit."""
    assert bits(r.score) == bits(line["score"]), (r, line)
    assert r.object == line["object"]
    assert bits(r.object_probability) == bits(line["object_probability"])
    assert r.decision == line.get("decision")
    if "threshold" in line:
        assert bits(r.threshold) == bits(line["threshold"])
        assert r.quantile == line["quantile"]
    else:
        assert r.threshold is None and r.quantile is None


def test_load_and_objects(model, model_path):
    assert model.objects == ["bottle", "pill"]
    assert Path(model.path) == Path(model_path)
    assert model.quantile == 0.99
    assert "bottle" in repr(model)


def test_info_is_what_iuf_info_json_prints(model, model_path):
    cli = json.loads(run_iuf("--json", "info", "--model", model_path).stdout)
    info = model.info()
    assert info == cli
    assert info["method"] == "memory" and info["class_names"][:2] == ["bottle", "pill"]


def test_inspect_answers_what_predict_json_prints(model, model_path, lite0, images, tmp_path):
    lines = predict_json(model_path, lite0, images, tmp_path / "pred")
    assert len(lines) == len(images)
    decisions = set()
    for p in images:
        r = model.inspect(p)
        same_answer(r, lines[str(p)])
        decisions.add(r.decision)
        h, w = np.asarray(Image.open(p)).shape[:2]
        assert r.map.shape == (h, w) and r.map.dtype == np.float32
        assert np.isfinite(r.map).all()
    # Real defects and good images: both verdicts occur, so a constant answer would fail.
    assert decisions == {"ok", "defect"}


def test_batch_answers_what_predict_json_prints(model, model_path, lite0, images, tmp_path):
    lines = predict_json(model_path, lite0, images, tmp_path / "pred")
    batch = model.inspect_batch(images)
    assert len(batch) == len(images) > 8  # more than one of predict's batches of 8
    for p, r in zip(images, batch):
        same_answer(r, lines[str(p)])
        single = model.inspect(p)
        assert np.array_equal(r.map, single.map)


def test_object_answers_what_predict_object_prints(model, model_path, lite0, images, tmp_path):
    bottles = [p for p in images if "/bottle/" in str(p)][:3]
    lines = predict_json(model_path, lite0, bottles, tmp_path / "pred", "--object", "pill")
    for p in bottles:
        r = model.inspect(p, object="pill")
        assert r.object == "pill"
        same_answer(r, lines[str(p)])


def test_path_bytes_and_array_agree(model, images, tmp_path):
    p = images[-1]
    from_path = model.inspect(p)
    from_pathlike = model.inspect(Path(p))
    from_str = model.inspect(str(p))
    from_bytes = model.inspect(Path(p).read_bytes())
    from_bytearray = model.inspect(bytearray(Path(p).read_bytes()))
    pixels = np.asarray(Image.open(p).convert("RGB"))
    from_array = model.inspect(pixels)
    # A strided view (BGR reversed twice: negative strides) of the same pixels.
    from_view = model.inspect(pixels[:, :, ::-1][:, :, ::-1])
    for r in [from_pathlike, from_str, from_bytes, from_bytearray, from_array, from_view]:
        assert bits(r.score) == bits(from_path.score)
        assert r.object == from_path.object and r.decision == from_path.decision
        assert np.array_equal(r.map, from_path.map)
    # A crop is another image: its map has the crop's size.
    crop = model.inspect(pixels[10:110, 20:220])
    assert crop.map.shape == (100, 200)


def test_threads_share_one_model_and_release_the_gil(model, images):
    subset = images[:4]
    expected = [bits(model.inspect(p).score) for p in subset]
    results = {}

    def work(k):
        results[k] = [bits(model.inspect(p).score) for p in subset]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == expected for k in range(3))

    # While a batch is scored, another Python thread runs: the GIL is released. The counter's
    # pace alone is measured first; holding the GIL through the call would let it run only in
    # the switch intervals (5 ms) at the call's ends, a few percent of a second-long call.
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    counter = threading.Thread(target=count)
    counter.start()
    start, before = time.perf_counter(), ticks[0]
    time.sleep(0.2)
    pace = (ticks[0] - before) / (time.perf_counter() - start)
    start, before = time.perf_counter(), ticks[0]
    model.inspect_batch(images[:16])
    elapsed = time.perf_counter() - start
    during = ticks[0] - before
    stop.set()
    counter.join()
    share = during / (pace * elapsed)
    print(f"\ncounter thread ran at {share:.0%} of its pace during a {elapsed:.2f} s inspect_batch")
    assert share > 0.1


# ---- errors: the messages the CLI prints, as exceptions ----------------------------------


def cli_error(*args):
    p = run_iuf(*args, check=False)
    assert p.returncode != 0
    return p.stderr


def test_missing_model_is_file_not_found(lite0, tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        iuf.Model.load(missing, weights=lite0)
    msg = str(e.value)
    assert f"model {missing}: no such file" in msg
    # The CLI's message, naming the flag where Python names the argument.
    cli = cli_error("--weights", lite0, "predict", "--model", missing, "--out", tmp_path / "o", missing)
    assert msg.replace("Model.load's path", "--model") in cli


def test_damaged_model_is_model_error(model_path, lite0, tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(Path(model_path).read_bytes()[:5000])
    with pytest.raises(iuf.ModelError) as e:
        iuf.Model.load(damaged, weights=lite0)
    assert isinstance(e.value, iuf.IufError) and isinstance(e.value, Exception)
    msg = str(e.value)
    assert f"cannot load model {damaged}" in msg
    cli = cli_error("--weights", lite0, "predict", "--model", damaged, "--out", tmp_path / "o", damaged)
    assert msg in cli


def test_image_as_model_is_model_error(images, lite0):
    with pytest.raises(iuf.ModelError, match="PNG"):
        iuf.Model.load(images[0], weights=lite0)


def test_bad_weights(model_path, lite0, tmp_path):
    with pytest.raises(FileNotFoundError, match="Model.load's weights"):
        iuf.Model.load(model_path, weights=tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not weights at all" * 100)
    with pytest.raises(iuf.WeightsError, match="bad.pth"):
        iuf.Model.load(model_path, weights=bad)


def test_wrong_arrays(model):
    with pytest.raises(TypeError, match="uint8"):
        model.inspect(np.zeros((32, 32, 3), dtype=np.float64))
    with pytest.raises(ValueError, match=r"grayscale"):
        model.inspect(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"RGBA"):
        model.inspect(np.zeros((32, 32, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"H x W x 3"):
        model.inspect(np.zeros((0, 32, 3), dtype=np.uint8))


def test_wrong_images(model, images, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.png"):
        model.inspect(tmp_path / "no-such.png")
    with pytest.raises(iuf.ImageError, match="not an image"):
        model.inspect(b"\x00\x01garbage bytes")
    with pytest.raises(iuf.ImageError, match="empty"):
        model.inspect(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(iuf.ImageError, match="notes.png"):
        model.inspect(text)
    with pytest.raises(TypeError, match="expected a path"):
        model.inspect(42)
    with pytest.raises(ValueError, match="object `cable` is not an object model"):
        model.inspect(images[0], object="cable")
    with pytest.raises(FileNotFoundError, match=r"^images\[1\]"):
        model.inspect_batch([images[0], tmp_path / "gone.png"])
    with pytest.raises(TypeError, match="a list of images"):
        model.inspect_batch(str(images[0]))
    assert model.inspect_batch([]) == []
