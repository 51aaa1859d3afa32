"""TVM backend on the two real exported models (skipped when /tmp/exp does not have them)."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from tests.test_tvm_helpers import infer_shapes  # isort: skip (stubs first)
from backends.tvm import build, host_target  # isort: skip

EXP = pathlib.Path("/tmp/exp")


def _feeds(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "minilm":
        return {
            "ids": rng.integers(0, 30522, (1, 128)).astype(np.int64),
            "mask": np.ones((1, 128), dtype=np.int64),
        }
    return {"inputs": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}


@pytest.mark.parametrize("name", ["minilm", "effnet"])
def test_full_model_matches_onnxruntime(name: str) -> None:
    path = EXP / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    model = infer_shapes(ir.load(path))
    feeds = _feeds(name)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    expected = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = build(model, host_target(2), num_threads=2).run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert float(np.abs(g - e).max()) <= 1e-4
