"""Makes the small checkpoint fixtures of crates/iuf-backbone/tests/fixtures/pth/: the same training
checkpoint saved in PyTorch's legacy format and in the zip format, a whole pickled nn.Module, and
`expected.safetensors` with the tensors our reader must return (names without `module.`, bool as
uint8, int8 widened to int16, every tensor contiguous).

    pip install torch safetensors
    python3 xtask/scripts/backbone_pth_fixtures.py
"""

import collections
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "iuf-backbone", "tests", "fixtures", "pth")


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, generator=g)
    sd = collections.OrderedDict()
    sd["module.a"] = a
    sd["module.row"] = a[1]                       # a view: storage offset 3, shares a's storage
    sd["module.transposed"] = torch.randn(3, 4, generator=g).t()  # non-contiguous strides
    sd["module.bn.num_batches_tracked"] = torch.tensor(12345678901, dtype=torch.int64)
    sd["module.half"] = torch.randn(4, generator=g).half()
    sd["module.bfloat"] = torch.randn(2, generator=g).bfloat16()
    sd["module.double"] = torch.randn(2, 2, generator=g).double()
    sd["module.mask"] = torch.tensor([True, False, True])
    sd["module.int32"] = torch.tensor([-5, 0, 7], dtype=torch.int32)
    sd["module.int8"] = torch.tensor([-128, -1, 127], dtype=torch.int8)
    sd["module.empty"] = torch.zeros(0, 3)
    sd["module.param"] = torch.nn.Parameter(torch.randn(2, generator=g))
    checkpoint = {"epoch": 7, "arch": "tiny", "best_metric": 0.5, "state_dict": sd,
                  "optimizer": {"state": {0: {"step": 3}}, "param_groups": [{"lr": 0.1}]}}
    torch.save(checkpoint, os.path.join(OUT, "checkpoint_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(checkpoint, os.path.join(OUT, "checkpoint_zip.pth.tar"))

    expected = {}
    for k, v in sd.items():
        v = v.detach().contiguous().clone()
        if v.dtype == torch.bool:
            v = v.to(torch.uint8)
        if v.dtype == torch.int8:
            v = v.to(torch.int16)
        expected[k.removeprefix("module.")] = v
    save_file(expected, os.path.join(OUT, "expected.safetensors"))

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.BatchNorm1d(3))
    torch.save(module, os.path.join(OUT, "module_legacy.pth"), _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              os.path.join(OUT, "module_expected.safetensors"))


if __name__ == "__main__":
    main()
