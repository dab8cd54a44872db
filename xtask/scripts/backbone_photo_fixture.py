"""Makes crates/iuf-backbone/tests/fixtures/photos_lite0.safetensors: real photos shipped with
scikit-image, resized to 224x224 (PIL bilinear, which antialiases when shrinking), kept as uint8
[N, 224, 224, 3], plus the ImageNet logits that PyTorch computes for them with EfficientNet-Lite0
and the weights in ../shared/weights (normalised with the ImageNet mean/std).

    pip install torch scikit-image safetensors pillow
    python3 xtask/scripts/backbone_photo_fixture.py [--weights PATH] [--out PATH]
"""

import argparse
import json
import os
import sys

import numpy as np
import skimage.data
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from backbone_torch_model import efficientnet, load_pth  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PHOTOS = ["chelsea", "coffee"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=os.path.join(
        ROOT, "..", "shared", "weights", "efficientnet-lite0", "efficientnet-lite0-57934424.pth"))
    ap.add_argument("--out", default=os.path.join(
        ROOT, "crates", "iuf-backbone", "tests", "fixtures", "photos_lite0.safetensors"))
    args = ap.parse_args()

    images = np.stack([
        np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
                   .resize((224, 224), Image.BILINEAR))
        for name in PHOTOS])
    u8 = torch.from_numpy(images)
    x = (u8.permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD

    net = efficientnet("lite0")
    net.load_state_dict(load_pth(args.weights))
    with torch.no_grad():
        logits = net(x)
    top5 = logits.topk(5, dim=1).indices.tolist()
    print({name: t for name, t in zip(PHOTOS, top5)})
    meta = {"photos": json.dumps(PHOTOS), "top5": json.dumps(top5),
            "source": "skimage.data photos; logits of xtask/scripts/backbone_torch_model.py, "
                      "torch " + torch.__version__}
    save_file({"image_u8": u8.contiguous(), "logits": logits.contiguous()}, args.out, metadata=meta)


if __name__ == "__main__":
    main()
