"""Target ``arm``: 64-bit ARM Linux (aarch64, NEON, optionally +dotprod) through TVM.

The model is compiled on the host (Relax -> TIR -> LLVM for ``aarch64-linux-gnu``) and linked
with the cross compiler into one shared library. It then runs either

- under ``qemu-aarch64`` with :mod:`backends.tvm.arm_runner` (a small C++ program against the
  aarch64 TVM runtime), when no board is configured, or
- on a real board through TVM's RPC (tracker + ``python -m tvm.exec.rpc_server`` on the board):
  ``ArmBackend(rpc=RPCConfig(tracker_host, tracker_port, key))`` or ``CACC_ARM_RPC=host:port:key``.

Timings under qemu measure the emulator, not ARM hardware; use RPC for real numbers.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax

from backends.base import Backend, BuildOptions, Executable
from backends.tvm import arm_setup
from backends.tvm.relax_emitter import emit_relax
from backends.tvm.runtime import cpu_pipeline
from backends.tvm.signature import InputSignature, check_inputs, input_signatures
from compiler.errors import BackendError

#: Seconds one emulated run (or benchmark) may take before it is abandoned.
QEMU_TIMEOUT_S = 1800.0
#: Most timed runs of one benchmark under qemu.
QEMU_MAX_REPEAT = 3


def arm_neon_target(
    mcpu: str | None = None, *, dotprod: bool = False, num_threads: int | None = None
) -> tvm.target.Target:
    """The aarch64 Linux LLVM target with NEON (and ``+dotprod`` when asked)."""
    spec: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    if dotprod:
        spec["mattr"].append("+dotprod")
    if mcpu:
        spec["mcpu"] = mcpu
    if num_threads:
        spec["num-cores"] = int(num_threads)
    try:
        return tvm.target.Target(spec)
    except Exception as exc:
        raise BackendError(f"cannot create the ARM target {spec}: {exc}") from exc


def is_aarch64(target: tvm.target.Target) -> bool:
    """Whether ``target`` generates aarch64 code."""
    return str(target.attrs.get("mtriple", "")).startswith(("aarch64", "arm64"))


@dataclass(frozen=True)
class RPCConfig:
    """Where a board's RPC server is registered: a TVM RPC tracker and the board's key."""

    tracker_host: str
    tracker_port: int
    key: str
    priority: int = 1
    session_timeout_s: int = 600

    @staticmethod
    def from_env(value: str | None = None) -> RPCConfig | None:
        """Parse ``host:port:key`` (default: ``$CACC_ARM_RPC``); None when unset."""
        value = value if value is not None else os.environ.get("CACC_ARM_RPC")
        if not value:
            return None
        parts = value.split(":")
        if len(parts) != 3 or not parts[1].isdigit():
            raise BackendError(f"CACC_ARM_RPC must be 'tracker_host:tracker_port:key', got {value!r}")
        return RPCConfig(parts[0], int(parts[1]), parts[2])


@dataclass
class ArmExecutable(Executable):
    """A model built for ARM, run in ``qemu-aarch64`` by the C++ runner (one process per call)."""

    library: Path
    inputs: list[InputSignature]
    output_names: list[str]
    toolchain: arm_setup.Toolchain
    runner: Path
    target: tvm.target.Target
    num_threads: int | None = None
    build_seconds: float = 0.0
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def description(self) -> str:  # type: ignore[override]
        """E.g. ``TVM 0.27 llvm aarch64-linux-gnu +neon (qemu-aarch64 emulation)``."""
        mattr = " ".join(str(a) for a in self.target.attrs.get("mattr", []))
        return f"TVM {tvm.__version__} llvm {self.target.attrs.get('mtriple', '')} {mattr} (qemu-aarch64 emulation)"

    def _invoke(self, feeds: Mapping[str, np.ndarray], repeat: int = 0, warmup: int = 0) -> tuple[list, list]:
        arrays = check_inputs(self.inputs, feeds)
        if self.toolchain.qemu is None:
            raise BackendError(f"ARM target: qemu-aarch64 is not installed; run: {arm_setup.APT_HINT}")
        with tempfile.TemporaryDirectory(prefix="cacc-arm-run-") as tmp:
            paths = []
            for i, arr in enumerate(arrays):
                paths.append(os.path.join(tmp, f"in{i}.npy"))
                np.save(paths[-1], arr)
            cmd = [self.toolchain.qemu, "-L", self.toolchain.sysroot, str(self.runner), str(self.library), tmp]
            cmd += ["--warmup", str(warmup), "--repeat", str(repeat), *paths]
            env = dict(os.environ, LD_LIBRARY_PATH=str(self.toolchain.lib_dir))
            if self.num_threads:
                env["TVM_NUM_THREADS"] = str(self.num_threads)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=QEMU_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired as exc:
                raise BackendError(f"ARM run under qemu timed out after {QEMU_TIMEOUT_S:.0f} s") from exc
            if proc.returncode != 0:
                raise BackendError(f"ARM run under qemu failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            outs = []
            for i in range(len(self.output_names)):
                path = os.path.join(tmp, f"out{i}.npy")
                if not os.path.exists(path):
                    raise BackendError(f"ARM runner wrote no output {i} ('{self.output_names[i]}')")
                outs.append(np.load(path))
        times = []
        for line in proc.stdout.splitlines():
            if line.startswith("CACC_TIMES_MS"):
                times = [float(t) for t in line.split()[1:]]
        return outs, times

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once under qemu; returns the outputs in graph order."""
        return self._invoke(feeds)[0]

    def benchmark(self, feeds: Mapping[str, np.ndarray], *, repeat: int = 20, warmup: int = 3) -> float:
        """Median milliseconds of ``main`` timed inside the runner (emulated time, not ARM hardware).

        Capped at :data:`QEMU_MAX_REPEAT` runs and one warm-up: emulated timings say little, and a
        transformer takes 10-40 s a run under qemu.
        """
        times = self._invoke(feeds, repeat=min(max(repeat, 1), QEMU_MAX_REPEAT), warmup=min(warmup, 1))[1]
        if not times:
            raise BackendError("ARM runner printed no timings")
        return float(statistics.median(times))


