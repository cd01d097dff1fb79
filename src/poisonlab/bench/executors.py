"""Where trials run: in-process, a local process pool (spawn), or Ray tasks. Only the driver writes results.

Every executor offers ``slots`` (trials worth keeping in flight), ``submit(task) -> handle``,
``wait(handles, timeout) -> [(handle, result or exception)]`` and ``shutdown(cancel)``. A task is a plain
dict (cell id, trial, config, threads, data root); :func:`run_task` turns it into a result dict.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any

from poisonlab.bench.store import now
from poisonlab.errors import PoisonlabError
from poisonlab.results import environment

EXECUTORS = ("pool", "inline", "ray")
_SPLITS: OrderedDict[str, Any] = OrderedDict()  # a worker's loaded data, reused across its trials


def _splits(config):
    import json

    from poisonlab.experiment import load_splits

    key = json.dumps([config.data.model_dump(mode="json"), config.seed, os.environ.get("POISONLAB_DATA")])
    if key not in _SPLITS:
        _SPLITS[key] = load_splits(config.data, config.seed)
        while len(_SPLITS) > 2:
            _SPLITS.popitem(last=False)
    _SPLITS.move_to_end(key)
    return _SPLITS[key]


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one trial of one cell; never raises for a failing trial (status 'failed' with the error)."""
    import torch

    from poisonlab.experiment import ExperimentConfig, run_trial

    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    if task.get("data_root"):
        os.environ["POISONLAB_DATA"] = str(task["data_root"])
    started, t0 = now(), time.perf_counter()
    out: dict[str, Any] = {
        "cell_id": task["cell_id"],
        "trial": task["trial"],
        "seed": task.get("seed"),
        "config": task.get("resolved"),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "started": started,
    }
    try:
        config = ExperimentConfig.model_validate(task["config"])
        t1 = time.perf_counter()
        train_set, test_set, holdout = _splits(config)
        load = time.perf_counter() - t1
        metrics, timings, _ = run_trial(config, train_set, test_set, task["trial"], holdout=holdout)
        out.update(status="ok", metrics=metrics, timings={"load_data": load, **timings})
    except Exception as err:  # a failed trial is recorded and the matrix goes on
        out.update(
            status="failed",
            error=f"{type(err).__name__}: {err}".splitlines()[0][:2000],
            traceback=traceback.format_exc()[-20000:],
        )
    out["duration"] = time.perf_counter() - t0
    out["finished"] = now()
    out["versions"] = environment()
    return out


def failure(task: dict[str, Any], err: BaseException) -> dict[str, Any]:
    """A failed-trial result for a task whose worker raised or died."""
    stamp = now()
    return {
        "cell_id": task["cell_id"],
        "trial": task["trial"],
        "seed": task.get("seed"),
        "config": task.get("resolved"),
        "status": "failed",
        "error": f"{type(err).__name__}: {err}".splitlines()[0][:2000],
        "started": stamp,
        "finished": stamp,
        "duration": 0.0,
    }


class InlineExecutor:
    """Runs each trial in this process when waited on (debugging, tiny matrices)."""

    name = "inline"

    def __init__(self, threads: int | None = None):
        self.slots, self.threads = 1, threads
        self._tasks: dict[int, dict] = {}
        self._next = 0

    def submit(self, task: dict) -> int:
        self._next += 1
        self._tasks[self._next] = task
        return self._next

    def wait(self, handles, timeout: float):
        import torch

        handle = handles[0]
        before = torch.get_num_threads()
        try:
            return [(handle, run_task(self._tasks.pop(handle)))]
        finally:
            torch.set_num_threads(before)

    def shutdown(self, cancel: bool = False) -> None:
        self._tasks.clear()


