r"""Chunked runs on a Dask cluster: chunks computed by workers, consumed in order by the client.

:func:`bayesinv.simulate` and ``infer(method="importance")`` split their work into chunks
seeded by index (:func:`bayesinv.methods._util.chunk_seed`). With ``client=``, a
:class:`ChunkMap` submits the chunks to a ``dask.distributed`` cluster — a
``LocalCluster``, a ``dask-jobqueue`` cluster (SLURM, PBS, ...) or any scheduler
address — a few ahead of the one the client needs, and hands the results back in index
order. The client process stays the single consumer: it alone commits to the
simulation store, so a chunk is committed exactly once whatever worker computed it.

- **A lost worker means a redone chunk, never a duplicated one.** The scheduler reruns
  the task of a worker that died on another worker (up to ``distributed.scheduler.allowed-failures``
  times, 3 by default; after that the chunk fails with :class:`~bayesinv.errors.SimulationError`
  and the store keeps what was committed: run again to resume). A task's result is
  consumed once, by its index.
- **Bit for bit the local run.** A chunk's draws depend only on its seed and size. The
  client also mirrors the one piece of state a run keeps between chunks — whether the
  model broadcasts over a batch plate — into every task, and submits nothing ahead of the
  first chunk until it is known, so the draws equal those of the same run in this process.

Nothing here imports Dask until a client is used.
"""

from __future__ import annotations

import contextvars
import multiprocessing
import time
import uuid
from typing import Any, Callable, Iterable, Sequence

from bayesinv.errors import OptionError, SimulationError

__all__ = ["ChunkMap", "check_client", "check_worker_processes"]

#: How many times a chunk the scheduler cancelled (a worker died under it) is submitted again.
_RESUBMITS = 3
_THREADS_TTL = 5.0  # seconds between two look-ups of the cluster's size

#: Inside a task run by :class:`ChunkMap` on a Dask worker: the option errors raised there (a
#: model may catch them; the task raises the first one whatever the model did with it).
_IN_TASK: contextvars.ContextVar[list[OptionError] | None] = contextvars.ContextVar("bayesinv_dask_task", default=None)


def check_client(client: Any, what: str) -> None:
    r"""Refuses a ``client=`` that is not a ``distributed.Client`` (before any work starts).

    Arguments:
        client: The value given.
        what: The function's name, for the message.
    """
    if isinstance(client, str):
        raise OptionError(
            f"{what}: client= takes a dask.distributed Client, not an address; pass distributed.Client({client!r})"
        )
    if not all(callable(getattr(client, name, None)) for name in ("submit", "scatter", "nthreads")):
        raise OptionError(f"{what}: client= must be a dask.distributed Client, got {type(client).__name__}")


def check_worker_processes(sim: Any) -> None:
    r"""Refuses a simulator that would start its own worker processes inside a Dask task.

    Called by a :class:`~bayesinv.simulators.Simulator` with ``workers > 1`` or a
    ``timeout`` before it starts processes.
    """
    errors = _IN_TASK.get()
    if errors is None:
        return
    error = None
    if sim.workers > 1:
        error = OptionError(
            f"simulator {sim.name!r} has workers={sim.workers} (its own process pool), but it runs inside a Dask"
            " task (client=): the Dask workers are the pool; make the simulator with workers=1"
        )
    elif multiprocessing.current_process().daemon:
        error = OptionError(
            f"simulator {sim.name!r} has timeout={sim.timeout:g} and so runs each call in a child process, which a"
            " Dask worker started as a daemon cannot start; create the cluster after"
            " dask.config.set({'distributed.worker.daemon': False}), or drop the timeout"
        )
    if error is not None:
        errors.append(error)
        raise error


def _run_task(fn: Callable[..., Any], problem: Any, args: Sequence[Any], vectorizable: bool | None) -> tuple[Any, bool | None]:
    r"""On a worker: ``fn(problem, *args)`` with the client's knowledge of the model's vectorisation.

    Returns the result and what the run learned about the vectorisation (``None``: nothing).
    """
    from bayesinv import problem as problem_module

    key = id(problem.model)
    cache = problem_module._VECTORIZABLE
    if vectorizable is None:
        cache.pop(key, None)
    else:
        cache[key] = vectorizable
    errors: list[OptionError] = []
    token = _IN_TASK.set(errors)
    try:
        try:
            result = fn(problem, *args)
        except Exception:
            if errors:
                raise errors[0] from None
            raise
        if errors:
            raise errors[0]
        return result, cache.get(key)
    finally:
        _IN_TASK.reset(token)
        cache.pop(key, None)


