"""How far is the shared PyTorch fixture (float32) from the exact result? Recomputes
../shared/fixtures/efficientnet_lite0_features.safetensors in float64 with our plain-PyTorch
EfficientNet-Lite0 and prints, per block, the fixture's own rounding error. It bounds how closely
any float32 implementation with another summation order can match the fixture (the tolerance of
crates/iuf-backbone/tests/it/parity.rs).

    python3 xtask/scripts/backbone_fixture_rounding.py [--ours OUT.safetensors]

With --ours (block.{i} and logits tensors from our Rust backbone) it also prints our error.
"""

import argparse
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from backbone_torch_model import efficientnet, feature_align, load_pth  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    args = ap.parse_args()
    fx = load_file(os.path.join(SHARED, "fixtures", "efficientnet_lite0_features.safetensors"))
    ours = load_file(args.ours) if args.ours else None
    net = efficientnet("lite0")
    net.load_state_dict(load_pth(os.path.join(SHARED, "weights", "efficientnet-lite0",
                                              "efficientnet-lite0-57934424.pth")))
    net = net.double()
    x = fx["input.tensor"].double()
    with torch.no_grad():
        exact = net.forward_blocks(x)
        exact_aligned = feature_align(net, x, [0, 2, 4, 10])
    for i, e in enumerate(exact):
        line = f"block {i:2}: fixture - float64 max {(fx[f'output.block.{i}'].double() - e).abs().max():.2e}"
        if ours is not None:
            line += f"   ours - float64 max {(ours[f'block.{i}'].double() - e).abs().max():.2e}"
        print(line)
    print(f"aligned : fixture - float64 max {(fx['output.aligned'].double() - exact_aligned).abs().max():.2e}")


if __name__ == "__main__":
    main()
