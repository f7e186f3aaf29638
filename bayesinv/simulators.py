r"""Black-box simulators: NumPy functions and external programs inside Pyro models.

A simulator maps a batch of inputs to a batch of outputs, ``(N, *) -> (N, *)``,
without gradients. :func:`simulator` wraps a NumPy function; :func:`external` and
:func:`python_script` wrap a program run out of process (another interpreter, a
finite-element code). Inside a model they take and return torch tensors, consult the
active :class:`bayesinv._context.RunContext` for the batch convention, record their
outputs and can be replayed.

A row whose simulation raises, times out, kills its worker process or returns
non-finite values becomes a NaN row, counted as failed; it never ends the run. A call
that fails is split in halves recursively (bisection), so a few failing rows cost about
``2 * failures * log2(rows)`` extra calls, not one call per row. An output with the
wrong number of rows or the wrong shape per row is a bug of the simulator, never a
failed row: it raises :class:`SimulationError` naming both shapes.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import ctypes.util
import functools
import importlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from bayesinv._checks import check_count, check_real
from bayesinv._context import current_context
from bayesinv.errors import OptionError, ProblemError, SimulationError

__all__ = [
    "Simulator",
    "SimulationError",
    "simulator",
    "external",
    "python_script",
]

MAX_ERRORS = 5
STDERR_LINES = 20
ISOLATE = ("bisect", "rows")
WATCHDOG_INTERVAL = 0.5  # seconds between two checks of a worker that its parent is alive
STARTUP_TIMEOUT = 300.0  # seconds a new worker process may take to start (imports with "spawn")
_MAX_SIGNATURES = 64  # input signatures whose output shape a simulator remembers
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class _OutputShapeError(SimulationError, ValueError):
    r"""The output has the wrong number of rows or the wrong shape per row: a bug, never a failed row.

    Also a ``ValueError`` (what earlier versions raised for a missing batch axis).
    """


# ------------------------------------------------------------------- call results


@dataclass
class _Outcome:
    r"""What one call of the function gave: an output array, or an error message."""

    out: np.ndarray | None = None
    error: str | None = None  # "ExceptionType: message"


@dataclass
class _Calls:
    r"""The rows settled so far in one simulator call: output parts and failed rows."""

    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (first row, output)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, "Type: message")

    def messages(self) -> list[str]:
        return [f"row {row}: {text}" for row, text in sorted(self.failures)[:MAX_ERRORS]]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _nonfinite_rows(out: np.ndarray) -> np.ndarray:
    if out.dtype.kind not in "fc":
        return np.zeros(len(out), dtype=bool)
    return ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)


def _as_float(dtype: np.dtype) -> np.dtype:
    return dtype if dtype.kind in "fc" else np.dtype(np.float64)


def _take(args: Sequence[Any], rows: slice | np.ndarray, n: int) -> list[Any]:
    r"""Selects ``rows`` of every batched array argument (leading dimension ``n``)."""
    return [a[rows] if isinstance(a, np.ndarray) and a.ndim > 0 and a.shape[0] == n else a for a in args]


def _signature(args: Sequence[Any]) -> tuple | None:
    r"""What decides the shape of one output row: the inputs' shapes per row and the plain arguments."""
    parts: list[tuple] = []
    for a in args:
        if isinstance(a, np.ndarray):
            parts.append(("array", tuple(a.shape[1:])))
            continue
        try:
            hash(a)
        except TypeError:
            return None
        parts.append(("value", a))
    return tuple(parts)


def _shape_text(shape: Sequence[int] | None, rows: int) -> str:
    return f"({rows}, ...)" if shape is None else str((rows, *shape))


# ------------------------------------------------------------------ worker processes


