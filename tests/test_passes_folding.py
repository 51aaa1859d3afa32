"""fold_constants, remove_identity, eliminate_dead_code, infer_shapes."""

from __future__ import annotations

import numpy as np
from onnx import helper

from passes import get_pass
from passes.constant_folding import FoldConstantsPass
from passes.identity_removal import RemoveIdentityPass
from tests.test_passes_common import assert_same_numerics, feeds_for, make_model, ops, snapshot

F = np.float32


def _arr(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F)


# ----------------------------------------------------------------------------- fold_constants


def test_fold_constants_chain_shape_and_constant_node() -> None:
    model = make_model(
        [
            helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", 1, [3], [2.0, 3.0, 4.0])),
            helper.make_node("Add", ["c", "c"], ["c2"]),
            helper.make_node("Mul", ["c2", "k"], ["c3"]),
            helper.make_node("Add", ["x", "c3"], ["s"]),
            helper.make_node("Shape", ["x"], ["shp"]),
            helper.make_node("Reshape", ["s", "shp"], ["y"]),
            helper.make_node("Size", ["x"], ["n"]),
        ],
        {"x": (F, [2, 3])},
        ["y", "n"],
        {"c": _arr(3)},
    )
    before = snapshot(model)
    p = FoldConstantsPass()
    assert p(model).modified
    assert ops(model) == {"Add": 1, "Reshape": 1}
    assert [v.name for v in model.graph.outputs] == ["y", "n"]
    assert model.graph.outputs[1].const_value is not None  # the Size output became an initializer
    assert_same_numerics(before, model, feeds_for(model))
    assert not p(model).modified  # fixed point reached in one sweep


def test_fold_constants_skips_non_deterministic_ops() -> None:
    model = make_model(
        [helper.make_node("RandomUniform", [], ["r"], shape=[2, 3]), helper.make_node("Add", ["x", "r"], ["y"])],
        {"x": (F, [2, 3])},
        ["y"],
    )
    p = FoldConstantsPass()
    assert not p(model).modified
    assert ops(model)["RandomUniform"] == 1
    assert any("not deterministic" in r.reason for r in p.last_rejections)


def test_fold_constants_skips_huge_outputs_of_small_inputs() -> None:
    model = make_model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        {"x": (F, [2])},
        ["y"],
        {"shape": np.array([2000, 1000], dtype=np.int64)},
    )
    p = FoldConstantsPass()
    p(model)
    assert ops(model)["ConstantOfShape"] == 1
    assert any("2000000 elements" in r.reason for r in p.last_rejections)


def test_folded_constants_repeated_along_an_axis_are_stored_once_where_users_broadcast() -> None:
    """Gathering row 0 of a table at every position folds to one row when only an Add reads it (the output
    shape comes from ``x``); read by an Add that takes its shape from the constant, or with rows differing
    only in the sign of a zero, it keeps every row."""
    table = _arr(3, 4)
    signed = np.zeros((2, 4), F)
    signed[1, 0] = -0.0
    model = make_model(
        [
            helper.make_node("Gather", ["table", "zeros"], ["rows"]),  # [1, 5, 4], five copies of row 0
            helper.make_node("Add", ["x", "rows"], ["y"]),
            helper.make_node("Gather", ["table", "zeros"], ["rows2"]),
            helper.make_node("Add", ["small", "rows2"], ["z"]),  # small is [1, 1, 4]: rows2 gives the 5
            helper.make_node("Gather", ["signed", "ones"], ["zs"]),  # rows 0 and -0 at index 0
            helper.make_node("Mul", ["x2", "zs"], ["w"]),
        ],
        {"x": (F, [1, 5, 4]), "small": (F, [1, 1, 4]), "x2": (F, [2, 4])},
        ["y", "z", "w"],
        {
            "table": table,
            "zeros": np.zeros((1, 5), np.int64),
            "signed": signed,
            "ones": np.array([0, 1], np.int64),
        },
    )
    before = snapshot(model)
    assert FoldConstantsPass()(model).modified
    shapes = {n.outputs[0].name: tuple(n.inputs[1].shape) for n in model.graph if n.op_type in ("Add", "Mul")}
    assert shapes == {"y": (1, 1, 4), "z": (1, 5, 4), "w": (2, 4)}
    assert_same_numerics(before, model, feeds_for(model))


