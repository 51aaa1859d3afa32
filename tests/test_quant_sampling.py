"""One float-model run per calibration sample for every statistic a quantizer gathers: the shared run gives each
consumer exactly what a run of its own gives, and quantize_int8 runs the float model once per sample."""

from __future__ import annotations

import numpy as np
from onnx import helper

from compiler.ir.interpreter import Interpreter
from passes.base import PassContext
from passes.quant.bias_correction import ChannelMeans, bias_sites, float_channel_means
from passes.quant.calibration import Observation, observe
from passes.quant.conv_gptq import LayerHessians, layer_hessians
from passes.quant.layers import find_layers
from passes.quant.sampling import run_samples
from passes.quantize_int8 import QuantizeInt8Pass
from tests.helpers import make_model, tensor, to_ir


def _convnet():
    """x -> depthwise conv -> Relu -> 1x1 conv -> flatten -> MatMul (+ bias): conv and matmul layers, a graph input
    read by a layer."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "wd", "bd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wp", "bp"], ["p"], name="pw"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wm"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "bm"], ["y"], name="fc_bias"),
    ]
    inits = [
        ("wd", rng.standard_normal((8, 1, 3, 3)).astype(np.float32)), ("bd", rng.standard_normal(8).astype(np.float32)),
        ("wp", rng.standard_normal((4, 8, 1, 1)).astype(np.float32)), ("bp", rng.standard_normal(4).astype(np.float32)),
        ("wm", rng.standard_normal((4 * 36, 5)).astype(np.float32)), ("bm", rng.standard_normal(5).astype(np.float32)),
    ]  # fmt: skip
    return to_ir(make_model(nodes, [tensor("x", [1, 8, 6, 6])], [tensor("y", [1, 5])], inits))


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    return [{"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)} for _ in range(n)]


def test_one_shared_run_gives_every_consumer_its_own_runs_result() -> None:
    model, feeds = _convnet(), _feeds(5)
    layers = find_layers(model)
    assert {la.op_type for la in layers} == {"Conv", "MatMul"}
    names = ["x", "r", "f"]
    sites = bias_sites(layers)
    alone = observe(model, names, feeds), layer_hessians(model, layers, feeds), float_channel_means(model, sites, feeds)
    observation, hessians, means = Observation(model, names), LayerHessians(layers), ChannelMeans(sites)
    run_samples(model, feeds, [observation, hessians, means])
    for name in names:
        assert observation.observers[name].compute_range("minmax") == alone[0][name].compute_range("minmax")
        np.testing.assert_array_equal(observation.observers[name].pos, alone[0][name].pos)
    assert set(hessians.hessians) == {la.name for la in layers} == set(alone[1])
    for name, h in hessians.hessians.items():
        np.testing.assert_array_equal(h, alone[1][name])
    assert set(means.means) == set(sites) == set(alone[2])
    for name, m in means.means.items():
        np.testing.assert_array_equal(m, alone[2][name])


def test_quantize_int8_runs_the_float_model_once_per_sample(monkeypatch) -> None:
    """With GPTQ and bias correction, the pass's float-model statistics take one run per calibration sample (the
    diagnosis and the bias correction's walk of the quantized model are not float-model runs)."""
    model, feeds = _convnet(), _feeds(6)
    runs: list[int] = []
    original = Interpreter.run

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.graph is model.graph:
            runs.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Interpreter, "run", counting)
    options = {"weight_rounding": "gptq", "bias_correction": True, "bias_correction_min_positions": 16}
    options.update(cost_check=False, min_weight_elements=1)
    ctx = PassContext(options={"quantize_int8": options}, calibration=feeds, target="reference")
    QuantizeInt8Pass(ctx)(model)
    records = {r.node: r for r in ctx.layers}
    assert "GPTQ" in records["pw"].action and "bias corrected" in records["pw"].note, records["pw"]
    assert len(runs) == len(feeds)
