"""TVM backend: sizing the runtime thread pool (each check runs in a fresh process, with a fresh pool)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TVM_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_thread_count_can_grow_after_a_one_thread_model() -> None:
    # TVM fixes its pool's size when the pool is created: sized to 1 first, it used to stay at 1 worker
    code = (
        "import os, tvm\n"
        "from backends.tvm.runtime import set_num_threads\n"
        "count = tvm.get_global_func('runtime.NumThreads')\n"
        "set_num_threads(1); print(count())\n"
        "set_num_threads(os.cpu_count()); print(count())\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", str(os.cpu_count())]


def test_a_pool_created_too_small_is_reported() -> None:
    code = (
        "import os, warnings\n"
        "os.environ['TVM_NUM_THREADS'] = '1'\n"
        "import tvm\n"
        "tvm.get_global_func('runtime.config_threadpool')(1, 1)  # someone else created the pool first\n"
        "from backends.tvm.runtime import set_num_threads\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    set_num_threads(2)\n"
        "print(tvm.get_global_func('runtime.NumThreads')())\n"
        "print([str(w.message) for w in caught])\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "1"
    assert "runs 1 thread(s), not the 2 asked for" in lines[1]