def _init_worker(parent: int, threads: int | None) -> None:
    """Pool worker setup: one torch thread, ignore Ctrl-C (the driver handles it), die with the driver."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        import torch

        torch.set_num_threads(threads)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="poisonlab-parent-watch").start()


class PoolExecutor:
    """A local process pool ('spawn' start method), one trial per worker."""

    name = "pool"

    def __init__(self, workers: int | None = None, threads: int | None = 1):
        self.slots = workers or os.cpu_count() or 1
        self.threads = threads
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), self.threads),
        )

    def submit(self, task: dict) -> cf.Future:
        return self._pool.submit(run_task, task)

    def wait(self, handles, timeout: float):
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out, broken = [], False
        for fut in done:
            try:
                out.append((fut, fut.result()))
            except Exception as err:
                broken |= isinstance(err, cf.process.BrokenProcessPool)
                out.append((fut, err))
        if broken:  # a worker died (killed, out of memory): its pool is unusable, start a new one
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return out

    def shutdown(self, cancel: bool = False) -> None:
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
        if cancel:  # trials in flight are abandoned; their workers must not outlive the run
            for proc in processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in processes:
                proc.join(timeout=5)


class RayExecutor:
    """Each trial a Ray task with its CPU/GPU request; results come back to the driver."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        threads: int | None = 1,
        cpus_per_trial: float = 1.0,
        gpus_per_trial: float = 0.0,
    ):
        try:
            import ray
        except ImportError:
            raise PoisonlabError("--executor ray needs Ray: pip install 'poisonlab[ray]'") from None
        self.ray = ray
        self._owner = not ray.is_initialized()
        if self._owner:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None and not os.environ.get("RAY_ADDRESS") and workers:
                kwargs["num_cpus"] = workers  # a new local instance of this size
            try:
                ray.init(address=address, **kwargs)
            except Exception as err:
                where = address or "a local instance"
                raise PoisonlabError(f"cannot start or reach Ray at {where}: {err}") from None
        self._remote = ray.remote(run_task).options(
            num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0
        )
        resources = ray.cluster_resources()
        slots = resources.get("CPU", 1.0) / cpus_per_trial if cpus_per_trial > 0 else 64
        if gpus_per_trial > 0:
            if resources.get("GPU", 0.0) < gpus_per_trial:
                raise PoisonlabError(f"--gpus-per-trial {gpus_per_trial}: the Ray cluster has no such GPUs")
            slots = min(slots, resources["GPU"] / gpus_per_trial)
        self.slots = max(1, min(int(slots), workers or int(slots)))
        self.threads = threads
        self._inflight: set = set()

    def submit(self, task: dict):
        ref = self._remote.remote(task)
        self._inflight.add(ref)
        return ref

    def wait(self, handles, timeout: float):
        ready, rest = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        out = []
        for ref in ready:
            self._inflight.discard(ref)
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as err:
                out.append((ref, err))
        return out

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self._inflight:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # already finished or gone
                    pass
        self._inflight.clear()
        if self._owner:
            self.ray.shutdown()


MAX_THREADS = 256  # torch threads per process; more only stalls the machine (set_num_threads takes them all)


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    """Torch threads per process: None (torch's default) or 1 .. MAX_THREADS."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS
    ):
        raise PoisonlabError(f"{flag} must be at least 1 and at most {MAX_THREADS}, got {threads}")


def check_executor_options(
    kind: str,
    workers: int | None = None,
    threads: int | None = 1,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
) -> None:
    """Refuse bad executor options before anything is created (``--workers 0`` would mean one per core)."""
    if kind not in EXECUTORS:
        raise PoisonlabError(f"unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise PoisonlabError(f"--workers must be at least 1, got {workers}")
    check_threads(threads)
    for flag, value in (("--cpus-per-trial", cpus_per_trial), ("--gpus-per-trial", gpus_per_trial)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise PoisonlabError(f"{flag} must be a finite number, not negative; got {value}")


def make_executor(
    kind: str,
    *,
    workers: int | None = None,
    threads: int | None = 1,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
):
    """Build the executor named ``kind`` (pool, inline or ray)."""
    check_executor_options(kind, workers, threads, cpus_per_trial, gpus_per_trial)
    if kind == "pool":
        return PoolExecutor(workers, threads)
    if kind == "inline":
        return InlineExecutor(threads)
    return RayExecutor(address, workers, threads, cpus_per_trial, gpus_per_trial)
