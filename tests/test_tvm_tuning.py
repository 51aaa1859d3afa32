"""TVM auto-tuning: records are produced, applied, reused, resumed; bad record files are rejected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from backends.tvm import build, host_target
from backends.tvm.database import TuningDatabase, read_records, target_key
from compiler.errors import SerializationError
from tests.test_tvm_helpers import make_model, rand, to_ir

tuning = pytest.importorskip("backends.tvm.tuning")

X = rand(64, 256)


def _model():  # type: ignore[no-untyped-def]
    # A generic kernel (softmax over the first axis + multiply): matmul/conv and last-axis softmax get cacc's
    # hand-scheduled kernels, which are not tuned.
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=0), helper.make_node("Mul", ["s", "x"], ["y"])]
    return to_ir(make_model(nodes, {"x": X}, ["y"], {}))


def _expected() -> np.ndarray:
    e = np.exp(X - X.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True) * X


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding 8 trials of the softmax+multiply kernel (tuned once for the module)."""
    d = tmp_path_factory.mktemp("tuned")
    summary = tuning.tune_model(_model(), host_target(2), TuningDatabase(d), trials=8, progress=False)
    assert summary.trials == 8 and summary.tuned == ["fused_softmax_multiply"]
    return d


def test_tuning_records_and_applies_a_faster_kernel(tuned_dir: Path) -> None:
    target = host_target(2)
    records = read_records(tuned_dir / "records.jsonl")
    assert len(records) == 8
    assert {r.target for r in records} == {target_key(target)}
    ok = [r for r in records if r.run_secs]
    assert ok, "no trial succeeded"
    model = _model()
    plain = build(model, target, num_threads=2)
    tuned = build(model, target, num_threads=2, database=TuningDatabase(tuned_dir))
    np.testing.assert_allclose(tuned.run({"x": X})[0], _expected(), rtol=1e-4, atol=1e-4)
    t_plain = min(plain.benchmark({"x": X}, repeat=50) for _ in range(3))
    t_tuned = min(tuned.benchmark({"x": X}, repeat=50) for _ in range(3))
    assert t_tuned <= t_plain * 1.5, (t_tuned, t_plain)  # the machine is shared: allow noise


def test_second_tuning_reuses_records(tuned_dir: Path) -> None:
    db = TuningDatabase(tuned_dir)
    summary = tuning.tune_model(_model(), host_target(2), db, trials=8, progress=False)
    assert summary.trials == 0 and summary.tuned == []
    assert len(read_records(tuned_dir / "records.jsonl")) == 8