class ChunkMap:
    r"""The chunks of one run on a Dask cluster, computed ahead, consumed in index order.

    Arguments:
        client: A ``distributed.Client``.
        problem: The traced problem, sent to the workers (pickled by Dask).
        fn: A module-level function ``fn(problem, *args)`` computing one chunk.
        label: A name for the task keys and messages (``"simulate"``, ``"importance"``).
        ahead: How many chunks to keep in flight beyond the one needed (default: twice
            the cluster's threads, looked up again every few seconds, so a cluster that
            grows — ``cluster.adapt()``, workers joining a SLURM job — gets more).

    Example:
        >>> chunks = ChunkMap(client, problem, _chunk_values, label="simulate")
        >>> result = chunks.get(0, 1000, (1000, seed0, None), upcoming=[(1, 1000, (1000, seed1, None))])
    """

    def __init__(self, client: Any, problem: Any, fn: Callable[..., Any], *, label: str, ahead: int | None = None):
        self.client = client
        self.problem = problem
        self.fn = fn
        self.label = label
        self._ahead = ahead
        self._threads = (0, -float("inf"))  # (threads, when looked up)
        self.token = uuid.uuid4().hex[:12]
        self._futures: dict[int, tuple[Any, Any]] = {}
        self._problem_future = None

    @property
    def ahead(self) -> int:
        r"""How many chunks are submitted beyond the one the client waits for."""
        if self._ahead is not None:
            return self._ahead
        threads, when = self._threads
        if time.monotonic() - when > _THREADS_TTL:
            threads = sum(self.client.nthreads().values())
            self._threads = (threads, time.monotonic())
        return max(2 * threads, 2)

    def _vectorizable(self) -> bool | None:
        from bayesinv import problem as problem_module

        return problem_module._VECTORIZABLE.get(id(self.problem.model))

    def _submit(self, index: int, tag: Any, args: Any) -> None:
        old = self._futures.pop(index, None)
        if old is not None:
            old[1].cancel()
        if self._problem_future is None:  # sent once; kept on several workers so losing one keeps it
            self._problem_future = self.client.scatter(self.problem, broadcast=True, hash=False)
        future = self.client.submit(
            _run_task, self.fn, self._problem_future, args, self._vectorizable(),
            key=f"bayesinv-{self.label}-{self.token}-{index}-{uuid.uuid4().hex[:8]}", pure=False,
        )
        self._futures[index] = (tag, future)

    def get(self, index: int, tag: Any, args: Any, upcoming: Iterable[tuple[int, Any, Any]] = ()) -> Any:
        r"""The result of chunk ``index`` computed with ``args``.

        ``tag`` is what distinguishes two plans of one chunk (its size): a chunk already
        submitted with another tag is cancelled and submitted again. ``upcoming`` yields
        the chunks expected next, ``(index, tag, args)``; up to ``ahead`` of them are
        submitted now. Nothing is submitted ahead while the model's vectorisation is
        unknown (the first chunk of a run decides it).
        """
        have = self._futures.get(index)
        if have is None or have[0] != tag:
            self._submit(index, tag, args)
        if self._vectorizable() is not None:
            ahead = self.ahead
            for count, (i, t, a) in enumerate(upcoming):
                if count >= ahead:
                    break
                have = self._futures.get(i)
                if have is None or have[0] != t:
                    self._submit(i, t, a)
        _, future = self._futures.pop(index)
        result, learned = self._result(index, tag, args, future)
        if self._vectorizable() is None and learned is not None:
            from bayesinv import problem as problem_module

            problem_module._VECTORIZABLE[id(self.problem.model)] = learned
        return result

    def _result(self, index: int, tag: Any, args: Any, future: Any) -> Any:
        r"""The chunk's result. A chunk the scheduler cancelled because a worker died under it (its task
        or the scattered problem forgotten with that worker) is submitted again, up to
        :data:`_RESUBMITS` times; a chunk that kills every worker it runs on is an error."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker

        for attempt in range(_RESUBMITS + 1):
            try:
                return future.result()
            except KilledWorker as exc:
                raise SimulationError(
                    f"{self.label}: chunk {index} was lost with every Dask worker that ran it ({exc}); the chunks"
                    " committed so far are kept: run again to resume (a simulator that kills its process on some"
                    " inputs needs isolating: run it with timeout= or workers= in a local run to find them)"
                ) from None
            except CancelledError as exc:
                if attempt == _RESUBMITS:
                    raise SimulationError(
                        f"{self.label}: chunk {index} was cancelled by the Dask scheduler {_RESUBMITS + 1} times ({exc});"
                        " the chunks committed so far are kept: run again to resume"
                    ) from None
                if self._problem_future is not None and self._problem_future.status != "finished":
                    self._problem_future = None  # lost with the worker: scattered again by _submit
                self._submit(index, tag, args)
                _, future = self._futures.pop(index)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        r"""Cancels the chunks still in flight and releases the problem on the cluster."""
        futures = [f for _, f in self._futures.values()]
        self._futures.clear()
        if self._problem_future is not None:
            futures.append(self._problem_future)
            self._problem_future = None
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:  # noqa: BLE001 - a client already closed has nothing to cancel
                pass

    def __enter__(self) -> ChunkMap:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
