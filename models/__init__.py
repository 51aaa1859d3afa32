"""Real models with real evaluation tasks, all loading offline.

``models.get(name)`` builds a :class:`ModelSpec`; ``models.available()`` lists the names. Each model lives in its
own module (``models/minilm.py``, ``models/efficientnet_lite0.py``, ``models/fmnist_cnn.py``) exposing ``load()``.
"""

from __future__ import annotations

import importlib

from models.spec import ModelSpec, Predict, output_array, torch_predict

__all__ = ["ModelSpec", "Predict", "available", "get", "output_array", "torch_predict"]

# name -> module under models/ that defines ``load() -> ModelSpec``.
_REGISTRY: dict[str, str] = {
    "minilm": "models.minilm",
    "efficientnet_lite0": "models.efficientnet_lite0",
    "fmnist_cnn": "models.fmnist_cnn",
}


def available() -> list[str]:
    """Names accepted by :func:`get`, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> ModelSpec:
    """Build the named model (fp32, eval mode) with its calibration data and evaluation task.

    Raises:
        ValueError: ``name`` is not a known model (the message lists the known names).
        FileNotFoundError / ModuleNotFoundError: the model's data or package is not installed.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    module = importlib.import_module(_REGISTRY[name])
    spec: ModelSpec = module.load()
    return spec
