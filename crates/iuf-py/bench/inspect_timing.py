"""Python `Model.inspect` of a 256 x 256 array against the Rust scoring path of the same image in
the same process (`Model._rust_inspect_seconds`: iuf_inspect's Inspector, the map at the image's
size, no Python values), and `inspect_batch` of 8 image files against `iuf predict` on a folder of
the same files. Alternating rounds, medians and ranges. Not a test: timings on a shared machine
swing; compare within one run.

    target/py-venv/bin/python crates/iuf-py/bench/inspect_timing.py MODEL WEIGHTS IUF_BIN [ROUNDS]

MODEL: a model file that knows bottle (e.g. from README.md's Python example), WEIGHTS its Lite0
weights, IUF_BIN the `iuf` program built alike (debug with debug, release with release).
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import iuf

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
BOTTLE = SHARED / "datasets" / "mvtec-mini" / "bottle" / "test"


def ms(xs):
    return f"{statistics.median(xs) * 1e3:.2f} ms (range {min(xs) * 1e3:.2f}-{max(xs) * 1e3:.2f})"


def main():
    model_path, weights, iuf_bin = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    model = iuf.Model.load(model_path, weights=weights)
    files = sorted(BOTTLE.glob("*/*.png"))[:8]
    small = np.asarray(Image.open(files[0]).convert("RGB").resize((256, 256), Image.BILINEAR))

    # 1. One 256 x 256 array: Python inspect against the Rust path, alternately.
    # Wall time per call, and the process's CPU time per call over 5 calls (all threads; far
    # less moved by other processes on a shared machine than the wall time).
    model.inspect(small)
    py_t, rust_t, py_cpu, rust_cpu = [], [], [], []
    for _ in range(rounds):
        cpu = time.process_time()
        for _ in range(5):
            start = time.perf_counter()
            model.inspect(small)
            py_t.append(time.perf_counter() - start)
        py_cpu.append((time.process_time() - cpu) / 5)
        cpu = time.process_time()
        rust_t.extend(model._rust_inspect_seconds(small, 5))
        rust_cpu.append((time.process_time() - cpu) / 5)
    print(f"inspect(256x256 array), wall: Python {ms(py_t)}; Rust path {ms(rust_t)}; "
          f"difference of the medians {(statistics.median(py_t) - statistics.median(rust_t)) * 1e3:.2f} ms")
    print(f"inspect(256x256 array), CPU: Python {ms(py_cpu)}; Rust path {ms(rust_cpu)}; "
          f"difference of the medians {(statistics.median(py_cpu) - statistics.median(rust_cpu)) * 1e3:.2f} ms")

    # 2. 8 image files: inspect_batch against `iuf predict` on a folder of the same files.
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, f in enumerate(files):
            (folder / f"{i}.png").write_bytes(f.read_bytes())
        paths = sorted(folder.iterdir())
        model.inspect_batch(paths)
        batch_t, predict_t, predict_reported = [], [], []
        for r in range(rounds):
            start = time.perf_counter()
            model.inspect_batch(paths)
            batch_t.append(time.perf_counter() - start)
            out = Path(tmp) / f"out{r}"
            start = time.perf_counter()
            p = subprocess.run(
                [iuf_bin, "--weights", weights, "--no-feature-cache", "predict", "--model",
                 model_path, str(folder), "--out", str(out)],
                capture_output=True, text=True, check=True,
            )
            predict_t.append(time.perf_counter() - start)
            line = [l for l in (p.stdout + p.stderr).splitlines() if "per image:" in l]
            if line:
                predict_reported.append(float(line[-1].split("per image:")[1].split("ms")[0]) / 1e3)
        print(f"inspect_batch(8 files): {ms([t / 8 for t in batch_t])} per image")
        print(f"iuf predict on the folder: {ms([t / 8 for t in predict_t])} per image, whole "
              f"command (start, model load, heatmap PNGs); its own 'per image' line "
              f"{ms(predict_reported) if predict_reported else 'n/a'}")
        print(f"inspect_batch throughput / predict's reported: "
              f"{statistics.median(predict_reported) / statistics.median([t / 8 for t in batch_t]):.2f}x"
              if predict_reported else "")


if __name__ == "__main__":
    main()
