"""AU-PRO of iuf.metrics against the numpy/scipy reference (tests/pro_reference.py) on 100 maps of
256 x 256 (the maps of tests/test_metrics.py), timed alternately for several rounds; prints each
round and the medians. Not a test: timings on a shared machine swing, compare within one run.

    target/py-venv/bin/python crates/iuf-py/bench/au_pro.py [ROUNDS]
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import iuf  # noqa: E402
from pro_reference import au_pro as reference_au_pro  # noqa: E402
from test_metrics import maps_and_masks  # noqa: E402


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    maps, masks = maps_and_masks()
    t_ref, t_iuf = [], []
    for r in range(rounds):
        start = time.perf_counter()
        expected = reference_au_pro(maps, masks)
        t_ref.append(time.perf_counter() - start)
        start = time.perf_counter()
        got = iuf.metrics.au_pro(maps, masks)
        t_iuf.append(time.perf_counter() - start)
        print(
            f"round {r}: reference {t_ref[-1] * 1e3:7.1f} ms, iuf {t_iuf[-1] * 1e3:6.1f} ms, "
            f"ratio {t_ref[-1] / t_iuf[-1]:5.1f}x, |difference| {abs(got - expected):.1e}"
        )
    ratios = sorted(a / b for a, b in zip(t_ref, t_iuf))
    print(
        f"median: reference {statistics.median(t_ref) * 1e3:.1f} ms, iuf "
        f"{statistics.median(t_iuf) * 1e3:.1f} ms (range {min(t_iuf) * 1e3:.1f}-"
        f"{max(t_iuf) * 1e3:.1f}); ratio median {statistics.median(ratios):.1f}x, range "
        f"{ratios[0]:.1f}-{ratios[-1]:.1f}x"
    )


if __name__ == "__main__":
    main()
