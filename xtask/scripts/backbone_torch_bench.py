"""The PyTorch peer of crates/iuf-backbone/benches/backbone.rs: EfficientNet-Lite0 blocks 0-10 and
feature_align at 224x224, batch 1 and 8, on 2 threads (torch.set_num_threads(2)), timed as the
median of N runs after warm-up, with our plain-PyTorch model (backbone_torch_model.py) and the
shared Lite0 weights. With --criterion it also reads the Rust results that `cargo bench -p
iuf-backbone --bench backbone` left under target/criterion and prints both side by side.

    pip install torch
    cargo bench -p iuf-backbone --bench backbone -- lite0_224
    python3 xtask/scripts/backbone_torch_bench.py --criterion target/criterion
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from backbone_torch_model import efficientnet, feature_align, load_pth  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WEIGHTS = os.path.join(ROOT, "..", "shared", "weights", "efficientnet-lite0", "efficientnet-lite0-57934424.pth")


def median_seconds(fn, runs, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def criterion_median(root, group, bench, batch):
    """Median of criterion's last run (nanoseconds -> seconds), or None."""
    path = os.path.join(root, group, bench, str(batch), "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"] / 1e9
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=WEIGHTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed runs at batch 1 (batch 8: a third)")
    ap.add_argument("--criterion", help="target/criterion folder with the Rust results")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    net = efficientnet("lite0")
    net.load_state_dict(load_pth(args.weights))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    with torch.inference_mode():
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            runs = args.runs if batch == 1 else max(5, args.runs // 3)
            for bench, fn in (("blocks_0_10", lambda: net.forward_blocks(x, last=10)),
                              ("feature_align", lambda: feature_align(net, x, [0, 2, 4, 10]))):
                med, best = median_seconds(fn, runs)
                ours = criterion_median(args.criterion, "lite0_224", bench, batch) if args.criterion else None
                rows.append((bench, batch, med, best, ours))
    print(f"{'benchmark':<16}{'batch':>6}{'torch median':>15}{'torch img/s':>13}"
          f"{'ours median':>14}{'ours img/s':>12}{'speed-up':>10}")
    for bench, batch, med, best, ours in rows:
        line = f"{bench:<16}{batch:>6}{med * 1e3:>12.1f} ms{batch / med:>13.1f}"
        if ours is not None:
            line += f"{ours * 1e3:>11.1f} ms{batch / ours:>12.1f}{med / ours:>9.2f}x"
        print(line)


if __name__ == "__main__":
    main()
