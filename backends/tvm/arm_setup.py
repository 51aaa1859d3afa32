"""The ARM (aarch64) toolchain: cross compiler, qemu, the aarch64 TVM runtime libraries and the runner.

Everything lives in one cache folder (``$CACC_ARM_HOME``, default ``~/.cache/cacc/arm-<tvm version>``):
``wheels/`` (the aarch64 ``apache-tvm`` / ``apache-tvm-ffi`` wheels from PyPI), ``lib/`` (their runtime
libraries) and ``bin/`` (``cacc_arm_runner`` built from ``backends/tvm/arm_runner/runner.cc``).

``python -m backends.tvm.arm_setup`` (or ``tools/arm_setup.sh``) downloads the wheels and builds the
runner; the Debian packages come from ``apt-get install`` (see :data:`APT_PACKAGES`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi

from compiler.errors import BackendError

APT_PACKAGES = ("gcc-aarch64-linux-gnu", "g++-aarch64-linux-gnu", "qemu-user")
TVM_WHEEL = f"apache-tvm=={tvm.__version__}"
FFI_WHEEL = f"apache-tvm-ffi=={tvm_ffi.__version__}"
#: The aarch64 runtime libraries the runner needs (``libtvm_runtime_extra`` is optional).
RUNTIME_LIBS = ("libtvm_ffi.so", "libtvm_runtime.so")
_WHEEL_MEMBERS = {
    "tvm_ffi/lib/libtvm_ffi.so": "libtvm_ffi.so",
    "tvm/lib/libtvm_runtime.so": "libtvm_runtime.so",
    "tvm/lib/libtvm_runtime_extra.so": "libtvm_runtime_extra.so",
}
RUNNER_SOURCE = Path(__file__).parent / "arm_runner" / "runner.cc"
SETUP_HINT = "python -m backends.tvm.arm_setup (or tools/arm_setup.sh)"
APT_HINT = "apt-get install " + " ".join(APT_PACKAGES)


def cache_dir() -> Path:
    """The ARM cache folder (``$CACC_ARM_HOME`` or ``~/.cache/cacc/arm-<tvm version>``)."""
    env = os.environ.get("CACC_ARM_HOME")
    return Path(env) if env else Path.home() / ".cache" / "cacc" / f"arm-{tvm.__version__}"


@dataclass(frozen=True)
class Toolchain:
    """Paths of the cross toolchain pieces."""

    cxx: str  #: aarch64-linux-gnu-g++
    qemu: str | None  #: qemu-aarch64 (None when absent: only an RPC board can run)
    sysroot: str  #: the aarch64 libc for qemu's ``-L``
    lib_dir: Path  #: the aarch64 libtvm_ffi.so / libtvm_runtime.so


def find_cxx() -> str:
    """The aarch64 C++ cross compiler (``$CACC_ARM_CXX`` or ``aarch64-linux-gnu-g++``)."""
    name = os.environ.get("CACC_ARM_CXX", "aarch64-linux-gnu-g++")
    path = shutil.which(name)
    if path is None:
        raise BackendError(f"ARM target: the cross compiler '{name}' is not installed; run: {APT_HINT}")
    return path


def find_qemu() -> tuple[str, str]:
    """(qemu-aarch64, sysroot) for emulated runs; BackendError naming the packages otherwise."""
    qemu = shutil.which(os.environ.get("CACC_ARM_QEMU", "qemu-aarch64"))
    if qemu is None:
        raise BackendError(f"ARM target: qemu-aarch64 is not installed (needed without an RPC board); run: {APT_HINT}")
    sysroot = os.environ.get("CACC_ARM_SYSROOT", "/usr/aarch64-linux-gnu")
    if not (Path(sysroot) / "lib" / "ld-linux-aarch64.so.1").exists():
        raise BackendError(f"ARM target: no aarch64 libc under {sysroot} for qemu; run: {APT_HINT}")
    return qemu, sysroot


def extract_runtime_libs(wheel_dir: Path, lib_dir: Path) -> None:
    """Unpack the aarch64 runtime libraries from the wheels in ``wheel_dir`` into ``lib_dir``."""
    lib_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("*aarch64*.whl"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member, name in _WHEEL_MEMBERS.items():
                if member in zf.namelist():
                    tmp = lib_dir / (name + ".tmp")
                    tmp.write_bytes(zf.read(member))
                    tmp.chmod(0o755)
                    tmp.replace(lib_dir / name)


def runtime_lib_dir() -> Path:
    """The folder with the aarch64 TVM runtime libraries (unpacked from cached wheels if needed)."""
    lib_dir = cache_dir() / "lib"
    if not all((lib_dir / n).exists() for n in RUNTIME_LIBS) and (cache_dir() / "wheels").is_dir():
        extract_runtime_libs(cache_dir() / "wheels", lib_dir)
    missing = [n for n in RUNTIME_LIBS if not (lib_dir / n).exists()]
    if missing:
        raise BackendError(
            f"ARM target: the aarch64 TVM runtime libraries ({', '.join(missing)}) are not in {lib_dir}; "
            f"run: {SETUP_HINT} (downloads the aarch64 wheels {TVM_WHEEL} and {FFI_WHEEL} from PyPI)"
        )
    return lib_dir


def download_wheels(dest: Path) -> None:
    """``pip download`` the aarch64 wheels of the installed TVM / TVM-FFI versions into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    for p in platforms:
        cmd += ["--platform", p]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    cmd += ["--python-version", py, TVM_WHEEL, FFI_WHEEL, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackendError(f"downloading the aarch64 TVM wheels failed:\n{proc.stderr.strip()[-2000:]}")


def _include_dirs() -> list[str]:
    dirs = [Path(tvm.__file__).parent / "include", Path(tvm_ffi.__file__).parent / "include"]
    for d in dirs:
        if not d.is_dir():
            raise BackendError(f"ARM target: TVM headers not found at {d} (the installed tvm package lacks them)")
    return [str(d) for d in dirs]


def runner_path(cxx: str | None = None, lib_dir: Path | None = None) -> Path:
    """The aarch64 runner binary, compiled on first use (keyed by a hash of its source)."""
    source = RUNNER_SOURCE.read_bytes()
    digest = hashlib.sha256(source + tvm.__version__.encode()).hexdigest()[:12]
    out = cache_dir() / "bin" / f"cacc_arm_runner-{digest}"
    if out.exists():
        return out
    cxx = cxx or find_cxx()
    lib_dir = lib_dir or runtime_lib_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    cmd = [cxx, "-std=c++17", "-O2", str(RUNNER_SOURCE), "-o", str(tmp)]
    cmd += [f"-I{d}" for d in _include_dirs()]
    cmd += [f"-L{lib_dir}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackendError(f"building the ARM runner failed ({' '.join(cmd)}):\n{proc.stderr.strip()[-3000:]}")
    tmp.replace(out)
    return out


def toolchain(*, need_qemu: bool = True) -> Toolchain:
    """Check the ARM toolchain; BackendError saying exactly what to install when something is missing."""
    cxx = find_cxx()
    qemu, sysroot = find_qemu() if need_qemu else (shutil.which("qemu-aarch64"), "/usr/aarch64-linux-gnu")
    return Toolchain(cxx=cxx, qemu=qemu, sysroot=sysroot, lib_dir=runtime_lib_dir())


def setup(download: bool = True) -> Path:
    """Fetch the wheels (when ``download``), unpack the libraries, build the runner; returns the runner."""
    find_cxx()
    wheels = cache_dir() / "wheels"
    if not all((cache_dir() / "lib" / n).exists() for n in RUNTIME_LIBS):
        have = {p.name.split("-")[0] for p in wheels.glob("*aarch64*.whl")} if wheels.is_dir() else set()
        if download and not {"apache_tvm", "apache_tvm_ffi"} <= have:
            download_wheels(wheels)
        extract_runtime_libs(wheels, cache_dir() / "lib")
    return runner_path()


def main() -> int:
    """CLI: set up the ARM target; prints the runner's path."""
    try:
        runner = setup()
        find_qemu()
    except BackendError as exc:
        print(f"ARM setup: {exc}", file=sys.stderr)
        return 1
    print(f"ARM target ready: runner {runner}, libraries {cache_dir() / 'lib'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
