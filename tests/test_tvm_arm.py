"""Target ``arm``: aarch64 builds run under qemu-aarch64 (and the RPC path on loopback) vs references."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from backends import get_backend
from backends.base import BuildOptions
from backends.tvm import arm_setup
from backends.tvm.arm import ArmBackend, ArmExecutable, RPCConfig, arm_neon_target
from compiler.errors import BackendError, InputSignatureError
from compiler.ir import infer_shapes, run
from tests.helpers import arm_unavailable

_WHY_NOT = arm_unavailable()
needs_arm = pytest.mark.skipif(_WHY_NOT is not None, reason=f"ARM toolchain not set up: {_WHY_NOT}")


def _small_model() -> ir.Model:
    """MatMul + Add + Relu, a Sigmoid branch and an int64 Gather: three outputs of two dtypes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [4])
    outs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8]),
        helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 16]),
        helper.make_tensor_value_info("g", TensorProto.FLOAT, [4, 16]),
    ]
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 8], rng.standard_normal((16, 8)).astype(np.float32).ravel())
    b = helper.make_tensor("b", TensorProto.FLOAT, [8], rng.standard_normal(8).astype(np.float32))
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Gather", ["x", "idx"], ["g"], axis=0),
    ]
    graph = helper.make_graph(nodes, "small", [x, idx], outs, initializer=[w, b])
    return infer_shapes(ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])))


def _feeds(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((3, 16)).astype(np.float32), "idx": np.array([2, 0, 1, 2], dtype=np.int64)}


def _check_against_reference(model: ir.Model, got: list[np.ndarray], feeds: dict[str, np.ndarray]) -> None:
    ref = run(model, feeds)
    assert len(got) == len(model.graph.outputs)
    for value, g in zip(model.graph.outputs, got, strict=True):
        r = ref[value.name or ""]
        assert g.shape == r.shape and g.dtype == r.dtype
        assert float(np.abs(g - r).max()) <= 1e-4


@pytest.fixture(scope="module")
def small_arm() -> ArmExecutable:
    if _WHY_NOT is not None:
        pytest.skip(f"ARM toolchain not set up: {_WHY_NOT}")
    ex = ArmBackend().build(_small_model(), BuildOptions(num_threads=2))
    if not isinstance(ex, ArmExecutable):
        raise TypeError(type(ex))
    return ex


@needs_arm
def test_small_graph_under_qemu_matches_reference(small_arm: ArmExecutable) -> None:
    import subprocess

    info = subprocess.run(["file", str(small_arm.library)], capture_output=True, text=True, check=False).stdout
    if info:  # `file` may be absent; when present, the library must be aarch64 code
        assert "aarch64" in info
    assert "qemu" in small_arm.description and "aarch64" in small_arm.description
    feeds = _feeds()
    _check_against_reference(_small_model(), small_arm.run(feeds), feeds)


@needs_arm
def test_benchmark_times_inside_the_runner(small_arm: ArmExecutable) -> None:
    outs, times = small_arm._invoke(_feeds(), repeat=4, warmup=1)
    assert len(times) == 4 and all(t > 0 for t in times)
    _check_against_reference(_small_model(), outs, _feeds())
    assert small_arm.benchmark(_feeds(), repeat=3, warmup=0) > 0


@needs_arm
def test_input_errors_are_typed(small_arm: ArmExecutable) -> None:
    feeds = _feeds()
    with pytest.raises(InputSignatureError, match="dtype"):
        small_arm.run({**feeds, "idx": feeds["idx"].astype(np.int32)})
    with pytest.raises(InputSignatureError, match="shape"):
        small_arm.run({**feeds, "x": np.zeros((2, 16), np.float32)})
    with pytest.raises(InputSignatureError, match="missing"):
        small_arm.run({"x": feeds["x"]})


@needs_arm
def test_dotprod_target_builds_and_runs() -> None:
    target = arm_neon_target(dotprod=True)
    assert "+dotprod" in [str(a) for a in target.attrs["mattr"]]
    model = _small_model()
    ex = ArmBackend(dotprod=True).build(model, BuildOptions())
    feeds = _feeds(3)
    _check_against_reference(model, ex.run(feeds), feeds)