def _init_worker(parent_pid: int | None = None) -> None:
    r"""Worker initializer: one thread per process, and exit when the parent process dies.

    ``workers`` processes then fill ``workers`` cores. With ``parent_pid``, the worker asks
    the Linux kernel to kill it when its parent exits (``prctl(PR_SET_PDEATHSIG, SIGKILL)``)
    and, on every platform, starts a daemon thread that ends the process when
    ``os.getppid()`` is no longer ``parent_pid`` (checked every ``WATCHDOG_INTERVAL`` s).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass
    if parent_pid is not None:
        _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no usable libc: the watchdog remains
            pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="bayesinv-parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(conn: Any, target: Any, parent_pid: int) -> None:
    r"""A worker's loop: receives argument lists, sends back ``("ok", array)`` or ``("error", text)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends its workers
    _init_worker(parent_pid)
    fn = target.fn if isinstance(target, Simulator) else target
    conn.send(("ready", os.getpid()))  # a timeout counts from here: never the start-up of the process
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        if args is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", np.asarray(fn(*args)))
        except Exception as error:  # noqa: BLE001 - any failure of a black box
            reply = ("error", _describe(error))
        try:
            conn.send(reply)
        except Exception as error:  # noqa: BLE001 - an output that cannot be pickled
            conn.send(("error", f"{type(error).__name__}: the worker could not send its output back: {error}"))


class _Worker:
    r"""One worker process and the parent's end of its pipe."""

    def __init__(self, context: Any, target: Any):
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_worker_main, args=(child, target, os.getpid()), name="bayesinv-simulator-worker"
        )
        self.process.start()
        child.close()
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def wait_ready(self, name: str) -> None:
        r"""Waits until the process has started (imported what it needs); a failed start is an error."""
        if self.ready:
            return
        if not self.conn.poll(STARTUP_TIMEOUT):
            self.kill()
            raise SimulationError(f"simulator {name!r}: a worker process did not start within {STARTUP_TIMEOUT:g} s")
        try:
            self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            raise SimulationError(
                f"simulator {name!r}: worker process {self.pid} exited with code {self.process.exitcode} while "
                f"starting (its error, if any, is on stderr)"
            ) from None
        self.ready = True

    def receive(self) -> tuple[_Outcome, bool]:
        r"""The outcome of the call in flight, and whether the worker died during it."""
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            return _Outcome(error=f"BrokenProcessPool: worker process {self.pid} died during the call (exit code {code})"), True
        return (_Outcome(out=payload) if status == "ok" else _Outcome(error=payload)), False

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(2)
        self.kill()


# --------------------------------------------------------------------- conversions


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    return value


def _import_simulator(module: str, qualname: str) -> Simulator:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rebuild_simulator(fn: Callable, options: dict[str, Any]) -> Simulator:
    return Simulator(fn, **options)


_OPEN: weakref.WeakSet[Simulator] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for sim in list(_OPEN):
        sim.close()


# ----------------------------------------------------------------------- simulator


