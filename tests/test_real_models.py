"""The shipped real models end to end: import, every pass checked against the reference interpreter,
TVM x86 build, ONNX export — all matching torch fp32 — and accuracy on real data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import compiler
import models
from tests.helpers import ort_run

pytestmark = pytest.mark.models

# Eval subsets small enough for CI; the metric of the compiled model must equal torch's.
EVAL_LIMIT = {"fmnist_cnn": 300, "efficientnet_lite0": 40, "minilm": 20}


@pytest.fixture(scope="module", params=["fmnist_cnn", "efficientnet_lite0", "minilm"])
def compiled(request):
    spec = models.get(request.param)
    # debug=True: the verifier and a numerics check against the reference interpreter run after every pass.
    cm = compiler.compile(spec.module, spec.example_inputs, target="x86", debug=True, measure=False)
    return spec, cm


def _torch_out(spec):
    import torch

    with torch.no_grad():
        return spec.module(*spec.example_inputs).numpy()


def test_x86_matches_torch(compiled):
    spec, cm = compiled
    expected = _torch_out(spec)
    got = cm(*[t.numpy() for t in spec.example_inputs])
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert cm.report.max_abs_error is not None and cm.report.max_abs_error <= 1e-4
    assert cm.report.passes_applied, "the default pipeline changed nothing"


def test_exported_onnx_matches_torch(compiled, tmp_path):
    spec, cm = compiled
    path = cm.export_onnx(tmp_path / f"{spec.name}.opt.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    feeds = {i.name: t.numpy() for i, t in zip(proto.graph.input, spec.example_inputs)}
    (got,) = ort_run(proto, feeds)
    assert np.max(np.abs(got - _torch_out(spec))) <= 1e-4


def test_accuracy_on_real_data_is_unchanged(compiled):
    spec, cm = compiled
    limit = EVAL_LIMIT[spec.name]
    ours = spec.evaluate(cm, limit=limit)
    theirs = spec.evaluate(models.torch_predict(spec.module), limit=limit)
    assert ours.keys() == theirs.keys()
    for metric, value in theirs.items():
        # counts and accuracies are the same; a distance to fp32 moves with float rounding (both are ~1e-6)
        tolerance = 1e-5 if metric == "logit_err" else 1e-9
        assert ours[metric] == pytest.approx(value, abs=tolerance), metric
