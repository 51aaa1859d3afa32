"""A small Fashion-MNIST CNN trained in-repo (``tools/train_fmnist.py``), weights in safetensors.

Data: Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``, idx format).
Input float32 [1,1,28,28] normalized with the training-set mean/std; output logits [1,10].
Task: accuracy on the 10k test set. Calibration: the first training images.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.spec import ModelSpec, Predict, check_limit, output_array

DATA_DIR = Path(os.environ.get("CACC_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
WEIGHTS = Path(__file__).resolve().parent / "weights" / "fmnist_cnn.safetensors"
MEAN = 0.2860
STD = 0.3530
NUM_CALIBRATION = 64
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


class FashionCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool x2, then Linear-ReLU-Linear (about 32k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 24, 3, padding=1),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(24 * 7 * 7, 24), nn.ReLU(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N,10] for normalized images [N,1,28,28]."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out


def _read_idx(path: Path) -> np.ndarray:
    """Parse one gzipped idx file (big-endian header: magic, dims) into a uint8 array."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file {path} not found; install the Debian package `dataset-fashion-mnist` "
            "(apt-get install dataset-fashion-mnist) or set CACC_FMNIST_DIR"
        )
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} bytes of data, found {data.size}")
    return data.reshape(dims)


@functools.lru_cache(maxsize=2)
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,28,28] and labels int64 [N] of ``split`` ('train' or 'test'), cached."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = _read_idx(DATA_DIR / _FILES[split, "images"])
    labels = _read_idx(DATA_DIR / _FILES[split, "labels"]).astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 images [N,28,28] -> normalized float32 [N,1,28,28]."""
    x = images.astype(np.float32)[:, None] / np.float32(255.0)
    return (x - np.float32(MEAN)) / np.float32(STD)


@functools.lru_cache(maxsize=1)
def _normalized_test() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_split("test")
    x = normalize(images)
    x.setflags(write=False)
    return x, labels


def build_module() -> FashionCNN:
    """The trained CNN (fp32, eval mode) with weights from ``models/weights/fmnist_cnn.safetensors``."""
    from safetensors.torch import load_file

    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"{WEIGHTS} missing; run `python tools/train_fmnist.py` to train it")
    model = FashionCNN()
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.eval()


def evaluate(predict: Predict, limit: int | None = None) -> dict[str, float]:
    """Top-1 accuracy of ``predict`` on the first ``limit`` (default all 10,000) test images."""
    x, labels = _normalized_test()
    n = check_limit(limit, len(labels))
    correct = 0
    for i in range(n):
        logits = output_array(predict(x[i : i + 1]))
        correct += int(np.argmax(logits.reshape(-1)) == labels[i])
    return {"accuracy": correct / n, "n": float(n)}


def load() -> ModelSpec:
    """Build the Fashion-MNIST CNN spec."""
    module = build_module()
    train_images, _ = load_split("train")
    calib = normalize(train_images[:NUM_CALIBRATION])
    x0 = torch.from_numpy(_normalized_test()[0][:1].copy())
    return ModelSpec(
        name="fmnist_cnn",
        module=module,
        example_inputs=(x0,),
        input_names=("image",),
        calibration_data=[(calib[i : i + 1].copy(),) for i in range(NUM_CALIBRATION)],
        evaluate=evaluate,
        description="small CNN on Fashion-MNIST (10 classes), trained by tools/train_fmnist.py",
    )
