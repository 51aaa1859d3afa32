"""Auto-tuning of the fused TIR kernels with MetaSchedule, recorded in a :class:`TuningDatabase`.

Tasks are the fused PrimFuncs of the lowered Relax module (the functions ``build`` schedules).
Each task is tuned in turn, within the user's budget (trials and/or minutes, shared equally by the
tasks). Candidates are built and timed *in this process* (MetaSchedule's LocalBuilder starts fresh
worker processes that each pay a ~1 min import and time out), and each measurement is appended to
the database as it arrives, so an interrupted run resumes where it stopped: trials already recorded
for a task count toward its budget.
"""

from __future__ import annotations

import math
import os
import sys
import time
import types
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
import tvm
import tvm_ffi

from backends.tvm.database import Record, TuningDatabase, target_key
from compiler.errors import BackendError, SerializationError


def _skip_tensor_intrin_import() -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` a no-op.

    MetaSchedule imports it in every TuneContext and build; it registers tensor intrinsics for
    CUDA, ARM, Hexagon, ... by parsing TVMScript (~1 min) and none of them serve an x86 float
    kernel (x86's are int8 VNNI/AVX-512 dot products). Submodules stay importable.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    stub = types.ModuleType(name, "cacc: tensor intrinsics not registered (submodules import on demand)")
    stub.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
    sys.modules[name] = stub
    tvm.s_tir.tensor_intrin = stub  # type: ignore[attr-defined]


_skip_tensor_intrin_import()

from tvm.ir.utils import derived_object  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder  # noqa: E402
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner, PyRunnerFuture, RunnerResult  # noqa: E402
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common  # noqa: E402


def workload_hash(mod: tvm.IRModule) -> str:
    """The structural hash naming a task's TIR module in the database."""
    return str(tvm_ffi.structural_hash(mod))


@dataclass
class Task:
    """One tunable kernel: a fused PrimFunc (as a ``{"main": func}`` module) and how often it runs."""

    name: str
    mod: tvm.IRModule
    weight: int
    workload: str


def extract_tasks(fused: tvm.IRModule, target: tvm.target.Target) -> list[Task]:
    """The distinct fused PrimFuncs of a legalized, fused Relax module (identical kernels merged),
    leaving out kernels that are already scheduled (see :func:`_hand_scheduled`)."""
    try:
        extracted = ms.relax_integration.extract_tasks(fused, target)
    except Exception as exc:
        raise BackendError(f"MetaSchedule task extraction failed: {exc}") from exc
    tasks = []
    for t in extracted:
        mod = t.dispatched[0]
        if any(_hand_scheduled(func) for func in mod.functions.values()):
            continue
        tasks.append(Task(str(t.task_name), mod, int(t.weight), workload_hash(mod)))
    return tasks


def _hand_scheduled(func: object) -> bool:
    """Already scheduled, or one of cacc's hand kernels (register-tiled ``cacc.kernel``, integer
    ``cacc.qkernel``, row-wise softmax ``cacc.rowwise``), whose hand schedule beats what a generic
    search finds in a practical budget: not a tuning task."""
    from backends.tvm.schedules.qgemm import QKERNEL_ATTR
    from backends.tvm.schedules.rowwise import ROWWISE_ATTR
    from backends.tvm.schedules.tiled import KERNEL_ATTR

    attrs = getattr(func, "attrs", None)
    hand = ("tirx.is_scheduled", KERNEL_ATTR, QKERNEL_ATTR, ROWWISE_ATTR)
    return attrs is not None and any(a in attrs for a in hand)


def fused_module(model: ir.Model | tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The Relax module of ``model`` after legalization and fusion (what the schedules apply to)."""
    from backends.tvm.relax_emitter import emit_relax
    from backends.tvm.runtime import fusion_passes

    mod = emit_relax(model) if isinstance(model, ir.Model) else model
    with target:
        return tvm.transform.Sequential(fusion_passes(target))(mod)


def tvm_database(db: TuningDatabase, tasks: Sequence[Task], target: tvm.target.Target, top_k: int = 8) -> Any:
    """A MetaSchedule MemoryDatabase holding the ``top_k`` best records of each task for ``target``.

    Each record's trace is replayed on its task before it is committed, so a damaged record
    raises :class:`SerializationError` (naming its file and line) rather than failing later.
    """
    mdb = ms.database.MemoryDatabase()
    key = target_key(target)
    target_json = None
    for task in tasks:
        ok = (r for r in db.for_workload(task.workload, key) if r.run_secs and r.tile is None)
        records = sorted(ok, key=lambda r: r.latency)
        if not records:
            continue
        workload = mdb.commit_workload(task.mod)
        for r in records[:top_k]:
            try:
                if target_json is None:
                    target_json = _target_json(target, task, workload)
                rec = ms.database.TuningRecord.from_json(
                    [r.trace, list(r.run_secs or ()), target_json, r.args_info], workload
                )
                sch = tvm.s_tir.Schedule(task.mod)
                rec.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception as exc:
                raise SerializationError(
                    f"{r.source}: tuning record does not apply to task {task.name}: {exc}"
                ) from exc
            mdb.commit_tuning_record(rec)
    return mdb


def _target_json(target: tvm.target.Target, task: Task, workload: Any) -> Any:
    """The target as TuningRecord JSON stores it."""
    trace = tvm.s_tir.Schedule(task.mod).trace
    return ms.database.TuningRecord(trace, workload, None, target, None).as_json()[2]


# -- in-process builder and runner ---------------------------------------------------------------

_ARTIFACTS: dict[str, Any] = {}


@derived_object
class InProcessBuilder(PyBuilder):
    """Builds candidates with ``tvm.compile`` in this process; artifacts stay in memory."""

    def build(self, build_inputs: list[Any]) -> list[Any]:
        """Compile each candidate; an exception becomes that candidate's error message."""
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        results = []
        for inp in build_inputs:
            try:
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(inp.mod)
                rt_mod = tvm_build(mod, target=inp.target)
                token = f"cacc-in-process-{uuid.uuid4().hex}"
                _ARTIFACTS[token] = rt_mod
                results.append(BuilderResult(token, None))
            except Exception as exc:
                results.append(BuilderResult(None, f"{type(exc).__name__}: {exc}"))
        return results


@derived_object
class _Done(PyRunnerFuture):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self._result


@derived_object
class InProcessRunner(PyRunner):
    """Times built candidates on the CPU in this process (random inputs, no cache flush)."""

    def __init__(self, number: int = 3, repeat: int = 1, min_repeat_ms: int = 30) -> None:
        super().__init__()
        self.config = EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        self.fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)

    def run(self, runner_inputs: list[Any]) -> list[Any]:
        """Run each candidate; returns already-finished futures."""
        dev = tvm.cpu(0)
        futures = []
        for inp in runner_inputs:
            rt_mod = _ARTIFACTS.pop(str(inp.artifact_path), None)
            try:
                if rt_mod is None:
                    raise BackendError(f"no built artifact {inp.artifact_path}")
                args_info = [a.as_json() for a in inp.args_info]
                args = alloc_argument_common(self.fill or _zero_fill, dev, args_info, 1)
                costs = run_evaluator_common(rt_mod, dev, self.config, args)
                futures.append(_Done(RunnerResult(costs, None)))
            except Exception as exc:
                futures.append(_Done(RunnerResult(None, f"{type(exc).__name__}: {exc}")))
        return futures


def _zero_fill(_arr: Any) -> None:
    return None


# -- recording and progress -------------------------------------------------------------------------


class _BudgetExhausted(Exception):
    pass


@derived_object
class RecordAndReport(ms.measure_callback.PyMeasureCallback):
    """Commits every measurement to the MetaSchedule database and appends it to the cacc database."""

    def __init__(self, db: TuningDatabase, task: Task, target: tvm.target.Target, progress: Any, deadline: float):
        super().__init__()
        self.db, self.task, self.target, self.progress, self.deadline = db, task, target, progress, deadline
        self.key = target_key(target)
        self.measured = 0
        self.stopped = False

    def apply(self, task_scheduler: Any, task_id: int, candidates: Any, builds: Any, runs: Any) -> None:
        """Record each candidate of a batch; stop the search once the time budget is spent."""
        mdb = task_scheduler.database_
        workload = mdb.commit_workload(self.task.mod)
        for cand, build_res, run_res in zip(candidates, builds, runs, strict=True):
            ok = build_res.error_msg is None and run_res.error_msg is None and run_res.run_secs
            if not ok and os.environ.get("CACC_TUNE_DEBUG"):
                print("FAIL", build_res.error_msg, run_res.error_msg, file=sys.stderr)
            run_secs = [float(s) for s in run_res.run_secs] if ok else None
            rec = ms.database.TuningRecord(cand.sch.trace, workload, run_secs, self.target, cand.args_info)
            if run_secs is not None:
                mdb.commit_tuning_record(rec)
            as_json = rec.as_json()
            self.db.append(
                Record(self.task.workload, self.task.name, self.key, tuple(run_secs) if run_secs else None,
                       as_json[0], as_json[3])
            )  # fmt: skip
            self.measured += 1
            _ARTIFACTS.pop(str(build_res.artifact_path), None)
            if self.progress is not None:
                self.progress.update(1)
                best = self.db.best(self.task.workload, self.key)
                self.progress.set_postfix_str(
                    f"{self.task.name[:32]} best {best.latency * 1e6:.1f} us" if best else self.task.name[:32]
                )
        if time.monotonic() > self.deadline:
            self.stopped = True
            raise _BudgetExhausted("time budget spent")


# -- the tuning loop ------------------------------------------------------------------------------


@dataclass
class TuneSummary:
    """What a tuning run did."""

    tasks: int = 0
    tuned: list[str] = field(default_factory=list)  #: tasks that got new trials
    trials: int = 0  #: trials measured in this run
    seconds: float = 0.0
    stopped_early: bool = False  #: the minutes budget ran out
    kernel_trials: int = 0  #: hand-kernel tile candidates measured in this run (not in ``trials``)

    def __str__(self) -> str:
        tiles = f", {self.kernel_trials} kernel tile trials" if self.kernel_trials else ""
        return (
            f"tuned {len(self.tuned)}/{self.tasks} tasks, {self.trials} new trials{tiles} in {self.seconds:.1f} s"
            + (" (time budget reached)" if self.stopped_early else "")
        )


def _space_generator(target: tvm.target.Target) -> Any:
    """MetaSchedule's post-order search space with the generic rules for ``target``'s kind. On a CPU with VNNI or
    AVX-512, TVM's default rules tensorize with its own intrinsics (``dot_16x4_vnni``), which exist only once
    ``tvm.s_tir.tensor_intrin`` is imported (~55 s): cacc's integer kernels bring their own, so the plain LLVM
    rules apply everywhere."""
    if target.kind.name != "llvm":
        return "post-order-apply"
    return ms.space_generator.PostOrderApply(
        sch_rules=ms.ScheduleRule.create("llvm"),
        postprocs=ms.Postproc.create("llvm"),
        mutator_probs=ms.Mutator.create("llvm"),
    )


def _cost_model() -> Any:
    try:
        import xgboost  # noqa: F401

        return ms.cost_model.XGBModel(num_tuning_cores=os.cpu_count() or 1)
    except Exception:
        return ms.cost_model.RandomModel()


def tune_tasks(
    tasks: Sequence[Task],
    target: tvm.target.Target,
    db: TuningDatabase,
    *,
    trials: int = 0,
    minutes: float | None = None,
    progress: bool = True,
    seed: int = 0,
    population: int = 128,
) -> TuneSummary:
    """Tune ``tasks`` for ``target``, recording into ``db``.

    ``trials`` is the total for all tasks (shared equally); ``minutes`` caps the wall time (shared
    equally by the tasks still to tune). Trials already in ``db`` count toward each task's share,
    so a re-run resumes and a finished budget tunes nothing.
    """
    if trials < 0 or (minutes is not None and minutes <= 0):
        raise BackendError(f"tuning budget must be positive (trials={trials}, minutes={minutes})")
    if trials == 0 and minutes is None:
        return TuneSummary(tasks=len(tasks))
    start = time.monotonic()
    key = target_key(target)
    per_task = math.ceil(trials / len(tasks)) if trials and tasks else 256  # minutes only: time decides
    todo = [(t, per_task - db.trials(t.workload, key)) for t in tasks]
    todo = [(t, n) for t, n in todo if n > 0]
    summary = TuneSummary(tasks=len(tasks))
    if not todo:
        return summary
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(n for _, n in todo), desc="tuning", unit="trial", disable=not progress, leave=True)
    builder, runner = InProcessBuilder(), InProcessRunner()
    try:
        for i, (task, remaining) in enumerate(todo):
            if minutes is not None:
                left = minutes * 60 - (time.monotonic() - start)
                if left <= 0:
                    summary.stopped_early = True
                    break
                deadline = time.monotonic() + left / (len(todo) - i)
            else:
                deadline = math.inf
            mdb = tvm_database(db, [task], target)
            ctx = ms.TuneContext(
                mod=task.mod,
                target=target,
                space_generator=_space_generator(target),
                search_strategy=ms.search_strategy.EvolutionarySearch(population_size=population),
                task_name=task.name,
                rand_state=seed + i,
                num_threads=os.cpu_count() or 1,
            ).clone()
            callback = RecordAndReport(db, task, target, bar, deadline)
            try:
                ms.tune_tasks(
                    tasks=[ctx],
                    task_weights=[float(task.weight)],
                    work_dir=str(db.directory),
                    max_trials_global=remaining,
                    max_trials_per_task=remaining,
                    num_trials_per_iter=min(remaining, 32),
                    builder=builder,
                    runner=runner,
                    database=mdb,
                    cost_model=_cost_model(),
                    measure_callbacks=[callback, ms.measure_callback.UpdateCostModel()],
                    task_scheduler="round-robin",
                )
            except Exception as exc:
                if not callback.stopped:
                    raise BackendError(f"tuning task {task.name} failed: {exc}") from exc
            if callback.measured:
                summary.tuned.append(task.name)
                summary.trials += callback.measured
            if callback.measured < remaining:  # the search space ran dry or time ran out
                bar.total -= remaining - callback.measured
                bar.refresh()
    finally:
        bar.close()
        _ARTIFACTS.clear()
    summary.seconds = time.monotonic() - start
    summary.stopped_early = summary.stopped_early or (minutes is not None and summary.seconds >= minutes * 60)
    return summary


def tune_model(
    model: ir.Model,
    target: tvm.target.Target,
    db: TuningDatabase,
    *,
    trials: int = 0,
    minutes: float | None = None,
    progress: bool = True,
    seed: int = 0,
) -> TuneSummary:
    """Tune the tiles of ``model``'s hand kernels (:func:`backends.tvm.kernel_tuning.tune_kernels`, a
    small exhaustive search, capped only by ``minutes``), then its other kernels (see :func:`tune_tasks`)."""
    from backends.tvm.kernel_tuning import tune_kernels

    if trials < 0 or (minutes is not None and minutes <= 0):
        raise BackendError(f"tuning budget must be positive (trials={trials}, minutes={minutes})")
    start = time.monotonic()
    deadline = start + minutes * 60 if minutes is not None else math.inf
    kernels = tune_kernels(model, target, db, deadline=deadline, progress=progress)
    left = None if minutes is None else minutes - (time.monotonic() - start) / 60
    if left is not None and left <= 0:
        return TuneSummary(seconds=time.monotonic() - start, stopped_early=True, kernel_trials=kernels.trials)
    tasks = extract_tasks(fused_module(model, target), target)
    summary = tune_tasks(tasks, target, db, trials=trials, minutes=left, progress=progress, seed=seed)
    summary.kernel_trials = kernels.trials
    summary.seconds = time.monotonic() - start
    summary.stopped_early = summary.stopped_early or kernels.stopped_early
    return summary
