"""A persistent, shippable database of MetaSchedule tuning records (one JSON-lines file).

File format (``records.jsonl`` in the database directory, or any exported file)::

    {"format": "cacc-tuning", "version": 1}
    {"workload": "<structural hash>", "task": "fused_matmul_relu", "target": "llvm -mcpu=znver3",
     "run_secs": [1.2e-05, ...] | null, "trace": [[instructions], [decisions]], "args_info": [...]}

A record of one of cacc's hand-written kernels (see :mod:`backends.tvm.schedules.choice`) has no
MetaSchedule trace: ``"trace": [[], []], "args_info": []`` plus ``"tile": {"mr": 6, "nb": 16, ...}``,
the knobs it was measured with; its workload is a hash of the kernel's description (kind and shapes).

A record names its workload by the structural hash of the task's TIR module (the module itself is
never stored or deserialized: it is re-derived from the model being compiled) and its target by
:func:`target_key`. ``run_secs`` is ``null`` for a failed trial (it still counts toward a budget).
Records are appended and flushed one at a time, so an interrupted tuning run keeps what it measured
(a file cut off mid-line is reported, not silently repaired). Every line is checked structurally
before any of it reaches TVM; a bad line raises
:class:`~compiler.errors.SerializationError` naming the file and the line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import SerializationError

FORMAT = "cacc-tuning"
VERSION = 1
HEADER = {"format": FORMAT, "version": VERSION}
RECORDS_FILE = "records.jsonl"
#: Shipped record files, ``<model>_<backend>_<mcpu>.jsonl`` (merged read-only into every database).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "models" / "tuning"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cacc/tuning`` (default ``~/.cache/cacc/tuning``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cacc" / "tuning"


def target_key(target: Any) -> str:
    """What a record's target is matched on: kind, triple and CPU (``llvm -mcpu=znver3``), not the core count."""
    kind = target.kind.name
    parts = [kind]
    for attr in ("mtriple", "mcpu", "arch"):
        value = target.attrs.get(attr)
        if value:
            parts.append(f"-{attr}={value}")
    return " ".join(parts)


@dataclass(frozen=True)
class Record:
    """One measured trial: workload hash, target key, run times (None: failed), trace and args JSON."""

    workload: str
    task: str
    target: str
    run_secs: tuple[float, ...] | None
    trace: Any
    args_info: Any
    source: str = ""  #: ``file:line`` it was read from (for error messages)
    tile: dict[str, int] | None = None  #: a hand kernel's knobs (then ``trace`` is empty)

    @property
    def latency(self) -> float:
        """Mean run time in seconds (``inf`` for a failed trial)."""
        return sum(self.run_secs) / len(self.run_secs) if self.run_secs else math.inf

    def to_json(self) -> dict[str, Any]:
        """The JSON object written on one line."""
        return {
            "workload": self.workload,
            "task": self.task,
            "target": self.target,
            "run_secs": list(self.run_secs) if self.run_secs is not None else None,
            "trace": self.trace,
            "args_info": self.args_info,
            **({"tile": self.tile} if self.tile is not None else {}),
        }


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_trace(trace: Any) -> str | None:
    """Why ``trace`` is not a MetaSchedule trace JSON (``[[inst, ...], [[index, decision], ...]]``), or None."""
    if not isinstance(trace, list) or len(trace) != 2 or not all(isinstance(p, list) for p in trace):
        return "'trace' must be [instructions, decisions]"
    insts, decisions = trace
    for inst in insts:
        if (
            not isinstance(inst, list)
            or len(inst) != 4
            or not isinstance(inst[0], str)
            or not all(isinstance(p, list) for p in inst[1:])
        ):
            return f"bad trace instruction {json.dumps(inst)[:80]}"
    for dec in decisions:
        if not isinstance(dec, list) or len(dec) != 2 or not isinstance(dec[0], int) or not 0 <= dec[0] < len(insts):
            return f"bad trace decision {json.dumps(dec)[:80]}"
    return None


def _check_args_info(args: Any) -> str | None:
    if not isinstance(args, list):
        return "'args_info' must be a list"
    for a in args:
        if (
            not isinstance(a, list)
            or len(a) != 3
            or a[0] != "TENSOR"
            or not isinstance(a[1], str)
            or not isinstance(a[2], list)
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in a[2])
        ):
            return f"bad args_info entry {json.dumps(a)[:80]}"
    return None


