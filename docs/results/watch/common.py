"""What the measurement scripts of this folder share: where the checkout, ../shared, the `iuf`
program and the weights are, and the two-product model they measure (trained on first use).

Run the scripts from anywhere: the checkout holds this file; ../shared sits beside the checkout.
IUF_BIN picks the binary (default target/debug/iuf; the README's numbers were taken with it),
WORK the scratch folder (default target/watch-bench; the model is trained there on first use).
"""
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"
IUF = os.environ.get("IUF_BIN", str(REPO / "target/debug/iuf"))
W = str(SHARED / "weights/efficientnet-lite0/efficientnet-lite0-57934424.pth")


def workdir_with_model():
    """The scratch folder, with `m.safetensors` (bottle and tire, the default method) in it."""
    base = os.environ.get("WORK", "target/watch-bench")
    os.makedirs(base, exist_ok=True)
    if not os.path.exists(f"{base}/m.safetensors"):
        subprocess.run([IUF, "--weights", W, "--cache-dir", f"{base}/cache", "--threads", "2",
                        "train", "--data", str(SHARED / "datasets/mvtec-mini"),
                        "--classes", "bottle,tire", "--out", f"{base}/m.safetensors"], check=True)
    return base