class Simulator:
    r"""A non-differentiable batched black box, callable on tensors or arrays.

    Created by :func:`simulator`, :func:`external` or :func:`python_script`; see
    :func:`simulator` for the calling convention and the options.

    Attributes:
        fn: The raw NumPy function, ``fn(*arrays) -> array``.
        name: The name under which calls are recorded in a run context.
        num_failures: The number of rows that failed over the simulator's lifetime.
        num_calls: The number of times ``fn`` was called (bisection retries included).
        errors: The first few failure messages, ``"row i: ExceptionType: message"``.
    """

    differentiable = False

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        workers: int = 1,
        batch_size: int | None = None,
        timeout: float | None = None,
        isolate: str = "bisect",
        mp_context: str | None = "fork",
        event_ndim: int | None = None,
    ):
        if not callable(fn):
            raise ProblemError(f"a simulator wraps a callable, got {type(fn).__name__}")
        name = name or getattr(fn, "__name__", None) or type(fn).__name__
        label = f"simulator {name!r}:"
        workers = check_count(f"{label} workers", workers, error=OptionError)
        if batch_size is not None:
            batch_size = check_count(f"{label} batch_size (or None)", batch_size, error=OptionError)
        if timeout is not None:
            timeout = check_real(f"{label} timeout (seconds, or None)", timeout, low=0.0, low_open=True)
        if isolate not in ISOLATE:
            raise OptionError(f"{label} isolate must be one of {ISOLATE}, got {isolate!r}")
        if mp_context is not None and mp_context not in multiprocessing.get_all_start_methods():
            raise OptionError(
                f"{label} mp_context must be None or one of {multiprocessing.get_all_start_methods()}, got {mp_context!r}"
            )
        if event_ndim is not None:
            event_ndim = check_count(f"{label} event_ndim (or None)", event_ndim, minimum=0, error=OptionError)

        if hasattr(fn, "__name__"):
            functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name
        self.workers = workers
        self.batch_size = batch_size
        self.timeout = timeout
        self.isolate = isolate
        self.mp_context = mp_context
        self.event_ndim = event_ndim
        self.num_failures = 0
        self.num_calls = 0
        self.errors: list[str] = []
        self._workers: list[_Worker | None] = []
        self._event_shapes: dict[tuple, tuple[int, ...]] = {}
        self._lock = threading.Lock()  # one call at a time talks to the workers

    # -- calling ------------------------------------------------------------------

    def __call__(self, *args: Any) -> torch.Tensor | np.ndarray:
        if any(type(a).__module__.split(".")[0] in ("jax", "jaxlib") for a in args):  # from a NumPyro model
            from bayesinv._numpyro import simulator_call

            return simulator_call(self, args)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        as_tensor = bool(tensors)
        device = tensors[0].device if tensors else torch.device("cpu")
        double = any(
            (isinstance(a, torch.Tensor) and a.dtype == torch.float64)
            or (isinstance(a, np.ndarray) and a.dtype == np.float64)
            for a in args
        )
        dtype = torch.float64 if double else torch.float32

        arrays = [_to_numpy(a) for a in args]
        is_array = [isinstance(a, np.ndarray) for a in arrays]
        if not any(is_array):
            raise TypeError(f"simulator {self.name!r} needs at least one tensor or array input")

        ctx = current_context()
        if ctx is not None:
            unbatched = ctx.batch_size is None
        elif self.event_ndim is not None:
            unbatched = arrays[is_array.index(True)].ndim == self.event_ndim
        else:
            unbatched = False
        if unbatched:
            arrays = [a[None] if isinstance(a, np.ndarray) else a for a in arrays]

        def finish(out: Any, tensor: bool) -> torch.Tensor | np.ndarray:
            if isinstance(out, torch.Tensor):
                out = out.detach().to(dtype=dtype, device=device)
            elif tensor:
                out = torch.as_tensor(np.asarray(out), dtype=dtype, device=device)
            return out[0] if unbatched else out

        key = ctx.next_key(self.name) if ctx is not None else None
        if ctx is not None and ctx.replay is not None and key in ctx.replay:
            stored = ctx.replay[key]
            expected = 1 if unbatched else ctx.batch_size
            if stored.shape[0] != expected:
                raise ValueError(
                    f"simulator {self.name!r}: replayed output {key!r} has shape "
                    f"{tuple(stored.shape)}, expected a leading batch axis of {expected}"
                )
            return finish(stored if as_tensor else _to_numpy(stored), as_tensor)

        out = self._run(arrays, ctx)
        if ctx is not None:
            ctx.outputs[key] = torch.as_tensor(np.asarray(out), dtype=dtype, device=device)
        return finish(out, as_tensor)

    def _run(self, args: list[Any], ctx: Any) -> np.ndarray:
        sizes = {a.shape[0] for a in args if isinstance(a, np.ndarray) and a.ndim > 0}
        if any(isinstance(a, np.ndarray) and a.ndim == 0 for a in args) or not sizes:
            raise ValueError(
                f"simulator {self.name!r}: array inputs need a leading batch axis "
                f"(got a 0-d array); pass python scalars for non-batched arguments"
            )
        n = max(sizes)
        if sizes - {1, n}:
            raise ValueError(
                f"simulator {self.name!r}: array inputs have different batch sizes "
                f"{sorted(sizes)}; each needs a leading axis of {n} (or 1 to broadcast)"
            )

        size = self.batch_size
        if size is None:
            size = -(-n // self.workers) if self.workers > 1 else max(n, 1)
        chunks = [(start, min(start + size, n)) for start in range(0, n, size)] or [(0, n)]
        calls = _Calls()
        sig = _signature(args)
        if self.workers > 1 or self.timeout is not None:  # no processes of its own inside a Dask task
            from bayesinv._dask import check_worker_processes

            check_worker_processes(self)
        if self.workers == 1 and self.timeout is None:
            self._run_here(args, n, chunks, calls, sig)
        else:
            with self._lock:
                self._run_in_workers(args, n, chunks, calls, sig)
        messages = calls.messages()

        self.num_failures += len(calls.failures)
        self.errors.extend(messages[: MAX_ERRORS - len(self.errors)])
        if ctx is not None:
            ctx.failures += len(calls.failures)
            ctx.errors.extend(messages[: MAX_ERRORS - len(ctx.errors)])
        if not calls.parts:
            first = messages[0] if messages else "no error message"
            raise SimulationError(f"simulator {self.name!r}: all {n} simulations failed; first error: {first}")
        return self._assemble(calls, n)

    # -- one call of fn and what it means ---------------------------------------------

    def _run_here(self, args: list[Any], n: int, chunks: list[tuple[int, int]], calls: _Calls, sig: tuple | None) -> None:
        r"""Runs the calls in this process, depth first, so failures are isolated in row order."""
        pending = collections.deque(chunks)
        while pending:
            start, stop = pending.popleft()
            self.num_calls += 1
            try:
                outcome = _Outcome(out=np.asarray(self.fn(*_take(args, slice(start, stop), n))))
            except Exception as error:  # noqa: BLE001 - any failure of a black box
                outcome = _Outcome(error=_describe(error))
            pending.extendleft(reversed(self._settle(outcome, start, stop, calls, sig, args)))

    def _run_in_workers(
        self, args: list[Any], n: int, chunks: list[tuple[int, int]], calls: _Calls, sig: tuple | None
    ) -> None:
        r"""Runs the calls in the worker processes; kills and replaces a worker past ``timeout``."""
        self._start_workers()
        pending = collections.deque(chunks)
        idle = list(range(self.workers))
        running: dict[Any, tuple[int, int, int, float]] = {}  # conn -> (slot, start, stop, deadline)
        try:
            while pending or running:
                while pending and idle:
                    slot = idle.pop()
                    start, stop = pending.popleft()
                    conn = self._send(slot, _take(args, slice(start, stop), n))
                    deadline = time.monotonic() + self.timeout if self.timeout is not None else float("inf")
                    running[conn] = (slot, start, stop, deadline)
                wait = None
                if self.timeout is not None:
                    wait = max(0.0, min(d for *_, d in running.values()) - time.monotonic())
                for conn in multiprocessing.connection.wait(list(running), timeout=wait):
                    slot, start, stop, _ = running.pop(conn)
                    outcome, died = self._workers[slot].receive()
                    if died:
                        self._replace(slot)
                    idle.append(slot)
                    pending.extendleft(reversed(self._settle(outcome, start, stop, calls, sig, args)))
                now = time.monotonic()
                for conn, (slot, start, stop, deadline) in list(running.items()):
                    if now >= deadline:
                        del running[conn]
                        self._replace(slot)
                        idle.append(slot)
                        error = f"TimeoutError: simulator {self.name!r} timed out after {self.timeout:g} s"
                        pending.extendleft(reversed(self._settle(_Outcome(error=error), start, stop, calls, sig, args)))
        finally:
            for slot, *_ in running.values():  # an error or Ctrl-C left calls in flight
                self._workers[slot].kill()
                self._workers[slot] = None

    def _settle(
        self, outcome: _Outcome, start: int, stop: int, calls: _Calls, sig: tuple | None, args: Sequence[Any]
    ) -> list[tuple[int, int]]:
        r"""Records the outcome of the call on rows ``start:stop``; returns the row ranges to call again."""
        m = stop - start
        if outcome.out is not None:
            out = outcome.out
            self._check_shape(out, start, stop, sig, args)
            bad = _nonfinite_rows(out)
            error = "FloatingPointError: non-finite simulator output"
            if not bad.any() or m == 1 or not bad.all():
                calls.parts.append((start, out))
                calls.failures.extend((start + int(i), error) for i in np.flatnonzero(bad))
                return []
            # every row non-finite: a failure of the call, isolated like an exception
        else:
            error = outcome.error or "unknown error"
        if m == 1:
            calls.failures.append((start, error))
            return []
        if self.isolate == "rows":
            return [(i, i + 1) for i in range(start, stop)]
        middle = start + m // 2
        return [(start, middle), (middle, stop)]

    def _check_shape(self, out: np.ndarray, start: int, stop: int, sig: tuple | None, args: Sequence[Any]) -> None:
        m, got = stop - start, tuple(out.shape)
        known = self._event_shapes.get(sig) if sig is not None else None
        where = f"rows {start} to {stop - 1}" if m > 1 else f"row {start}"
        if out.ndim == 0 or got[0] != m:
            raise _OutputShapeError(
                f"simulator {self.name!r} was called with a batch of {m} rows ({where}) but returned an "
                f"output of shape {got}; expected shape {_shape_text(known, m)}: the output needs the "
                f"leading batch axis of the inputs, one row per input row"
            )
        if known is not None and got[1:] != known:
            inputs = [tuple(a.shape[1:]) for a in args if isinstance(a, np.ndarray)]
            raise _OutputShapeError(
                f"simulator {self.name!r} returned an output of shape {got} for a batch of {m} rows ({where}); "
                f"expected shape {_shape_text(known, m)}: for inputs of shapes {inputs} per row it returned "
                f"rows of shape {known} before, now rows of shape {got[1:]}"
            )
        if sig is not None and known is None and len(self._event_shapes) < _MAX_SIGNATURES:
            self._event_shapes[sig] = got[1:]

    @staticmethod
    def _assemble(calls: _Calls, n: int) -> np.ndarray:
        r"""The output parts in row order; failed rows are NaN."""
        parts = sorted(calls.parts, key=lambda part: part[0])
        if not calls.failures and len(parts) == 1:
            return parts[0][1]
        dtype = np.result_type(*[p.dtype for _, p in parts])
        if calls.failures:
            dtype = _as_float(dtype)
        out = np.full((n, *parts[0][1].shape[1:]), np.nan if dtype.kind in "fc" else 0, dtype=dtype)
        for start, part in parts:
            out[start : start + len(part)] = part
        if calls.failures:
            out[[row for row, _ in calls.failures]] = np.nan
        return out

    # -- worker processes -----------------------------------------------------------

    def _context(self) -> Any:
        return multiprocessing.get_context(self.mp_context)

    def _start_workers(self) -> None:
        r"""Starts the missing worker processes from the calling thread (idle dead ones are replaced)."""
        if not self._workers:
            try:
                pickle.dumps(self)
            except Exception as error:
                reason = f"workers={self.workers}" if self.workers > 1 else f"timeout={self.timeout}"
                raise TypeError(
                    f"simulator {self.name!r} runs in worker processes ({reason}) "
                    f"and must be picklable: define its function at module level ({error})"
                ) from error
            self._workers = [None] * self.workers
            _OPEN.add(self)
        for slot, worker in enumerate(self._workers):
            if worker is None or not worker.alive():
                self._replace(slot)

    def _replace(self, slot: int) -> None:
        old = self._workers[slot]
        if old is not None:
            old.kill()
        self._workers[slot] = _Worker(self._context(), self)

    def _send(self, slot: int, piece: list[Any]) -> Any:
        for attempt in range(2):
            worker = self._workers[slot]
            worker.wait_ready(self.name)
            try:
                worker.conn.send(piece)
            except (OSError, ValueError) as error:  # the worker died while idle
                if attempt == 1:
                    raise SimulationError(f"simulator {self.name!r}: cannot reach a new worker process ({error})") from error
                self._replace(slot)
            else:
                self.num_calls += 1
                return worker.conn
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def worker_pids(self) -> list[int]:
        r"""The process ids of the running worker processes (empty before the first call)."""
        return [w.pid for w in self._workers if w is not None and w.alive()]

    def close(self) -> None:
        r"""Shuts the worker processes down (a later call starts new ones)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            if worker is not None:
                worker.stop()
        _OPEN.discard(self)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- pickling and display -----------------------------------------------------

    def __reduce__(self) -> tuple:
        module = getattr(self, "__module__", None)
        qualname = getattr(self, "__qualname__", None)
        if module and qualname and "<locals>" not in qualname:
            try:
                if _import_simulator(module, qualname) is self:
                    return _import_simulator, (module, qualname)
            except (ImportError, AttributeError):
                pass
        options = dict(
            name=self.name,
            workers=self.workers,
            batch_size=self.batch_size,
            timeout=self.timeout,
            isolate=self.isolate,
            mp_context=self.mp_context,
            event_ndim=self.event_ndim,
        )
        return _rebuild_simulator, (self.fn, options)

    def __repr__(self) -> str:
        extra = f", batch_size={self.batch_size}" if self.batch_size is not None else ""
        extra += f", timeout={self.timeout:g}" if self.timeout is not None else ""
        return f"Simulator(name={self.name!r}, workers={self.workers}{extra})"


def simulator(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    workers: int = 1,
    batch_size: int | None = None,
    timeout: float | None = None,
    isolate: str = "bisect",
    mp_context: str | None = "fork",
    event_ndim: int | None = None,
) -> Simulator | Callable[[Callable[..., Any]], Simulator]:
    r"""Wraps a batched NumPy black box as a non-differentiable simulator.

    ``fn(*arrays) -> array`` maps inputs with a leading batch axis ``(N, *)`` to one
    output with the same leading axis ``(N, *)``. The returned :class:`Simulator`
    accepts torch tensors or NumPy arrays (python scalars are passed through unchanged,
    not batched). When any input is a tensor it returns a tensor on that input's
    device, ``float64`` if an input was ``float64`` and ``float32`` otherwise, without
    gradient (``Simulator.differentiable`` is ``False``); otherwise it returns NumPy.

    Inside a :class:`bayesinv._context.RunContext` with ``batch_size=None`` the inputs
    are one draw: a leading axis of 1 is added before ``fn`` and removed after. With
    ``batch_size=n`` they already carry the batch axis. Each call is recorded in
    ``ctx.calls`` and ``ctx.outputs`` under ``name`` (``name_1``, ... when repeated) and
    returns ``ctx.replay[key]`` without running when present. Outside a context the
    inputs are taken as batched, unless ``event_ndim`` is given and the first array
    input has exactly ``event_ndim`` dimensions.

    Failures. A call of ``fn`` that raises, runs past ``timeout``, kills its worker
    process or returns only non-finite rows is split in two halves, each called again,
    recursively (``isolate="bisect"``): a half that succeeds is kept whole, so ``f``
    failing rows in a chunk of ``m`` cost at most about ``2 f log2(m)`` extra calls.
    ``isolate="rows"`` reruns a failed call one row at a time instead (``m`` extra
    calls; the strategy of earlier versions). When every row fails, bisection costs
    ``2 m - 1`` calls. A row whose output is non-finite in a call that otherwise
    succeeded fails without a retry. Failed rows become NaN rows, counted in
    ``ctx.failures`` and ``Simulator.num_failures`` (first messages, in row order, in
    ``errors``); :class:`SimulationError` is raised only when no row gave an output (every
    row raised, timed out or killed its worker; non-finite rows are returned as NaN).

    Shape bugs. An output without one row per input row, or whose shape per row differs
    from what the simulator returned before for inputs of the same shapes (for example
    one draw while tracing, a batch afterwards), raises :class:`SimulationError` naming
    the simulator, the expected and the returned shape. It is never taken as a failed row,
    and bayesinv never falls back to running the model one draw at a time for it.

    Timeouts. With ``timeout``, every call of ``fn`` runs in a worker process, also with
    ``workers=1``; a call still running after ``timeout`` seconds is a failed call (its
    rows are isolated by bisection, a single row fails with ``"timed out after X s"``) and
    its worker is killed and replaced. The limit is per call, so it must allow for the
    largest call, ``batch_size`` rows (the whole batch split over the workers by
    default). Isolating one hanging row in a chunk of ``m`` rows costs about
    ``log2(m)`` timeouts. The cost of a worker process (measured on a loaded 2-core
    machine): the inputs and outputs of each call are pickled through a pipe (0.7 ms per
    call instead of 0.04 ms in process, plus about 10 ms per MB), a killed worker is
    restarted (0.2 s with ``"fork"``; seconds with ``"spawn"``, which imports NumPy and
    torch again; the timeout counts from the end of the start-up), and ``fn`` must be
    importable (defined at module level).

    Worker processes end with their parent: on Linux through
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, elsewhere (and as a fallback) through a thread
    that checks every 0.5 s that the parent process is alive. On Linux a worker also ends
    with the thread that started it (the thread that called the simulator); an idle worker
    found dead is replaced silently at the next call.

    Arguments:
        fn: The NumPy function. When omitted, returns a decorator.
        name: The name of the simulator in the run context (default ``fn.__name__``).
        workers: The number of worker processes. With ``workers > 1``, calls run in a
            persistent set of processes (one thread each), and ``fn`` must be
            importable: defined at module level.
        batch_size: The largest number of rows passed to ``fn`` at once (default: the
            whole batch, split evenly over the workers).
        timeout: The time limit in seconds of one call of ``fn`` (a positive number, or
            ``None`` for no limit).
        isolate: How a failed call is retried: ``"bisect"`` (halves, recursively) or
            ``"rows"`` (one row per call).
        mp_context: The multiprocessing start method of the workers (``"fork"``,
            ``"spawn"`` or ``"forkserver"``; ``None`` for the platform's default).
        event_ndim: The number of dimensions of one unbatched input, used outside a
            run context to recognise a single draw.

    Returns:
        A :class:`Simulator`, or a decorator making one.

    Raises:
        OptionError: An option outside what is allowed (before anything runs).

    Example:
        >>> @simulator(workers=4, timeout=60)
        ... def forward(theta):                      # (N, 2) -> (N, 50)
        ...     t = np.linspace(0, 1, 50)
        ...     return theta[:, :1] * np.exp(-theta[:, 1:] * t)
        >>> forward(torch.rand(100, 2)).shape
        torch.Size([100, 50])
    """

    def wrap(f: Callable[..., Any]) -> Simulator:
        return Simulator(
            f,
            name=name,
            workers=workers,
            batch_size=batch_size,
            timeout=timeout,
            isolate=isolate,
            mp_context=mp_context,
            event_ndim=event_ndim,
        )

    return wrap if fn is None else wrap(fn)


# ------------------------------------------------------------------------ external


def _plain(value: Any) -> np.ndarray:
    array = np.asarray(value)
    return array if array.dtype.kind in "biuU" else array.astype(np.float64)


class _Command:
    r"""Runs an external command on one chunk; picklable, so it runs in workers too."""

    def __init__(
        self,
        command: str | Sequence[str],
        timeout: float | None,
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike | None,
    ):
        self.command = command if isinstance(command, str) else [str(c) for c in command]
        self.timeout = timeout
        self.env = dict(env) if env is not None else None
        self.cwd = None if cwd is None else str(cwd)

    def __call__(self, *args: Any) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="bayesinv-") as tmp:
            inputs, output = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "output.npy")
            np.savez(inputs, **{f"arg{i}": _plain(a) for i, a in enumerate(args)})
            if isinstance(self.command, str):
                command: str | list[str] = self.command.replace("{input}", shlex.quote(inputs)).replace(
                    "{output}", shlex.quote(output)
                )
            else:
                command = [c.replace("{input}", inputs).replace("{output}", output) for c in self.command]
            code, stderr = self._execute(command)
            if code != 0:
                tail = "\n".join(stderr.splitlines()[-STDERR_LINES:])
                raise RuntimeError(f"command {command!r} failed with exit code {code}; stderr:\n{tail}")
            if not os.path.exists(output):
                raise RuntimeError(f"command {command!r} exited normally but wrote no output file {output}")
            return np.load(output, allow_pickle=False)

    def _execute(self, command: str | list[str]) -> tuple[int, str]:
        env = None if self.env is None else {**os.environ, **self.env}
        process = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            cwd=self.cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover
                pass
            process.communicate()
            raise TimeoutError(f"command {command!r} timed out after {self.timeout} s") from None
        except BaseException:
            process.kill()
            raise
        return process.returncode, stderr

    def __repr__(self) -> str:
        return f"_Command({self.command!r})"


def external(
    command: str | Sequence[str],
    *,
    name: str | None = None,
    timeout: float | None = None,
    workers: int = 1,
    batch_size: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> Simulator:
    r"""Makes a simulator of an external program, run once per chunk.

    For each chunk the inputs are written to a temporary ``inputs.npz`` (arrays
    ``arg0``, ``arg1``, ... in call order, each with the leading batch axis; floating
    inputs as ``float64``), ``command`` is run with ``{input}`` and ``{output}``
    replaced by the paths, and the output array is read from ``{output}`` (a ``.npy``
    file, first axis the batch). A non-zero exit status, a missing output or a timeout
    is a failure of the call, isolated by bisection as in :func:`simulator`; its message
    holds the command, the exit code and the last 20 lines of stderr.

    Arguments:
        command: A list of arguments, or a shell string (paths are then shell-quoted).
        name: The name of the simulator (default: the program's file name).
        timeout: The time limit in seconds for one run of the command.
        workers: The number of chunks run concurrently.
        batch_size: The largest number of rows per run of the command.
        env: Variables added to the current environment of the command.
        cwd: The working directory of the command.

    Returns:
        A :class:`Simulator`.

    Example:
        >>> solver = external(["./fem_solver", "--in", "{input}", "--out", "{output}"], timeout=600)
        >>> u = solver(E)   # (N, H, W) -> (N, H, W)
    """
    program = shlex.split(command)[0] if isinstance(command, str) else str(list(command)[0])
    if timeout is not None:
        timeout = check_real(f"external {program!r}: timeout (seconds, or None)", timeout, low=0.0, low_open=True)
    return Simulator(
        _Command(command, timeout, env, cwd),
        name=name or Path(program).name,
        workers=workers,
        batch_size=batch_size,
    )


def python_script(path: str | os.PathLike, *, python: str = "/usr/bin/python3", **kw: Any) -> Simulator:
    r"""Makes a simulator of a Python script run by another interpreter.

    The script protocol works with NumPy 1.24 or newer and needs nothing else::

        import sys
        import numpy as np

        data = np.load(sys.argv[1], allow_pickle=False)   # arrays arg0, arg1, ...
        theta = data["arg0"]                               # (N, *) float64
        result = ...                                       # (N, *) float64
        np.save(sys.argv[2], np.asarray(result, dtype=np.float64), allow_pickle=False)

    A script that fails should exit with a non-zero status; its stderr is reported.

    Arguments:
        path: The script, resolved against the current directory.
        python: The interpreter (for example a dolfinx installation).
        kw: The options of :func:`external` (``name``, ``timeout``, ``workers``, ...).

    Returns:
        A :class:`Simulator`.

    Example:
        >>> solve = python_script("fem/solve.py", python="/opt/dolfinx/bin/python", workers=4)
    """
    path = Path(path).resolve()
    kw.setdefault("name", path.stem)
    return external([python, str(path), "{input}", "{output}"], **kw)