def test_missing_cross_compiler_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACC_ARM_CXX", "no-such-aarch64-g++")
    with pytest.raises(BackendError, match="apt-get install gcc-aarch64-linux-gnu g\\+\\+-aarch64-linux-gnu qemu-user"):
        ArmBackend().build(_small_model(), BuildOptions())


def test_missing_qemu_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACC_ARM_QEMU", "no-such-qemu-aarch64")
    with pytest.raises(BackendError, match=r"qemu-aarch64 is not installed.*qemu-user"):
        arm_setup.find_qemu()


def test_missing_runtime_libraries_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CACC_ARM_HOME", str(tmp_path))
    with pytest.raises(BackendError, match=r"libtvm_ffi.so.*arm_setup.*apache-tvm==") as info:
        arm_setup.runtime_lib_dir()
    assert str(tmp_path) in str(info.value)


def test_rpc_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACC_ARM_RPC", "board.local:9190:rpi4")
    assert RPCConfig.from_env() == RPCConfig("board.local", 9190, "rpi4")
    assert get_backend("arm").rpc == RPCConfig("board.local", 9190, "rpi4")  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match="tracker_host:tracker_port:key"):
        RPCConfig.from_env("board.local:rpi4")


@pytest.fixture(scope="module")
def rpc_loopback():
    """A TVM RPC tracker and an x86 server on 127.0.0.1 (processes, stopped afterwards)."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs the tornado package")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    tracker_addr = ("127.0.0.1", tracker.port)
    server = rpc.Server(
        host="127.0.0.1", port=9300, port_end=9400, tracker_addr=tracker_addr, key="cacc-x86", silent=True
    )
    try:
        yield RPCConfig("127.0.0.1", tracker.port, "cacc-x86", session_timeout_s=120)
    finally:
        server.terminate()
        tracker.terminate()


def test_rpc_loopback_host_build_matches_reference(rpc_loopback: RPCConfig) -> None:
    """The RPC path end to end on an x86 server with an llvm host build (no board needed)."""
    from backends.tvm.target import host_target

    model = _small_model()
    ex = ArmBackend(rpc=rpc_loopback, target=host_target(1)).build(model, BuildOptions())
    assert "RPC" in ex.description and "cacc-x86" in ex.description
    feeds = _feeds(2)
    try:
        _check_against_reference(model, ex.run(feeds), feeds)
        assert ex.benchmark(feeds, repeat=3, warmup=1) > 0
    finally:
        ex.close()  # type: ignore[attr-defined]


def test_rpc_aarch64_library_cannot_load_on_x86_server(rpc_loopback: RPCConfig) -> None:
    """An aarch64 build needs an aarch64 board: an x86 RPC server cannot load it (a BackendError)."""
    try:
        arm_setup.find_cxx()
    except BackendError as exc:
        pytest.skip(str(exc))
    ex = ArmBackend(rpc=rpc_loopback).build(_small_model(), BuildOptions())
    with pytest.raises(BackendError, match=r"RPC to key 'cacc-x86'.*only on an aarch64 board"):
        ex.run(_feeds())


@needs_arm
@pytest.mark.models
@pytest.mark.parametrize(
    "name",
    [
        "fmnist_cnn",
        "efficientnet_lite0",  # ~20 s here (5 s emulated run)
        pytest.param("minilm", marks=pytest.mark.slow),  # ~30 s idle, 15-40 s per emulated run, ~2 min under load
    ],
)
def test_real_model_compiled_for_arm_matches_torch(name: str) -> None:
    """``compiler.compile(..., target="arm")`` runs under qemu and matches torch within 1e-4."""
    import torch
    from torch.utils._pytree import tree_flatten

    import compiler
    import models

    spec = models.get(name)
    compiled = compiler.compile(
        spec.module, spec.example_inputs, target="arm", measure=False, input_names=list(spec.input_names)
    )
    assert isinstance(compiled.executable, ArmExecutable)
    with torch.no_grad():
        expected_list = [t for t in tree_flatten(spec.module(*spec.example_inputs))[0] if isinstance(t, torch.Tensor)]
    got = compiled(*spec.example_inputs)
    got_list = list(got) if isinstance(got, tuple) else [got]
    assert len(got_list) == len(expected_list)
    for g, e in zip(got_list, expected_list, strict=True):
        assert tuple(g.shape) == tuple(e.shape)
        assert float((g - e).abs().max()) <= 1e-4