def test_compile_reuses_records_without_tuning(tuned_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import compiler

    def no_tuning(*_a: object, **_k: object) -> None:
        raise AssertionError("tuned again")

    monkeypatch.setattr(tuning.ms, "tune_tasks", no_tuning)  # the MetaSchedule search itself
    cm = compiler.compile(
        _model(), target="x86", passes=[], num_threads=2, measure=False, tune_trials=8, tuning_db=tuned_dir
    )
    np.testing.assert_allclose(cm.run({"x": X})["y"], _expected(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # a second tuning run (~30 s on 2 busy cores)
def test_resume_after_interrupt(tuned_dir: Path, tmp_path: Path) -> None:
    """Keep 3 of the 8 trials (as if stopped midway): a re-run measures only the 5 missing."""
    lines = (tuned_dir / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text("\n".join(lines[:4]) + "\n")
    db = TuningDatabase(tmp_path)
    summary = tuning.tune_model(_model(), host_target(2), db, trials=8, progress=False)
    assert summary.trials == 5
    assert len(read_records(tmp_path / "records.jsonl")) == 8


def test_export_import_roundtrip(tuned_dir: Path, tmp_path: Path) -> None:
    src = TuningDatabase(tuned_dir)
    shipped = src.export(tmp_path / "ship.jsonl", best_only=1)
    (best,) = read_records(shipped)
    dst = TuningDatabase(tmp_path / "db")
    assert dst.import_file(shipped) == 1 and dst.import_file(shipped) == 0
    mine, theirs = dst.best(best.workload, best.target), src.best(best.workload, best.target)
    assert mine is not None and theirs is not None
    assert (mine.trace, mine.run_secs) == (theirs.trace, theirs.run_secs) == (best.trace, best.run_secs)


def _bad_file(tmp_path: Path, tuned_dir: Path, kind: str) -> Path:
    lines = (tuned_dir / "records.jsonl").read_text().splitlines()
    path = tmp_path / "records.jsonl"
    if kind == "truncated":
        path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    elif kind == "foreign":  # TVM's own JSONDatabase record format
        path.write_text(json.dumps([0, [[["GetSBlock", [], ["b", "main"], ["b0"]]], []], [1e-5]]) + "\n")
    elif kind == "bad_trace":
        rec = json.loads(lines[1])
        rec["trace"] = [[["GetSBlock", [], ["no_such_block", "main"], ["b0"]]], []]
        rec["run_secs"] = [1e-9]
        path.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    elif kind == "bad_field":
        rec = json.loads(lines[1])
        rec["run_secs"] = "fast"
        path.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    return path


@pytest.mark.parametrize(("kind", "line"), [("truncated", 4), ("foreign", 1), ("bad_field", 2), ("bad_trace", 2)])
def test_bad_record_files_raise_serialization_error(tuned_dir: Path, tmp_path: Path, kind: str, line: int) -> None:
    path = _bad_file(tmp_path, tuned_dir, kind)
    with pytest.raises(SerializationError, match=rf"{path.name}:{line}"):
        build(_model(), host_target(2), num_threads=2, database=TuningDatabase(tmp_path))


def test_shipped_file_is_read_only(tuned_dir: Path, tmp_path: Path) -> None:
    extra = tmp_path / "ship.jsonl"
    shutil.copy(tuned_dir / "records.jsonl", extra)
    db = TuningDatabase(tmp_path / "cache", extra_files=[extra])
    summary = tuning.tune_model(_model(), host_target(2), db, trials=8, progress=False)
    assert summary.trials == 0
    assert not (tmp_path / "cache" / "records.jsonl").exists()


# -- hand-kernel tile search ------------------------------------------------------------------------

A, W = rand(8, 16, seed=40), rand(16, 24, seed=41)


def _dense_model():  # type: ignore[no-untyped-def]
    return to_ir(make_model([helper.make_node("MatMul", ["a", "w"], ["y"])], {"a": A}, ["y"], {"w": W}))


@pytest.fixture(scope="module")
def tile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding the tile search of the dense kernel of :func:`_dense_model`."""
    from backends.tvm.kernel_tuning import tune_kernels

    d = tmp_path_factory.mktemp("tiles")
    summary = tune_kernels(_dense_model(), host_target(2), TuningDatabase(d), progress=False)
    assert summary.kernels == 1 and summary.trials >= 2
    return d


def test_tile_search_records_every_candidate_and_resumes(tile_dir: Path) -> None:
    from backends.tvm.kernel_tuning import collect_kernels, tune_kernels
    from backends.tvm.schedules.choice import tile_json

    (wl,) = collect_kernels(_dense_model(), host_target(2))
    records = read_records(tile_dir / "records.jsonl")
    assert {r.workload for r in records} == {wl.workload}
    assert {tile_json(r.tile) for r in records if r.tile} == {tile_json(t) for t in wl.candidates}
    assert len(records) == len(wl.candidates)
    assert all(r.run_secs for r in records), "a candidate tile failed to build or run"
    again = tune_kernels(_dense_model(), host_target(2), TuningDatabase(tile_dir), progress=False)
    assert again.trials == 0


def test_compile_uses_the_fastest_recorded_tile(tile_dir: Path, tmp_path: Path) -> None:
    """A record making a non-default tile the fastest is what the lowering picks (and it is exact)."""
    import compiler
    from backends.tvm.database import Record
    from backends.tvm.kernel_tuning import DatabaseTiles, collect_kernels
    from backends.tvm.schedules.choice import choose_tile, tile_json, tile_source

    target = host_target(2)
    (wl,) = collect_kernels(_dense_model(), target)
    pick = wl.candidates[-1]
    assert tile_json(pick) != tile_json(wl.default)
    shutil.copy(tile_dir / "records.jsonl", tmp_path / "records.jsonl")
    db = TuningDatabase(tmp_path)
    db.append(Record(wl.workload, wl.key, target_key(target), (1e-12,), [[], []], [], tile=pick))
    with tile_source(DatabaseTiles(TuningDatabase(tmp_path), target)):
        assert choose_tile(wl) == pick
    cm = compiler.compile(_dense_model(), target="x86", passes=[], num_threads=2, measure=False, tuning_db=tmp_path)
    np.testing.assert_allclose(cm.run({"a": A})["y"], A @ W, rtol=1e-5, atol=1e-5)


def test_bad_tile_record_raises_serialization_error(tile_dir: Path, tmp_path: Path) -> None:
    lines = (tile_dir / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["tile"] = {"mr": "six"}
    (tmp_path / "records.jsonl").write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    with pytest.raises(SerializationError, match=r"records.jsonl:2: 'tile'"):
        read_records(tmp_path / "records.jsonl")
