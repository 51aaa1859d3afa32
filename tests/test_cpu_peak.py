"""tools/cpu_peak.py: the probe keeps its independent accumulators, and the check catches a merged loop."""

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


def _asm(source: str) -> str:
    return subprocess.run(
        ["cc", "-O2", "-march=native", "-S", "-o", "-", "-x", "c", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@needs_cc
def test_probe_loop_holds_every_chain_and_a_merged_one_is_caught() -> None:
    source = cpu_peak.probe_source(FMA, 1000)
    assert cpu_peak.loop_instructions(_asm(source), "vfmadd") == cpu_peak.CHAINS
    # equal starting values and no barrier: the compiler merges the twelve chains (session 18's probe)
    merged = source.replace("__asm__ volatile", "if (0) __asm__ volatile")
    for k in range(cpu_peak.CHAINS):
        merged = merged.replace(f"_mm256_set1_ps({k + 1});", "_mm256_set1_ps(1);")
    assert cpu_peak.loop_instructions(_asm(merged), "vfmadd") < cpu_peak.CHAINS


@needs_cc
def test_measure_probe_gives_a_positive_rate() -> None:
    assert cpu_peak.measure_probe(FMA, iters=200_000) > 0
