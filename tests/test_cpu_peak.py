"""tools/cpu_peak.py: the probe keeps its independent accumulators, and a loop that lost some is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import cpu_peak

FMA = cpu_peak.PROBES[0]
needs_cc = pytest.mark.skipif(shutil.which("cc") is None or "fma" not in cpu_peak.host_flags(), reason="needs cc + FMA")


def test_loop_instructions_counts_the_busiest_block() -> None:
    asm = "main:\n\tvxorps %ymm0, %ymm0, %ymm0\n.L3:\n" + "\tvfmadd231ps %ymm1, %ymm2, %ymm3\n" * 5
    asm += "\tjne .L3\n.L4:\n\tvfmadd132sd .LC0(%rip), %xmm0, %xmm1\n"
    assert cpu_peak.loop_instructions(asm, "vfmadd") == 5
    assert cpu_peak.loop_instructions(".L2:\n" + "\t{vex} vpdpbusd %ymm1, %ymm2, %ymm3\n" * 3, "vpdpbusd") == 3


def _asm(source: str) -> str:
    return subprocess.run(
        ["cc", "-O2", "-march=native", "-S", "-o", "-", "-x", "c", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@needs_cc
def test_probe_loop_keeps_every_chain() -> None:
    # twelve accumulators that start equal would be one value to the compiler; each starts from its own value and
    # passes through an empty asm barrier, so the loop holds all twelve FMAs (more if the compiler unrolls it)
    assert cpu_peak.loop_instructions(_asm(cpu_peak.probe_source(FMA, 1000)), "vfmadd") >= cpu_peak.CHAINS


@needs_cc
def test_a_probe_whose_loop_lost_chains_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_peak, "CHAINS", 1)
    one_chain = cpu_peak.probe_source(FMA, 1000)  # what a compiler merging the chains would leave
    monkeypatch.setattr(cpu_peak, "CHAINS", 12)
    monkeypatch.setattr(cpu_peak, "probe_source", lambda probe, iters: one_chain)
    with pytest.raises(cpu_peak.PeakError, match="loop holds 1 vfmadd, not 12"):
        cpu_peak.measure_probe(FMA, iters=1000)


@needs_cc
def test_measure_probe_gives_a_positive_rate() -> None:
    assert cpu_peak.measure_probe(FMA, iters=200_000) > 0


def test_probes_the_compiler_cannot_build_are_left_out_with_a_warning() -> None:
    if not any(all(f in cpu_peak.host_flags() for f in p.flags) for p in cpu_peak.PROBES):
        pytest.skip("no probe applies to this CPU")
    with pytest.warns(RuntimeWarning, match="cannot compile the .* probe with false"):
        assert cpu_peak.measure_peaks(iters=1000, cc="false") == {}
