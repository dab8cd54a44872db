"""Plain-PyTorch EfficientNet (Lite0-2, B0-B7) with the lukemelas parameter names, written for this
project as the PyTorch peer of crates/iuf-backbone: same architecture table, TF "SAME" padding,
BatchNorm eps 1e-3, evaluation mode. Used by the parity-fixture and benchmark scripts beside it.

    from backbone_torch_model import efficientnet, load_pth
    net = efficientnet("lite0"); net.load_state_dict(load_pth(path)); net.eval()
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# (width, depth, resolution) of the compound scaling table.
COEFFICIENTS = {
    "lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260),
    "b0": (1.0, 1.0, 224), "b1": (1.0, 1.1, 240), "b2": (1.1, 1.2, 260), "b3": (1.2, 1.4, 300),
    "b4": (1.4, 1.8, 380), "b5": (1.6, 2.2, 456), "b6": (1.8, 2.6, 528), "b7": (2.0, 3.1, 600),
}
# B0 stages: repeats, kernel, stride, expand ratio, in, out.
STAGES = [
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3


def round_filters(filters, width):
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (odd pixel at the end)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        s = self.stride[0]
        oh, ow = math.ceil(ih / s), math.ceil(iw / s)
        ph = max((oh - 1) * s + kh - ih, 0)
        pw = max((ow - 1) * s + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, kernel, stride, se, act):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self.se = se
        if se:
            squeezed = max(1, int(cin * 0.25))
            self._se_reduce = SameConv2d(mid, squeezed, 1)
            self._se_expand = SameConv2d(squeezed, mid, 1)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.act = act
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self.act(self._bn1(self._depthwise_conv(h)))
        if self.se:
            s = F.adaptive_avg_pool2d(h, 1)
            s = self._se_expand(F.silu(self._se_reduce(s)))
            h = torch.sigmoid(s) * h
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNet(nn.Module):
    def __init__(self, variant):
        super().__init__()
        width, depth, _ = COEFFICIENTS[variant]
        lite = variant.startswith("lite")
        self.act = nn.ReLU6() if lite else nn.SiLU()
        stem = 32 if lite else round_filters(32, width)
        head = 1280 if lite else round_filters(1280, width)
        self._conv_stem = SameConv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = bn(stem)
        blocks = []
        for i, (rep, k, s, e, cin, cout) in enumerate(STAGES):
            fixed = lite and i in (0, len(STAGES) - 1)
            rep = rep if fixed else int(math.ceil(depth * rep))
            cin = stem if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            for r in range(rep):
                blocks.append(MBConv(cin if r == 0 else cout, cout, e, k, s if r == 0 else 1, not lite, self.act))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cout, head, 1, bias=False)
        self._bn1 = bn(head)
        self._fc = nn.Linear(head, 1000)

    def forward_blocks(self, x, last=None):
        """Outputs of blocks 0..=last (all blocks by default)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        outs = []
        for i, block in enumerate(self._blocks):
            if last is not None and i > last:
                break
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x):
        x = self.forward_blocks(x)[-1]
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def efficientnet(variant):
    return EfficientNet(variant).eval()


def load_pth(path):
    sd = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" in sd:
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def feature_align(net, images, out_blocks):
    """Section 2 neck: selected block outputs resized to the stride-16 grid and concatenated."""
    outs = net.forward_blocks(images, last=max(out_blocks))
    h, w = math.ceil(images.shape[2] / 16), math.ceil(images.shape[3] / 16)
    return torch.cat([F.interpolate(outs[i], size=(h, w), mode="bilinear", align_corners=True)
                      for i in out_blocks], 1)
