import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REAL_MODELS = ("fmnist_cnn", "efficientnet_lite0", "minilm")


@pytest.fixture(scope="session")
def real_onnx(tmp_path_factory) -> Callable[[str], tuple[Path, dict[str, np.ndarray]]]:
    """``real_onnx(name) -> (path, feeds)``: the shipped model exported once per session by torch's
    ONNX exporter (no cacc code involved), and its real example inputs by graph input name."""
    import torch

    import models

    cache: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}

    def get(name: str) -> tuple[Path, dict[str, np.ndarray]]:
        if name not in cache:
            spec = models.get(name)
            path = tmp_path_factory.mktemp("real") / f"{name}.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(
                    spec.module, spec.example_inputs, dynamo=True, input_names=list(spec.input_names)
                )
            program.save(str(path))
            feeds = {n: t.numpy() for n, t in zip(spec.input_names, spec.example_inputs)}
            cache[name] = (path, feeds)
        return cache[name]

    return get
