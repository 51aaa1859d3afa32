"""TVM backend: tensor-manipulation ops and shape subgraphs against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from backends.tvm import emit_relax
from tests.test_tvm_helpers import check_against_ort, make_model, rand, to_ir


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_reshape_zero_and_minus_one_flatten_transpose() -> None:
    x = rand(2, 3, 4, 5)
    nodes = [
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 1]),
        helper.make_node("Flatten", ["t"], ["y"], axis=2),
    ]
    check_against_ort(nodes, {"x": x}, initializers={"s": i64(0, -1, 5)})


def test_squeeze_unsqueeze_with_axes_inputs() -> None:
    x = rand(1, 3, 1, 4)
    nodes = [
        helper.make_node("Squeeze", ["x", "ax"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "ax2"], ["y"]),
    ]
    check_against_ort(nodes, {"x": x}, initializers={"ax": i64(0, -2), "ax2": i64(-1, 1)})


def test_concat_split() -> None:
    a, b = rand(2, 3, seed=1), rand(2, 5, seed=2)
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["c"], axis=-1),
        helper.make_node("Split", ["c", "sizes"], ["y0", "y1", "y2"], axis=1),
    ]
    check_against_ort(nodes, {"a": a, "b": b}, outputs=("y0", "y1", "y2"), initializers={"sizes": i64(1, 4, 3)})


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps"),
    [
        ((1, 0), (3, 100), (0, 2), (1, 2)),  # ends clamped
        ((-1,), (-1000,), (1,), (-1,)),  # full reverse
        ((4, -3), (0, 2**62), (2, 1), (-2, 1)),  # negative step with stride, INT_MAX-like end
    ],
)
def test_slice(starts: tuple, ends: tuple, axes: tuple, steps: tuple) -> None:
    x = rand(4, 5, 6)
    inits = {"st": i64(*starts), "en": i64(*ends), "ax": i64(*axes), "sp": i64(*steps)}
    check_against_ort([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], {"x": x}, initializers=inits)


def test_gather_constant_and_runtime_indices() -> None:
    table = rand(10, 4)
    idx = np.array([[0, -1], [9, 3]], dtype=np.int64)  # -1 must mean the last row
    nodes = [
        helper.make_node("Gather", ["table", "idx"], ["a"], axis=0),
        helper.make_node("Gather", ["x", "cidx"], ["b"], axis=1),
        helper.make_node("Gather", ["x", "scalar"], ["c"], axis=0),
    ]
    inits = {"table": table, "cidx": i64(2, -1, 0), "scalar": np.array(-2, dtype=np.int64)}
    check_against_ort(nodes, {"idx": idx, "x": rand(3, 4)}, outputs=("a", "b", "c"), initializers=inits)


def test_gather_elements_and_gather_nd() -> None:
    x = rand(3, 4)
    ge_idx = np.array([[0, -1, 2, 1], [3, 0, 0, 1]], dtype=np.int64)
    nd_idx = np.array([[[0, 1]], [[2, -1]]], dtype=np.int64)
    nodes = [
        helper.make_node("GatherElements", ["x", "ge"], ["a"], axis=1),
        helper.make_node("GatherND", ["x", "nd"], ["b"]),
        helper.make_node("GatherElements", ["x", "ge_rt"], ["c"], axis=1),
    ]
    check_against_ort(
        nodes, {"x": x, "ge_rt": ge_idx}, outputs=("a", "b", "c"), initializers={"ge": ge_idx, "nd": nd_idx}
    )


def test_expand_tile_pad() -> None:
    x = rand(3, 1)
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["e"]),
        helper.make_node("Tile", ["e", "reps"], ["t"]),
        helper.make_node("Pad", ["t", "pads", "val"], ["y"], mode="constant"),
        helper.make_node("Pad", ["t", "pads"], ["z"], mode="reflect"),
    ]
    inits = {
        "shape": i64(2, 1, 4),
        "reps": i64(1, 2, 1),
        "pads": i64(0, 1, 2, 0, 2, 1),
        "val": np.array(1.5, np.float32),
    }
    check_against_ort(nodes, {"x": x}, outputs=("y", "z"), initializers=inits)


def _shape_subgraph_nodes() -> list:
    # y = Reshape(x, Concat(Shape(x)[0:1], [-1])) -- what exporters emit for flatten
    return [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Cast", ["shp"], ["shp_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["shp_f"], ["total"], keepdims=0),
        helper.make_node("Mul", ["r", "total"], ["y"]),
    ]


def test_shape_subgraph_folds_at_emit_time() -> None:
    x = rand(2, 3, 4)
    inits = {"zero": np.array(0, np.int64), "ax0": i64(0), "minus1": i64(-1)}
    check_against_ort(_shape_subgraph_nodes(), {"x": x}, initializers=inits)
    script = emit_relax(to_ir(make_model(_shape_subgraph_nodes(), {"x": x}, ["y"], inits))).script()
    for op in ("shape_of", "R.sum", "concat", "R.take"):
        assert op not in script, f"{op} should have been folded away"
    assert "R.reshape" in script


def test_constant_and_constant_of_shape_and_range() -> None:
    x = rand(2, 5)
    nodes = [
        helper.make_node("Constant", [], ["c"], value_float=2.5),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        ),
        helper.make_node("Range", ["r0", "r1", "r2"], ["rng"]),
        helper.make_node("Cast", ["rng"], ["rngf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Add", ["m", "ones"], ["a"]),
        helper.make_node("Add", ["a", "rngf"], ["y"]),
    ]
    inits = {"shape": i64(2, 5), "r0": np.array(0, np.int64), "r1": np.array(10, np.int64), "r2": np.array(2, np.int64)}
    check_against_ort(nodes, {"x": x}, initializers=inits)
