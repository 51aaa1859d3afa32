"""TVM backend on the shipped real models, exported by torch, against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from backends.tvm import build, host_target
from compiler.ir import infer_shapes


@pytest.mark.models
@pytest.mark.parametrize("name", ["fmnist_cnn", "efficientnet_lite0", "minilm"])
def test_full_model_matches_onnxruntime(name: str, real_onnx) -> None:
    path, feeds = real_onnx(name)
    model = infer_shapes(ir.load(path))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    expected = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = build(model, host_target(2), num_threads=2).run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert float(np.abs(g - e).max()) <= 1e-4
