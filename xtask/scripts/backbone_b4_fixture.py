"""Makes a B-variant (squeeze-excitation, swish) parity check for crates/iuf-backbone, too large to
commit: EfficientNet-B4 with random weights and random BatchNorm statistics, saved in PyTorch's
legacy format under the lukemelas names (like the paper's efficientnet-b4-6ed6700e.pth), and its
block outputs, logits and feature_align on a random 1x3x128x128 input.

    python3 xtask/scripts/backbone_b4_fixture.py --out /tmp/b4
    IUF_B4_FIXTURE_DIR=/tmp/b4 cargo test -p iuf-backbone --test it -- --ignored b4
"""

import argparse
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from backbone_torch_model import efficientnet, feature_align  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", default="b4")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    net = efficientnet(args.variant)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), os.path.join(args.out, f"efficientnet-{args.variant}-random.pth"),
               _use_new_zipfile_serialization=False)
    x = torch.randn(1, 3, 128, 128)
    out_blocks = {"b4": [1, 5, 9, 21]}.get(args.variant)
    tensors = {"input.tensor": x}
    with torch.no_grad():
        for i, b in enumerate(net.forward_blocks(x)):
            tensors[f"output.block.{i}"] = b
        tensors["output.logits"] = net(x)
        if out_blocks:
            tensors["output.aligned"] = feature_align(net, x, out_blocks)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(args.out, f"efficientnet_{args.variant}_random_features.safetensors"))
    print(f"wrote {args.out}: {len(net._blocks)} blocks")


if __name__ == "__main__":
    main()
