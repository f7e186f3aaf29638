r"""Black-box simulators: NumPy functions and external programs inside Pyro models.

A simulator maps a batch of inputs to a batch of outputs, ``(N, *) -> (N, *)``,
without gradients. :func:`simulator` wraps a NumPy function; :func:`external` and
:func:`python_script` wrap a program run out of process (another interpreter, a
finite-element code). Inside a model they take and return torch tensors, consult the
active :class:`bayesinv._context.RunContext` for the batch convention, record their
outputs and can be replayed. A draw whose simulation raises or returns non-finite
values becomes a NaN row; it never ends the run.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import importlib
import multiprocessing
import os
import pickle
import shlex
import signal
import subprocess
import tempfile
import weakref
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from bayesinv._context import current_context

__all__ = [
    "Simulator",
    "SimulationError",
    "simulator",
    "external",
    "python_script",
]

MAX_ERRORS = 5
STDERR_LINES = 20


from bayesinv.errors import SimulationError  # noqa: E402  (re-exported)


class _OutputShapeError(ValueError):
    r"""The output lacks the batch axis of the inputs: a bug, never isolated as a failure."""


# --------------------------------------------------------------------------- chunks


@dataclass
class _ChunkResult:
    out: np.ndarray | None  # None when every row failed
    num_failed: int = 0
    messages: list[str] = field(default_factory=list)  # the first MAX_ERRORS


def _message(row: int, error: BaseException) -> str:
    return f"row {row}: {type(error).__name__}: {error}"


def _checked(name: str, out: Any, n: int) -> np.ndarray:
    out = np.asarray(out)
    if out.ndim == 0 or out.shape[0] != n:
        raise _OutputShapeError(
            f"simulator {name!r} was called with a batch of {n} rows but returned an "
            f"output of shape {tuple(out.shape)}; the output needs the leading batch "
            f"axis of the inputs"
        )
    return out


def _nonfinite_rows(out: np.ndarray) -> np.ndarray:
    if out.dtype.kind not in "fc":
        return np.zeros(len(out), dtype=bool)
    return ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)


def _as_float(out: np.ndarray) -> np.ndarray:
    return out if out.dtype.kind in "fc" else out.astype(np.float64)


def _take(args: Sequence[Any], rows: slice | np.ndarray, n: int) -> list[Any]:
    r"""Selects ``rows`` of every batched array argument (leading dimension ``n``)."""
    return [a[rows] if isinstance(a, np.ndarray) and a.ndim > 0 and a.shape[0] == n else a for a in args]


def _run_chunk(target: Any, name: str, args: Sequence[Any], n: int, start: int) -> _ChunkResult:
    r"""Runs one chunk of ``n`` rows; isolates failing rows by retrying them one at a time.

    ``target`` is a :class:`Simulator` (in a worker process) or a raw function. Row
    numbers in messages are offset by ``start``, the chunk's place in the whole call.
    """
    fn = target.fn if isinstance(target, Simulator) else target
    try:
        out = fn(*args)
    except Exception as error:  # noqa: BLE001 - any failure of a black box
        if n <= 1:
            return _ChunkResult(None, n, [_message(start, error)])
        retry = np.arange(n)
        out = None
    else:
        out = _checked(name, out, n)
        retry = np.flatnonzero(_nonfinite_rows(out))
        if len(retry) == 0:
            return _ChunkResult(out)
        out = np.array(out, dtype=_as_float(out[:0]).dtype)  # a writable copy
        if n == 1:
            return _ChunkResult(out, 1, [_message(start, FloatingPointError("non-finite simulator output"))])

    rows: dict[int, np.ndarray] = {}
    result = _ChunkResult(None)
    for i in retry.tolist():
        try:
            row = _checked(name, fn(*_take(args, slice(i, i + 1), n)), 1)
            if _nonfinite_rows(row)[0]:
                raise FloatingPointError("non-finite simulator output")
        except _OutputShapeError:
            raise
        except Exception as error:  # noqa: BLE001
            _record_row(result, start + i, error)
        else:
            rows[i] = row[0]

    if out is None:
        if not rows:
            return result
        first = next(iter(rows.values()))
        out = np.full((n, *first.shape), np.nan, dtype=_as_float(first[None]).dtype)
    else:
        out[retry] = np.nan
    for i, row in rows.items():
        out[i] = row
    result.out = out
    return result


def _merge(results: Sequence[_ChunkResult], sizes: Sequence[int]) -> _ChunkResult:
    r"""Concatenates chunk results in order; a chunk without output becomes NaN rows."""
    merged = _ChunkResult(None, sum(r.num_failed for r in results))
    merged.messages = [m for r in results for m in r.messages][:MAX_ERRORS]
    known = [r.out for r in results if r.out is not None]
    if len(results) == 1 or not known:
        merged.out = known[0] if known else None
        return merged
    if merged.num_failed:
        known = [_as_float(k) for k in known]
    event, kind = known[0].shape[1:], np.result_type(*known)
    parts = [r.out if r.out is not None else np.full((m, *event), np.nan, kind) for r, m in zip(results, sizes)]
    merged.out = np.concatenate(parts, axis=0)
    return merged


def _record_row(result: _ChunkResult, row: int, error: BaseException) -> None:
    result.num_failed += 1
    if len(result.messages) < MAX_ERRORS:
        result.messages.append(_message(row, error))


def _init_worker() -> None:
    r"""Worker initializer: one thread per process, so ``workers`` processes fill ``workers`` cores."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


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
    :func:`simulator` for the calling convention.

    Attributes:
        fn: The raw NumPy function, ``fn(*arrays) -> array``.
        name: The name under which calls are recorded in a run context.
        num_failures: The number of rows that failed over the simulator's lifetime.
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
        mp_context: str | None = "fork",
        event_ndim: int | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"a simulator wraps a callable, got {type(fn).__name__}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")

        if hasattr(fn, "__name__"):
            functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.workers = int(workers)
        self.batch_size = batch_size
        self.mp_context = mp_context
        self.event_ndim = event_ndim
        self.num_failures = 0
        self.errors: list[str] = []
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    # -- calling ------------------------------------------------------------------

    def __call__(self, *args: Any) -> torch.Tensor | np.ndarray:
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
        starts = list(range(0, n, size)) or [0]
        chunks = [(start, min(start + size, n) - start) for start in starts]
        result = _merge(self._run_chunks(args, n, chunks), [m for _, m in chunks])

        self.num_failures += result.num_failed
        self.errors.extend(result.messages[: MAX_ERRORS - len(self.errors)])
        if ctx is not None:
            ctx.failures += result.num_failed
            ctx.errors.extend(result.messages[: MAX_ERRORS - len(ctx.errors)])
        if result.out is None:
            first = result.messages[0] if result.messages else "no error message"
            raise SimulationError(f"simulator {self.name!r}: all {n} simulations failed; first error: {first}")
        return result.out

    def _run_chunks(self, args: list[Any], n: int, chunks: list[tuple[int, int]]) -> list[_ChunkResult]:
        pieces = [(start, _take(args, slice(start, start + m), n), m) for start, m in chunks]
        if self.workers == 1:
            return [_run_chunk(self.fn, self.name, piece, m, start) for start, piece, m in pieces]

        pool = self._executor()
        futures = [pool.submit(_run_chunk, self, self.name, piece, m, start) for start, piece, m in pieces]
        results = []
        for future, (start, piece, m) in zip(futures, pieces):
            try:
                results.append(future.result())
            except BrokenProcessPool:
                results.append(self._after_crash(piece, m, start))
        return results

    def _after_crash(self, args: list[Any], n: int, start: int) -> _ChunkResult:
        r"""A worker died (segfault, ``os._exit``): rerun the chunk's rows one per task."""
        rows: list[_ChunkResult] = []
        for i in range(n):
            row = _take(args, slice(i, i + 1), n)
            try:
                rows.append(self._executor().submit(_run_chunk, self, self.name, row, 1, start + i).result())
            except BrokenProcessPool as error:
                self.close()
                rows.append(_ChunkResult(None, 1, [_message(start + i, error)]))
        return _merge(rows, [1] * n)

    # -- process pool -------------------------------------------------------------

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is not None and getattr(self._pool, "_broken", False):
            self.close()
        if self._pool is None:
            try:
                pickle.dumps(self)
            except Exception as error:
                raise TypeError(
                    f"simulator {self.name!r} runs in worker processes (workers={self.workers}) "
                    f"and must be picklable: define its function at module level ({error})"
                ) from error
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context(self.mp_context),
                initializer=_init_worker,
            )
            _OPEN.add(self)
        return self._pool

    def close(self) -> None:
        r"""Shuts the worker processes down (a later call starts new ones)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
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
            mp_context=self.mp_context,
            event_ndim=self.event_ndim,
        )
        return _rebuild_simulator, (self.fn, options)

    def __repr__(self) -> str:
        extra = f", batch_size={self.batch_size}" if self.batch_size is not None else ""
        return f"Simulator(name={self.name!r}, workers={self.workers}{extra})"


def simulator(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    workers: int = 1,
    batch_size: int | None = None,
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

    A chunk that raises or returns non-finite values is retried one row at a time; the
    rows that still fail become NaN rows, counted in ``ctx.failures`` and
    ``Simulator.num_failures`` (first messages in ``errors``). :class:`SimulationError`
    is raised only when every row fails.

    Arguments:
        fn: The NumPy function. When omitted, returns a decorator.
        name: The name of the simulator in the run context (default ``fn.__name__``).
        workers: The number of worker processes. With ``workers > 1``, chunks run in a
            persistent process pool (one thread per worker), and ``fn`` must be
            importable: defined at module level.
        batch_size: The largest number of rows passed to ``fn`` at once (default: the
            whole batch, split evenly over the workers).
        mp_context: The multiprocessing start method of the pool (``"fork"``,
            ``"spawn"`` or ``"forkserver"``).
        event_ndim: The number of dimensions of one unbatched input, used outside a
            run context to recognise a single draw.

    Returns:
        A :class:`Simulator`, or a decorator making one.

    Example:
        >>> @simulator(workers=4)
        ... def forward(theta):                      # (N, 2) -> (N, 50)
        ...     t = np.linspace(0, 1, 50)
        ...     return theta[:, :1] * np.exp(-theta[:, 1:] * t)
        >>> forward(torch.rand(100, 2)).shape
        torch.Size([100, 50])
    """

    def wrap(f: Callable[..., Any]) -> Simulator:
        return Simulator(
            f, name=name, workers=workers, batch_size=batch_size, mp_context=mp_context, event_ndim=event_ndim
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
    is a failure of the chunk, isolated row by row as in :func:`simulator`; its message
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