@dataclass
class RPCExecutable(Executable):
    """A model library uploaded to a board's RPC server and run in a remote Relax VM."""

    library: Path
    inputs: list[InputSignature]
    output_names: list[str]
    rpc: RPCConfig
    target: tvm.target.Target
    build_seconds: float = 0.0
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _session: Any = field(default=None, repr=False)
    _vm: Any = field(default=None, repr=False)

    @property
    def description(self) -> str:  # type: ignore[override]
        """E.g. ``TVM llvm aarch64-linux-gnu via RPC key 'rpi4' at host:9190``."""
        triple = self.target.attrs.get("mtriple", "host")
        return f"TVM {tvm.__version__} llvm {triple} via RPC key '{self.rpc.key}' at {self.rpc.tracker_host}:" + str(
            self.rpc.tracker_port
        )

    def connect(self) -> Any:
        """Request a session from the tracker, upload and load the library (once)."""
        if self._vm is None:
            from tvm import rpc

            try:
                tracker = rpc.connect_tracker(self.rpc.tracker_host, self.rpc.tracker_port)
                session = tracker.request(
                    self.rpc.key, priority=self.rpc.priority, session_timeout=self.rpc.session_timeout_s
                )
                session.upload(str(self.library))
                lib = session.load_module(self.library.name)
                self._vm = relax.VirtualMachine(lib, session.cpu())
                self._session = session
            except Exception as exc:
                hint = ""
                if is_aarch64(self.target):
                    hint = " (an aarch64 library loads only on an aarch64 board's RPC server, not an x86 one)"
                where = f"{self.rpc.tracker_host}:{self.rpc.tracker_port}"
                raise BackendError(f"RPC to key '{self.rpc.key}' at {where} failed{hint}: {exc}") from exc
        return self._vm

    def close(self) -> None:
        """Release the RPC session, so that the tracker can hand the board to someone else."""
        self._vm = None
        self._session = None
        gc.collect()  # (the session's socket closes when its last reference goes, cycles included)

    def _args(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        self.connect()
        dev = self._session.cpu()
        return [tvm.runtime.tensor(a, dev) for a in check_inputs(self.inputs, feeds)]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once on the board; returns the outputs in graph order."""
        args = self._args(feeds)
        try:
            # (stateful: a tuple result cannot be iterated through an RPC object reference)
            self._vm.set_input("main", *args)
            self._vm.invoke_stateful("main")
            out = self._vm.get_outputs("main")
        except Exception as exc:
            raise BackendError(f"remote run failed: {exc}") from exc
        outs = list(out) if isinstance(out, tuple) else [out]
        return [o.numpy() for o in outs]

    def benchmark(self, feeds: Mapping[str, np.ndarray], *, repeat: int = 20, warmup: int = 3) -> float:
        """Median milliseconds of ``main`` measured on the board by TVM's time evaluator."""
        args = self._args(feeds)
        try:
            evaluator = self._vm.time_evaluator("main", self._session.cpu(), number=1, repeat=max(repeat, 1))
            for _ in range(warmup):
                self._vm["main"](*args)
            result = evaluator(*args)
        except Exception as exc:
            raise BackendError(f"remote benchmark failed: {exc}") from exc
        return float(statistics.median(result.results)) * 1e3


class ArmBackend(Backend):
    """Builds for aarch64 Linux (NEON); runs under qemu, or on a board through ``rpc``.

    ``target`` overrides the LLVM target (e.g. the host's, to exercise the RPC path on an x86
    server); libraries for an aarch64 target are linked with ``aarch64-linux-gnu-g++``.
    """

    name = "arm"

    def __init__(
        self,
        *,
        rpc: RPCConfig | None = None,
        target: tvm.target.Target | None = None,
        mcpu: str | None = None,
        dotprod: bool = False,
    ) -> None:
        self.rpc = rpc if rpc is not None else RPCConfig.from_env()
        self.target_override = target
        self.mcpu = mcpu
        self.dotprod = dotprod

    def _target(self, num_threads: int | None) -> tvm.target.Target:
        if self.target_override is not None:
            return self.target_override
        return arm_neon_target(self.mcpu, dotprod=self.dotprod, num_threads=num_threads)

    def build(self, model: ir.Model, options: BuildOptions) -> Executable:
        """Compile ``model`` for the ARM target and link a shared library; qemu or RPC runs it."""
        target = self._target(options.num_threads)
        cross = is_aarch64(target)
        toolchain = arm_setup.toolchain(need_qemu=self.rpc is None) if cross else None
        t0 = time.perf_counter()
        with target:  # lowering choices that depend on the CPU follow the target built for, not the host
            mod = emit_relax(model)
        try:
            ex = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))
        except Exception as exc:
            raise BackendError(f"TVM build for {target.attrs.get('mtriple', 'host')} failed: {exc}") from exc
        workdir = tempfile.TemporaryDirectory(prefix="cacc-arm-")
        library = Path(workdir.name) / "model.so"
        try:
            if toolchain is not None:
                from tvm.support import cc

                ex.export_library(str(library), fcompile=cc.cross_compiler(toolchain.cxx))
            else:
                ex.export_library(str(library))
        except Exception as exc:
            raise BackendError(f"linking the model library failed: {exc}") from exc
        seconds = time.perf_counter() - t0
        inputs, outputs = input_signatures(model), [v.name or "" for v in model.graph.outputs]
        if self.rpc is not None:
            return RPCExecutable(library, inputs, outputs, self.rpc, target, seconds, workdir)
        if toolchain is None:
            raise BackendError(f"target {target} is not aarch64: without an RPC board there is nothing to run it on")
        runner = arm_setup.runner_path(toolchain.cxx, toolchain.lib_dir)
        return ArmExecutable(library, inputs, outputs, toolchain, runner, target, options.num_threads, seconds, workdir)
