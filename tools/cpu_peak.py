"""Peak arithmetic rates of this CPU's vector instructions, one core: the roofline the kernels are held to.

Each rate is one instruction (an fp32 FMA, an int8 dot product ``vpdpbusd`` or an int16 one ``vpdpwssd``) issued
on twelve independent accumulators in a C loop compiled for the host (``cc -O2 -march=native``), so the loop is
throughput-bound, not latency-bound. Twelve accumulators with equal starting values and operands are one value to
a compiler: it merges them into a single latency-bound chain (what session 18's hand-written probe measured, and
took for the peak). Here each accumulator starts from its own value and passes through an empty ``asm`` barrier,
and the generated assembly is checked to hold the twelve instructions before anything is timed.

    python tools/cpu_peak.py            # prints Gop/s a core for each instruction the host has

``--peak`` of ``tools/profile_kernels.py`` uses :func:`measure_peaks` to give each kernel's share of the peak.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Probe:
    """One instruction to time: its C type, splat and intrinsic, its mnemonic, the operations one instruction does
    and the CPU flags (as ``/proc/cpuinfo`` spells them) it needs."""

    name: str
    ctype: str
    splat: str
    op: str
    mnemonic: str
    ops: int
    flags: tuple[str, ...]


PROBES = (
    Probe("fp32 FMA ymm", "__m256", "_mm256_set1_ps", "_mm256_fmadd_ps", "vfmadd", 16, ("avx2", "fma")),
    Probe("fp32 FMA zmm", "__m512", "_mm512_set1_ps", "_mm512_fmadd_ps", "vfmadd", 32, ("avx512f",)),
    Probe(
        "int8 vpdpbusd ymm",
        "__m256i",
        "_mm256_set1_epi32",
        "_mm256_dpbusd_epi32",
        "vpdpbusd",
        64,
        ("avx512_vnni", "avx512vl"),
    ),
    Probe(
        "int8 vpdpbusd zmm", "__m512i", "_mm512_set1_epi32", "_mm512_dpbusd_epi32", "vpdpbusd", 128, ("avx512_vnni",)
    ),
    Probe(  # the VEX encoding of CPUs with AVX-VNNI but no AVX-512 (Alder Lake and later client cores)
        "int8 vpdpbusd ymm (AVX-VNNI)",
        "__m256i",
        "_mm256_set1_epi32",
        "_mm256_dpbusd_avx_epi32",
        "vpdpbusd",
        64,
        ("avx_vnni",),
    ),
    Probe(
        "int16 vpdpwssd ymm",
        "__m256i",
        "_mm256_set1_epi32",
        "_mm256_dpwssd_epi32",
        "vpdpwssd",
        32,
        ("avx512_vnni", "avx512vl"),
    ),
    Probe(
        "int16 vpdpwssd zmm", "__m512i", "_mm512_set1_epi32", "_mm512_dpwssd_epi32", "vpdpwssd", 64, ("avx512_vnni",)
    ),
)

#: Independent accumulators per loop iteration (enough to cover a 4-cycle latency at 3 instructions a cycle).
CHAINS = 12

_SOURCE = """
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) {{ struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }}
int main(void) {{
  {ctype} m = {splat}(3), c = {splat}(5);
  {decls}
  double t = now();
  for (long i = 0; i < {iters}L; i++) {{
    {steps}
    __asm__ volatile("" : {barrier});
  }}
  t = now() - t;
  volatile int sink = 0;
  {sinks}
  printf("%.6f\\n", {iters}.0 * {chains} * {ops} / t / 1e9);
  return 0;
}}
"""


def probe_source(probe: Probe, iters: int) -> str:
    """The C program timing ``probe``: prints its Gop/s on one core."""
    names = [f"a{k}" for k in range(CHAINS)]
    return _SOURCE.format(
        ctype=probe.ctype,
        splat=probe.splat,
        decls=" ".join(f"{probe.ctype} {a} = {probe.splat}({k + 1});" for k, a in enumerate(names)),
        steps=" ".join(f"{a} = {probe.op}({a}, m, c);" for a in names),
        barrier=", ".join(f'"+v"({a})' for a in names),
        sinks=" ".join(f"sink += ((int *)&{a})[0];" for a in names),
        iters=iters,
        chains=CHAINS,
        ops=probe.ops,
    )


def loop_instructions(asm: str, mnemonic: str) -> int:
    """The most ``mnemonic`` instructions in one basic block of ``asm`` (the timed loop's body, unless the compiler
    merged or moved its accumulators)."""
    best = 0
    for block in re.split(r"\n\S[^\n]*:\s*(?=\n)", asm):
        # an encoding prefix ({vex} for AVX-VNNI's forms of the AVX-512 VNNI mnemonics) is not part of the name
        lines = (re.sub(r"^\{\w+\}\s*", "", line.strip()) for line in block.splitlines())
        best = max(best, sum(1 for line in lines if line.startswith(mnemonic)))
    return best


def host_flags() -> set[str]:
    """The CPU flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


class PeakError(RuntimeError):
    """A probe could not be compiled or run, or the compiler did not keep its independent accumulators."""


class ProbeCompileError(PeakError):
    """The C compiler could not build a probe (no compiler, or one that lacks the instruction's intrinsic)."""


def measure_probe(probe: Probe, iters: int = 20_000_000, cc: str = "cc") -> float:
    """Gop/s of ``probe`` on one core (the best of three runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "probe.c"), Path(tmp, "probe")
        src.write_text(probe_source(probe, iters))
        flags = [cc, "-O2", "-march=native"]
        try:
            asm = subprocess.run([*flags, "-S", "-o", "-", str(src)], capture_output=True, text=True, check=True)
            subprocess.run([*flags, "-o", str(exe), str(src)], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ProbeCompileError(f"cannot compile the {probe.name} probe with {cc}: {exc}") from exc
        found = loop_instructions(asm.stdout, probe.mnemonic)
        if found < CHAINS:
            raise PeakError(f"the {probe.name} probe's loop holds {found} {probe.mnemonic}, not {CHAINS}")
        rates = []
        for _ in range(3):
            run = subprocess.run([str(exe)], capture_output=True, text=True)
            try:
                rates.append(float(run.stdout))
            except ValueError:
                raise PeakError(
                    f"the {probe.name} probe failed (exit {run.returncode}): {run.stderr.strip()}"
                ) from None
        return max(rates)


def measure_peaks(iters: int = 20_000_000, cc: str = "cc") -> dict[str, float]:
    """Gop/s on one core of every :data:`PROBES` instruction the host has, by probe name; a probe the C compiler
    cannot build is left out with a warning (a probe that loses chains or fails to run raises :class:`PeakError`)."""
    flags = host_flags()
    rates: dict[str, float] = {}
    for probe in PROBES:
        if not all(f in flags for f in probe.flags):
            continue
        try:
            rates[probe.name] = measure_probe(probe, iters, cc)
        except ProbeCompileError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
    return rates


def main() -> None:
    """Print the host's peak rates."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20_000_000, help="loop iterations per probe")
    ap.add_argument("--cc", default="cc", help="the C compiler")
    args = ap.parse_args()
    for name, rate in measure_peaks(args.iters, args.cc).items():
        print(f"{name:<28} {rate:8.1f} Gop/s a core")


if __name__ == "__main__":
    main()