def parse_record(obj: Any, source: str) -> Record:
    """Validate one decoded JSON line and turn it into a :class:`Record`."""
    if not isinstance(obj, dict):
        raise SerializationError(f"{source}: a tuning record must be a JSON object")
    missing = [k for k in ("workload", "target", "run_secs", "trace", "args_info") if k not in obj]
    if missing:
        raise SerializationError(f"{source}: tuning record lacks {', '.join(missing)}")
    workload, target, task = obj["workload"], obj["target"], obj.get("task", "")
    if not isinstance(workload, str) or not workload.isdigit():
        raise SerializationError(f"{source}: 'workload' must be a structural hash (a string of digits)")
    if not isinstance(target, str) or not target or not isinstance(task, str):
        raise SerializationError(f"{source}: 'target' and 'task' must be strings")
    run_secs = obj["run_secs"]
    if run_secs is not None and (
        not isinstance(run_secs, list) or not run_secs or not all(_is_number(s) and s >= 0 for s in run_secs)
    ):
        raise SerializationError(f"{source}: 'run_secs' must be null or a non-empty list of seconds")
    problem = _check_trace(obj["trace"]) or _check_args_info(obj["args_info"])
    tile = obj.get("tile")
    if tile is not None and (
        not isinstance(tile, dict)
        or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in tile.items())
    ):
        problem = "'tile' must be an object of integer knobs"
    if problem:
        raise SerializationError(f"{source}: {problem}")
    return Record(
        workload,
        task,
        target,
        tuple(float(s) for s in run_secs) if run_secs is not None else None,
        obj["trace"],
        obj["args_info"],
        source,
        dict(tile) if tile is not None else None,
    )


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """All records of a cacc tuning file; SerializationError (file and line) on anything else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SerializationError(f"cannot read tuning records {path}: {exc}") from exc
    records: list[Record] = []
    lines = text.splitlines()
    if not lines:
        return records
    for number, line in enumerate(lines, start=1):
        source = f"{path}:{number}"
        if not line.strip() and number > 1:
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SerializationError(f"{source}: not valid JSON ({exc})") from exc
        if number == 1:
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise SerializationError(f"{source}: not a cacc tuning file (expected the header {json.dumps(HEADER)})")
            if obj.get("version") != VERSION:
                raise SerializationError(f"{source}: unsupported cacc tuning file version {obj.get('version')!r}")
            continue
        records.append(parse_record(obj, source))
    return records


def write_records(path: str | os.PathLike[str], records: Iterable[Record]) -> Path:
    """Write ``records`` as a new cacc tuning file (header first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(HEADER) + "\n")
        for r in records:
            f.write(json.dumps(r.to_json(), separators=(",", ":")) + "\n")
    return path


def shipped_files(target_suffix: str | None = None) -> list[Path]:
    """The record files shipped with cacc (optionally only those ending in ``_<target_suffix>.jsonl``)."""
    if not SHIPPED_DIR.is_dir():
        return []
    pattern = f"*_{target_suffix}.jsonl" if target_suffix else "*.jsonl"
    return sorted(SHIPPED_DIR.glob(pattern))


class TuningDatabase:
    """Tuning records in a directory (``records.jsonl``, appended to) plus read-only extra files.

    ``directory=None`` uses :func:`default_cache_dir`; ``extra_files`` (e.g. :func:`shipped_files`)
    are merged in but never written.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, extra_files: Sequence[Path] = ()) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.directory / RECORDS_FILE
        self.extra_files = [Path(p) for p in extra_files]
        self._records: list[Record] | None = None

    @property
    def records(self) -> list[Record]:
        """Every record (extra files first, then the directory's file), read on first use."""
        if self._records is None:
            loaded: list[Record] = []
            for p in [*self.extra_files, self.path]:
                if p.exists():
                    loaded.extend(read_records(p))
            self._records = loaded
        return self._records

    def for_workload(self, workload: str, target: str) -> list[Record]:
        """The records of one workload on one target (target as :func:`target_key`)."""
        return [r for r in self.records if r.workload == workload and r.target == target]

    def trials(self, workload: str, target: str) -> int:
        """How many trials (failed ones included) were measured for this workload and target."""
        return len(self.for_workload(workload, target))

    def best(self, workload: str, target: str) -> Record | None:
        """The fastest successful record, or None."""
        ok = [r for r in self.for_workload(workload, target) if r.run_secs]
        return min(ok, key=lambda r: r.latency) if ok else None

    def append(self, record: Record) -> None:
        """Append ``record`` to the directory's file and flush it (header written for a new file)."""
        records = self.records
        self.directory.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps(HEADER) + "\n")
            f.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
            f.flush()
        records.append(record)

    def export(self, path: str | os.PathLike[str], target: str | None = None, *, best_only: int = 0) -> Path:
        """Write the records (of ``target`` only, when given) to one shippable file.

        ``best_only=k`` keeps the ``k`` fastest successful records per workload (0: everything).
        """
        chosen = [r for r in self.records if target is None or r.target == target]
        if best_only > 0:
            groups: dict[tuple[str, str], list[Record]] = {}
            for r in chosen:
                if r.run_secs:
                    groups.setdefault((r.workload, r.target), []).append(r)
            chosen = [r for g in groups.values() for r in sorted(g, key=lambda r: r.latency)[:best_only]]
        return write_records(path, chosen)

    def import_file(self, path: str | os.PathLike[str]) -> int:
        """Append the records of a cacc tuning file (validated first); returns how many were added."""
        incoming = read_records(path)
        have = {(r.workload, r.target, json.dumps(r.trace), json.dumps(r.tile)) for r in self.records}
        added = 0
        for r in incoming:
            key = (r.workload, r.target, json.dumps(r.trace), json.dumps(r.tile))
            if key not in have:
                self.append(r)
                have.add(key)
                added += 1
        return added

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"TuningDatabase({str(self.directory)!r}, extra_files={[str(p) for p in self.extra_files]})"


def open_database(directory: str | os.PathLike[str] | None = None) -> TuningDatabase:
    """The database ``compile`` uses: ``directory`` (default :func:`default_cache_dir`) plus every
    shipped record file (``models/tuning/*.jsonl``; records of other targets are ignored at lookup)."""
    return TuningDatabase(directory, extra_files=shipped_files())
