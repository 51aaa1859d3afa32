"""One reference-interpreter run of a float model per calibration sample, shared by everything a quantizer
measures on it: activation statistics (:mod:`passes.quant.calibration`), input Hessians
(:mod:`passes.quant.hessian`, :mod:`passes.quant.conv_gptq`) and output channel means
(:mod:`passes.quant.bias_correction`) each read some values of every run, and together they need the runs
only once (EfficientNet-Lite0 int8 with GPTQ and bias correction: four runs of the 32 samples became one).

A consumer names the values it reads; :func:`run_samples` hands it each of them, graph inputs first and then in
node order, with the sample they came from, so that every consumer accumulates exactly what a run of its own
would have given it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx_ir as ir

from compiler.ir.interpreter import Interpreter


class SampleConsumer(Protocol):
    """Something that accumulates values of the float model's runs over the calibration samples."""

    def wanted(self) -> Collection[ir.Value]:
        """The values (graph inputs or node outputs) it reads."""
        ...

    def consume(self, value: ir.Value, array: np.ndarray, sample: Mapping[str, np.ndarray]) -> None:
        """Take ``value``'s ``array`` on one ``sample``."""
        ...


def run_samples(
    model: ir.Model,
    feeds: Sequence[Mapping[str, np.ndarray]],
    consumers: Sequence[SampleConsumer],
    *,
    progress: bool | None = False,
    desc: str = "calibrating",
) -> None:
    """Run ``model`` on every sample of ``feeds`` with the reference interpreter, handing each consumer the values
    it wants (module doc). ``progress`` shows a tqdm bar (``None``: only on a terminal)."""
    from tqdm.auto import tqdm

    readers: dict[ir.Value, list[SampleConsumer]] = {}
    for consumer in consumers:
        for value in consumer.wanted():
            readers.setdefault(value, []).append(consumer)
    if not readers:
        return
    inputs = [v for v in model.graph.inputs if v in readers]
    interpreter = Interpreter(model)
    current: list[Mapping[str, np.ndarray]] = [{}]

    def hook(node: ir.Node, outputs: list[np.ndarray]) -> None:
        for value, arr in zip(node.outputs, outputs):
            for consumer in readers.get(value, ()):
                consumer.consume(value, arr, current[0])

    disable = None if progress is None else not progress
    for sample in tqdm(feeds, desc=desc, unit="sample", disable=disable):
        current[0] = sample
        for value in inputs:
            for consumer in readers[value]:
                consumer.consume(value, np.asarray(sample[value.name or ""]), sample)
        interpreter.run(sample, hook=hook)