# ----------------------------------------------------------------------------- remove_identity


def test_remove_identity_removes_every_no_op_and_keeps_output_name() -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Identity", ["a"], ["b"]),
            helper.make_node("Dropout", ["b"], ["c"]),
            helper.make_node("Cast", ["c"], ["d"], to=1),
            helper.make_node("Reshape", ["d", "shape"], ["e"]),
            helper.make_node("Expand", ["e", "ones"], ["f"]),
            helper.make_node("Transpose", ["f"], ["g"], perm=[0, 1, 2]),
            helper.make_node("Add", ["zero", "g"], ["h"]),
            helper.make_node("Mul", ["h", "one"], ["i"]),
            helper.make_node("Div", ["i", "one"], ["j"]),
            helper.make_node("Sub", ["j", "zero"], ["k"]),
            helper.make_node("Slice", ["k", "starts", "ends", "axes"], ["y"]),
        ],
        {"x": (F, [2, 3, 4])},
        ["y"],
        {
            "shape": np.array([2, -1, 4], dtype=np.int64),
            "ones": np.array([1, 3, 1], dtype=np.int64),
            "zero": np.zeros((3, 1), F),
            "one": np.ones((4,), F),
            "starts": np.array([0, -3], dtype=np.int64),
            "ends": np.array([9, 2**62], dtype=np.int64),
            "axes": np.array([0, 1], dtype=np.int64),
        },
    )
    before = snapshot(model)
    p = RemoveIdentityPass()
    assert p(model).modified
    assert ops(model) == {"Relu": 1}
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert_same_numerics(before, model, feeds_for(model))


def test_remove_identity_keeps_ops_that_change_something() -> None:
    model = make_model(
        [
            helper.make_node("Add", ["x", "zero"], ["a"]),  # broadcasting grows [3] to [2,3]
            helper.make_node("Cast", ["a"], ["b"], to=11),  # float -> double
            helper.make_node("Transpose", ["b"], ["c"], perm=[1, 0]),
            helper.make_node("Mul", ["c", "two"], ["y"]),
        ],
        {"x": (F, [3])},
        ["y"],
        {"zero": np.zeros((2, 3), F), "two": np.full((1,), 2.0, np.float64)},
    )
    before = snapshot(model)
    assert not get_pass("remove_identity")()(model).modified
    assert len(model.graph) == 4
    assert_same_numerics(before, model, feeds_for(model))


def test_remove_identity_never_renames_a_graph_input_to_an_output() -> None:
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Cast", ["x"], ["z"], to=1)],
        {"x": (F, [2])},
        ["y", "z"],
    )
    p = RemoveIdentityPass()
    assert not p(model).modified
    assert [v.name for v in model.graph.outputs] == ["y", "z"]
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert any("graph output 'z' would be renamed" in r.reason for r in p.last_rejections)


def test_remove_identity_between_two_graph_outputs_keeps_both_names() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
        {"x": (F, [2])},
        ["r", "y"],
    )
    before = snapshot(model)
    p = RemoveIdentityPass()
    assert not p(model).modified  # onnx-ir's IdentityEliminationPass would rename 'r' to 'y' here
    assert [v.name for v in model.graph.outputs] == ["r", "y"]
    assert_same_numerics(before, model, feeds_for(model))


# ----------------------------------------------------------------------------- dead code, shapes


def test_eliminate_dead_code_removes_unused_nodes_and_initializers() -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("Mul", ["x", "w"], ["unused"]),
            helper.make_node("Neg", ["unused"], ["unused2"]),
        ],
        {"x": (F, [2])},
        ["y"],
        {"w": _arr(2)},
    )
    before = snapshot(model)
    assert get_pass("eliminate_dead_code")()(model).modified
    assert ops(model) == {"Relu": 1}
    assert "w" not in model.graph.initializers
    assert_same_numerics(before, model, feeds_for(model))


def test_infer_shapes_pass_fills_in_shapes() -> None:
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": (F, [2, 3])}, ["y"], {"w": _arr(3, 5)})
    (node,) = list(model.graph)
    node.outputs[0].shape = None
    assert get_pass("infer_shapes")()(model).modified
    assert list(node.outputs[0].shape or []) == [2, 5]
