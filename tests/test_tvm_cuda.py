"""CUDA target: the shipped models build for sm_80 / sm_90 without a GPU (device code checked with nvcc);
numerics against onnxruntime only where a GPU exists."""

from __future__ import annotations

import shutil

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from backends import BuildOptions, get_backend
from backends.tvm.cuda import CudaBackend, CudaLibrary, compile_cuda, cuda_available, cuda_target
from compiler.errors import BackendError, InputSignatureError
from compiler.ir import infer_shapes

needs_gpu = pytest.mark.skipif(not cuda_available(), reason="no CUDA device: tvm.cuda(0) does not exist here")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")

_LIBS: dict[tuple[str, str], CudaLibrary] = {}


def _library(real_onnx, name: str, arch: str) -> CudaLibrary:
    if (name, arch) not in _LIBS:
        path, _ = real_onnx(name)
        _LIBS[(name, arch)] = compile_cuda(infer_shapes(ir.load(path)), arch)
    return _LIBS[(name, arch)]


@pytest.mark.models
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["fmnist_cnn", "efficientnet_lite0", "minilm"])
def test_real_model_builds_device_code(name: str, arch: str, real_onnx) -> None:
    lib = _library(real_onnx, name, arch)
    assert lib.arch == arch
    source = lib.cuda_source()
    kernels = lib.kernel_names()
    assert kernels, "no __global__ kernels in the CUDA source"
    # every kernel is launched with a thread binding, i.e. DLight scheduled it
    assert "threadIdx.x" in source
    assert "blockIdx.x" in source


@needs_nvcc
@pytest.mark.models
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_fmnist_cuda_source_compiles_with_nvcc(arch: str, real_onnx, tmp_path) -> None:
    lib = _library(real_onnx, "fmnist_cnn", arch)
    cubin = lib.compile_device_code("cubin")
    assert cubin[:4] == b"\x7fELF"  # a cubin is an ELF image for the GPU
    lib.export(tmp_path / "fmnist_cuda.so")
    assert (tmp_path / "fmnist_cuda.so").stat().st_size > len(lib.cuda_source()) // 2


@pytest.mark.slow
@needs_nvcc
@pytest.mark.models
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["efficientnet_lite0", "minilm"])
def test_large_models_cuda_source_compiles_with_nvcc(name: str, arch: str, real_onnx) -> None:
    assert _library(real_onnx, name, arch).compile_device_code("cubin")[:4] == b"\x7fELF"


def test_cuda_target_rejects_bad_arch() -> None:
    with pytest.raises(BackendError, match="invalid CUDA architecture 'ampere'"):
        cuda_target("ampere")
    assert str(cuda_target("sm_90").attrs["arch"]) == "sm_90"


def test_get_backend_cuda() -> None:
    assert isinstance(get_backend("cuda"), CudaBackend)


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU error; a CUDA device is present")
def test_build_without_gpu_raises(real_onnx) -> None:
    path, _ = real_onnx("fmnist_cnn")
    with pytest.raises(BackendError, match="no CUDA device"):
        CudaBackend("sm_80").build(infer_shapes(ir.load(path)), BuildOptions())


@needs_gpu
@pytest.mark.models
@pytest.mark.parametrize("name", ["fmnist_cnn", "efficientnet_lite0", "minilm"])
def test_real_model_matches_onnxruntime_on_gpu(name: str, real_onnx) -> None:
    path, feeds = real_onnx(name)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    exe = CudaBackend().build(infer_shapes(ir.load(path)), BuildOptions())
    got = exe.run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3)
    with pytest.raises(InputSignatureError, match="missing"):
        exe.run({})
    assert exe.benchmark(feeds, repeat=3, warmup=1) > 0
