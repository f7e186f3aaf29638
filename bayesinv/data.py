r"""Joint training sets: :func:`simulate` draws (latents, deterministics, observations).

Draws are made in chunks; chunk ``i`` is always generated from the same seed, so a run
written to zarr and interrupted resumes where it stopped and ends with exactly the draws
an uninterrupted run would have made — nothing lost, nothing duplicated. Draws whose
simulation failed (the simulator raised or returned non-finite values) are excluded
and counted; more chunks are drawn until ``n`` good draws exist.

The dataset has one variable per site, with dims ``("draw", *site dims)``, plus the
noise-free output of every black-box simulator as ``_sim_<name>`` (reused by
``infer(..., method="importance", data=ds)``).

The simulation store
--------------------
A store (``simulate(..., path=...)``) is a zarr v3 group with one array per variable and
a folder ``_bayesinv/`` holding bayesinv's own files:

- ``commit.json``, the commit record: the run's configuration, ``n_done``,
  ``chunks_done``, the failure count and first errors, and the arrays' dtypes. It is
  the store's marker and the only truth about which draws are finished. It is
  replaced atomically (write to a temporary file, fsync, ``os.replace``, fsync of the
  folder); nothing else ever writes it, so appending data cannot erase it.
- ``lock`` and ``holder.json``: an exclusive lock (``filelock``) and who holds it
  (pid, host, start time).

A chunk is committed in this order: resize every array, write the new rows of every
array (each zarr file is itself replaced atomically), then replace the commit record.
Guarantees:

- **A kill at any moment loses at most the chunk being written.** The store is always
  at its last commit or at the new one: rows past ``n_done`` are uncommitted, readers
  never see them and a resumed run truncates them; committed rows are never rewritten.
  A resumed run ends bit for bit equal to an uninterrupted one.
- **One writer per store.** A second writer (another process, or a second call in the
  same process) gets :class:`~bayesinv.errors.StoreLockedError` naming the holder's
  pid, host and start time. A lock left by a dead process is taken over, with a
  :class:`StoreWarning` that names it. Readers (:func:`open_data`) take no lock.
- **``overwrite=True`` deletes only bayesinv stores.** Anything else (a folder without
  the commit record, a file) is refused with :class:`~bayesinv.errors.StoreError`.
- **Reading decodes nothing unchecked.** :func:`open_data` inspects the raw zarr
  metadata first and refuses object, string or structured dtypes and any codec that is
  not a plain compressor, shuffle or checksum (pickle, msgpack, JSON, vlen, ...), so a
  hostile store given as ``data=`` cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import xarray as xr

from bayesinv._checks import check_count, check_seed
from bayesinv._fsutil import fsync_dir
from bayesinv._version import __version__
from bayesinv.errors import ProblemError, StoreError, StoreLockedError
from bayesinv.methods._util import chunk_seed, progress_bar
from bayesinv.problem import Problem, as_problem, run_batch

__all__ = ["simulate", "open_data", "SimulationWarning", "StoreWarning"]

_ATTR = "bayesinv_simulate"  # where stores written before the commit record kept their state
_META = "_bayesinv"
_RECORD = "commit.json"
_LOCK = "lock"
_HOLDER = "holder.json"
_FORMAT = "bayesinv simulation store"
_FORMAT_VERSION = 1
_MAX_FAILED_CHUNKS = 10  # chunks in a row whose every simulation failed before simulate gives up
_GROUP_JSON = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})

#: Called with the name of every write step just before it runs (and with ``"committed"``
#: after each commit); tests set it to kill the writer between any two steps.
_test_hook: Callable[[str], None] | None = None


class SimulationWarning(UserWarning):
    r"""Some simulations failed and were excluded from the dataset."""


class StoreWarning(UserWarning):
    r"""A simulation store was recovered: a stale lock taken over, or uncommitted rows discarded."""


def _step(name: str) -> None:
    if _test_hook is not None:
        _test_hook(name)


def _write_json_atomic(file: Path, obj: Any, *, durable: bool = False) -> None:
    r"""Replaces ``file`` by ``obj`` as JSON: a reader or a kill sees the old file or the new one.

    ``durable=True`` also survives a power cut (fsync of the file before the rename and of
    the folder after it); the commit record is written so.
    """
    tmp = file.with_name(f"{file.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, file)
    if durable:
        fsync_dir(file.parent)


def _read_state(path: str | os.PathLike) -> dict[str, Any] | None:
    r"""The store's commit record (``None`` if ``path`` is not a bayesinv store).

    Stores written before the commit record existed kept it in the root group's
    attributes; it is read from there (raw JSON, nothing decoded).
    """
    path = Path(path)
    record_file = path / _META / _RECORD
    if record_file.is_file():
        record = _read_json(record_file, "commit record")
        if not isinstance(record, dict) or record.get("format") != _FORMAT or not isinstance(record.get("n_done"), int):
            raise StoreError(f"{record_file}: not a bayesinv commit record")
        return record
    root = path / "zarr.json"
    if root.is_file():
        try:
            meta = json.loads(root.read_bytes().decode("utf-8"))
            raw = meta.get("attributes", {}).get(_ATTR)
            legacy = json.loads(raw) if isinstance(raw, str) else None
        except (OSError, ValueError, AttributeError, UnicodeDecodeError):
            return None
        if isinstance(legacy, dict) and isinstance(legacy.get("n_done"), int) and isinstance(legacy.get("config"), dict):
            return {"format": _FORMAT, "format_version": 0, "arrays": None, **legacy}
    return None


def _write_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    r"""Replaces the store's commit record atomically."""
    folder = Path(path) / _META
    folder.mkdir(exist_ok=True)
    _write_json_atomic(folder / _RECORD, {**state, "format": _FORMAT, "format_version": _FORMAT_VERSION}, durable=True)


# --------------------------------------------------------------------------------------------
# Reading: open_data checks the raw metadata before anything is decoded
# --------------------------------------------------------------------------------------------

#: zarr v3 data types bayesinv reads: plain booleans, integers and floats (no objects,
#: strings, structured or extension types).
_NUMERIC_V3 = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
)
#: Codecs that only compress, shuffle, round or checksum bytes (numcodecs ids). Anything
#: else — pickle, msgpack, JSON, vlen, categorize, object codecs, unknown names — is refused.
_SAFE_CODEC_IDS = frozenset(
    ["zlib", "gzip", "bz2", "lzma", "blosc", "zstd", "lz4", "shuffle", "bitround", "crc32", "crc32c",
     "adler32", "fletcher32", "jenkins_lookup3"]
)
_SAFE_V3_CODECS = frozenset(["bytes", "transpose", "gzip", "zstd", "blosc", "crc32c", "sharding_indexed"])


def _read_json(file: Path, what: str) -> Any:
    try:
        raw = file.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{file}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


def _check_v3_codecs(codecs: Any, name: str, where: Path) -> None:
    if not isinstance(codecs, list):
        raise StoreError(f"{where}: variable {name!r} has a malformed codec list {codecs!r}")
    for codec in codecs:
        codec_name = codec.get("name") if isinstance(codec, dict) else codec
        if not isinstance(codec_name, str):
            raise StoreError(f"{where}: variable {name!r} has a malformed codec {codec!r}")
        plain = codec_name[len("numcodecs."):] if codec_name.startswith("numcodecs.") else None
        if codec_name not in _SAFE_V3_CODECS and plain not in _SAFE_CODEC_IDS:
            raise StoreError(
                f"{where}: variable {name!r} uses the codec {codec_name!r}; bayesinv reads only plain numeric arrays"
                f" (codecs {sorted(_SAFE_V3_CODECS)} and numcodecs {sorted(_SAFE_CODEC_IDS)}) and decodes nothing else"
            )
        if codec_name == "sharding_indexed":
            config = codec.get("configuration", {}) if isinstance(codec, dict) else {}
            _check_v3_codecs(config.get("codecs", []), name, where)
            _check_v3_codecs(config.get("index_codecs", []), name, where)


def _check_v3_array(meta: dict, name: str, where: Path) -> tuple[tuple[int, ...], list[str] | None]:
    dtype = meta.get("data_type")
    if not isinstance(dtype, str) or dtype not in _NUMERIC_V3:
        raise StoreError(
            f"{where}: variable {name!r} has data type {dtype!r}; bayesinv reads only plain numeric arrays"
            f" ({', '.join(sorted(_NUMERIC_V3))}), never objects, strings or extension types"
        )
    _check_v3_codecs(meta.get("codecs", []), name, where)
    if meta.get("storage_transformers"):
        raise StoreError(f"{where}: variable {name!r} uses storage transformers {meta['storage_transformers']!r}; refused")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise StoreError(f"{where}: variable {name!r} has a malformed shape {shape!r}")
    dims = meta.get("dimension_names")
    if dims is None:
        dims = (meta.get("attributes") or {}).get("_ARRAY_DIMENSIONS")
    return tuple(shape), list(dims) if isinstance(dims, list) else None


def _check_v2_array(meta: dict, attrs: dict, name: str, where: Path) -> tuple[tuple[int, ...], list[str] | None]:
    dtype = meta.get("dtype")
    ok = False
    if isinstance(dtype, str) and 3 <= len(dtype) <= 4 and dtype[:1] in "<>|=" and dtype[1:2] in "biuf":
        try:
            ok = np.dtype(dtype).kind in "biuf"
        except TypeError:
            ok = False
    if not ok:
        raise StoreError(
            f"{where}: variable {name!r} has dtype {dtype!r}; bayesinv reads only plain numeric arrays"
            " (booleans, integers, floats), never objects, strings or structured types"
        )
    codecs = [meta.get("compressor")] + list(meta.get("filters") or [])
    for codec in codecs:
        if codec is None:
            continue
        codec_id = codec.get("id") if isinstance(codec, dict) else None
        if codec_id not in _SAFE_CODEC_IDS:
            raise StoreError(
                f"{where}: variable {name!r} uses the codec {codec_id or codec!r}; bayesinv reads only plain numeric"
                f" arrays (numcodecs {sorted(_SAFE_CODEC_IDS)}) and decodes nothing else"
            )
    if meta.get("object_codec") is not None:
        raise StoreError(f"{where}: variable {name!r} names an object codec; refused")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise StoreError(f"{where}: variable {name!r} has a malformed shape {shape!r}")
    dims = attrs.get("_ARRAY_DIMENSIONS")
    return tuple(shape), list(dims) if isinstance(dims, list) else None


def _scan_store(path: Path) -> dict[str, tuple[tuple[int, ...], list[str] | None]]:
    r"""Checks every array's metadata in the store (raw JSON, nothing decoded).

    Returns:
        Root array name → (shape, dim names). Raises :class:`StoreError` naming the first
        variable that is not a plain numeric array.
    """
    if not (path / "zarr.json").is_file() and not (path / ".zgroup").is_file():
        raise StoreError(f"{path} is not a zarr store (no zarr.json or .zgroup at its root)")
    root: dict[str, tuple[tuple[int, ...], list[str] | None]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        name = here.relative_to(path).as_posix()
        info = None
        if "zarr.json" in filenames:
            meta = _read_json(here / "zarr.json", "zarr metadata")
            if not isinstance(meta, dict):
                raise StoreError(f"{here / 'zarr.json'}: the zarr metadata is not a JSON object")
            if meta.get("node_type") == "array":
                info = _check_v3_array(meta, name, here / "zarr.json")
                dirnames[:] = []  # chunk keys only below an array
            elif meta.get("node_type") == "group":
                consolidated = meta.get("consolidated_metadata") or {}
                for sub, sub_meta in (consolidated.get("metadata") or {}).items():
                    if isinstance(sub_meta, dict) and sub_meta.get("node_type") == "array":
                        _check_v3_array(sub_meta, sub, here / "zarr.json")
            else:
                raise StoreError(f"{here / 'zarr.json'}: unknown zarr node type {meta.get('node_type')!r}")
        if ".zarray" in filenames:
            meta = _read_json(here / ".zarray", "zarr metadata")
            attrs = _read_json(here / ".zattrs", "zarr attributes") if (here / ".zattrs").is_file() else {}
            if not isinstance(meta, dict) or not isinstance(attrs, dict):
                raise StoreError(f"{here}: the zarr metadata is not a JSON object")
            info = _check_v2_array(meta, attrs, name, here / ".zarray")
            dirnames[:] = []
        if ".zmetadata" in filenames:
            consolidated = _read_json(here / ".zmetadata", "consolidated zarr metadata")
            entries = consolidated.get("metadata", {}) if isinstance(consolidated, dict) else {}
            for key, sub_meta in entries.items():
                if key.endswith(".zarray") and isinstance(sub_meta, dict):
                    sub_attrs = entries.get(key[: -len(".zarray")] + ".zattrs") or {}
                    _check_v2_array(sub_meta, sub_attrs if isinstance(sub_attrs, dict) else {}, key, here / ".zmetadata")
        if info is not None and "/" not in name:
            root[name] = info
    return root


def _attrs_of(record: dict[str, Any]) -> dict[str, Any]:
    config = record["config"]
    return {
        "model": config.get("model"),
        "seed": int(config.get("seed", 0)),
        "num_failed": int(record.get("num_failed", 0)),
        "errors": list(record.get("errors", [])),  # a list of messages (earlier versions wrote a JSON string)
        "site_kinds": json.dumps(config.get("sites", {})),
        "bayesinv_version": __version__,
        "num_draws_committed": int(record["n_done"]),
        "complete": int(record["n_done"] >= int(config.get("n", 0))),
    }


def _errors_as_list(attrs: dict[str, Any]) -> None:
    r"""``attrs["errors"]`` as a list of messages, also for datasets written when it was a JSON string."""
    errors = attrs.get("errors")
    if isinstance(errors, str):
        try:
            decoded = json.loads(errors)
        except ValueError:
            decoded = [errors]
        attrs["errors"] = [str(e) for e in decoded] if isinstance(decoded, list) else [errors]
    elif isinstance(errors, (np.ndarray, tuple)):
        attrs["errors"] = [str(e) for e in np.asarray(errors).reshape(-1).tolist()]


def _check_dataset(ds: xr.Dataset, where: str) -> None:
    for name, var in ds.data_vars.items():
        if var.dtype.kind not in "biuf":
            raise StoreError(f"{where}: variable {name!r} has dtype {var.dtype}; bayesinv reads only plain numeric arrays")


def _open_zarr(path: Path, **kw: Any) -> xr.Dataset:
    try:
        return xr.open_zarr(path, consolidated=False, **kw)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # checked metadata that xarray still cannot use
        raise StoreError(f"{path}: xarray cannot open this zarr store ({type(exc).__name__}: {exc})") from None


def open_data(data: str | os.PathLike | xr.Dataset) -> xr.Dataset:
    r"""A simulated dataset, read safely: the committed draws of a store, nothing decoded unchecked.

    For a path, the raw zarr metadata of every array is checked before anything is
    decoded: object, string, structured and extension dtypes, and every codec or filter
    that is not a plain compressor, shuffle or checksum (pickle, msgpack, JSON, vlen,
    categorize, ...) are refused with :class:`~bayesinv.errors.StoreError` naming the
    variable. A bayesinv store is read up to its commit record: a store still being
    written (or interrupted) shows only its committed draws. No lock is taken.

    Arguments:
        data: A path (``str`` or path-like) to a zarr store — usually one written by
            :func:`simulate` — or an :class:`xarray.Dataset` (checked, returned as is).

    Returns:
        An :class:`xarray.Dataset` with dim ``draw`` (lazily backed by the store). For a
        bayesinv store, ``attrs`` hold the seed, the failure count and first errors
        (``errors``: a list of messages; a JSON string written by an earlier version is decoded),
        ``num_draws_committed`` and ``complete`` (1 when all ``n`` draws are there).

    Example:
        >>> ds = bayesinv.data.open_data("train.zarr")
        >>> ds.sizes["draw"], ds.attrs["complete"]
        (10000, 1)
    """
    if isinstance(data, xr.Dataset):
        _check_dataset(data, "data=")
        return data
    if not isinstance(data, (str, bytes)) and not hasattr(data, "__fspath__"):
        raise StoreError(f"data= must be a path to a zarr store or an xarray.Dataset, got {type(data).__name__}")
    path = Path(os.fsdecode(data))
    if not path.exists():
        raise StoreError(f"{path}: no such zarr store")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a zarr store (a zarr store is a folder)")
    arrays = _scan_store(path)
    record = _read_state(path)
    if record is None:
        ds = _open_zarr(path)
        _check_dataset(ds, str(path))
        _errors_as_list(ds.attrs)
        return ds
    n_done = int(record["n_done"])
    if n_done <= 0:
        raise StoreError(f"{path} holds no committed draws yet (a simulation was started there and has not committed a chunk)")
    draw_arrays = {k: shape for k, (shape, dims) in arrays.items() if dims and dims[0] == "draw"}
    short = {k: shape[0] for k, shape in draw_arrays.items() if shape[0] < n_done}
    wanted = record.get("arrays") or {}
    missing = [k for k in wanted if k not in draw_arrays]
    if short or missing or not draw_arrays:
        raise StoreError(
            f"{path} is damaged: its commit record says {n_done} draws are committed, but "
            + (f"array(s) {short} are shorter" if short else f"array(s) {missing or 'all'} are missing")
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # zarr on stray files left by a killed writer
        if len({shape[0] for shape in draw_arrays.values()}) == 1:
            ds = _open_zarr(path)
        else:  # a writer is appending (or was killed while appending): arrays differ in length past n_done
            names = list(arrays)
            parts = [_open_zarr(path, drop_variables=[o for o in names if o != k]).isel(draw=slice(0, n_done)) for k in names]
            ds = xr.merge(parts, compat="override", join="override")
    ds = ds.isel(draw=slice(0, n_done))
    _check_dataset(ds, str(path))
    ds.attrs = _attrs_of(record)
    return ds


# --------------------------------------------------------------------------------------------
# Writing: one locked writer, transactional chunk commits
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that has not recorded itself yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} since {since}"


class _StoreLock:
    r"""The exclusive writer lock of a store (``_bayesinv/lock``) and its holder record."""

    def __init__(self, store: Path):
        self.store = store
        self.folder = store / _META
        self.holder_file = self.folder / _HOLDER
        self.lock = None

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.holder_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> None:
        import filelock

        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "zarr.json").is_file():  # so that zarr sees an (empty) group, not a stray folder
            _write_json_atomic(self.folder / "zarr.json", json.loads(_GROUP_JSON))
        self.lock = filelock.FileLock(str(self.folder / _LOCK), timeout=0)
        try:
            self.lock.acquire(timeout=0)
        except filelock.Timeout:
            self.lock = None
            holder = None
            for _ in range(20):  # the holder writes its record right after taking the lock
                holder = self._holder()
                if holder:
                    break
                time.sleep(0.05)
            hint = ""
            if holder and holder.get("host") == socket.gethostname():
                if holder.get("pid") == os.getpid():
                    hint = " (this process: another simulate() call on this store has not finished)"
                elif isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                    hint = (
                        f" (pid {holder['pid']} is no longer running, but a process it started — a simulator worker?"
                        " — still holds the lock; end it and run again)"
                    )
            raise StoreLockedError(
                f"{self.store} is being written by another simulate(): {_describe(holder)}{hint}; wait for it to"
                " finish (open_data() reads the committed draws meanwhile) or use another path"
            ) from None
        old = self._holder()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        if old is not None:
            pid, host = old.get("pid"), old.get("host")
            if host == me["host"] and isinstance(pid, int) and _pid_alive(pid) and pid != me["pid"]:
                why = "is running but no longer holds the lock (its pid was reused, or it released the lock uncleanly)"
            elif host == me["host"]:
                why = "is no longer running (killed or crashed)"
            else:
                why = "released the lock without clearing its record (it cannot be checked from this host)"
            warnings.warn(
                f"{self.store}: took over the stale lock of {_describe(old)}, which {why}; its committed draws are"
                " kept, anything it wrote after its last commit is discarded",
                StoreWarning,
                stacklevel=3,
            )
        _write_json_atomic(self.holder_file, me)

    def release(self) -> None:
        if self.lock is None:
            return
        try:
            self.holder_file.unlink(missing_ok=True)
        finally:
            self.lock.release()
            self.lock = None


def _config(problem: Problem, n: int, seed: int, chunk_size: int, dims: Mapping[str, list[str]]) -> dict[str, Any]:
    return {
        "model": problem.name,
        "n": int(n),
        "seed": int(seed),
        "chunk_size": int(chunk_size),
        "sites": {k: s.kind for k, s in problem.sites.items()},
        "dims": {k: list(v) for k, v in sorted(dims.items())},
    }


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for key in new:
        if key not in old:  # a key stores written by older versions did not record
            continue
        if old[key] != new[key]:
            out.append(f"{key}: {old[key]!r} in the store, {new[key]!r} now")
    return out


def _classify(store: Path) -> tuple[str, dict[str, Any] | None]:
    r"""``("new" | "store" | "file" | "foreign", record)`` for the path ``store``."""
    if not store.exists():
        return "new", None
    if not store.is_dir():
        return "file", None
    record = _read_state(store)
    if record is not None:
        return "store", record
    entries = [p.name for p in store.iterdir()]
    if not entries or entries == [_META] and not (store / _META / _RECORD).exists():
        return "new", None  # empty, or a store whose creation was killed before its first record
    return "foreign", None


def _clear_data(store: Path) -> None:
    r"""Deletes every array of the store (all but ``_bayesinv/``) and writes an empty root group."""
    for entry in store.iterdir():
        if entry.name == _META:
            continue
        _step(f"delete {entry.name}")
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    _step("create group")
    _write_json_atomic(store / "zarr.json", json.loads(_GROUP_JSON))


def _remove_partial_files(store: Path) -> None:
    r"""Removes the temporary files a killed writer leaves (zarr's ``*.partial``, ours ``*.tmp-<pid>``)."""
    for dirpath, _, filenames in os.walk(store):
        for name in filenames:
            if name.endswith(".partial") or ".tmp-" in name:
                (Path(dirpath) / name).unlink(missing_ok=True)


def _recover(store: Path, record: dict[str, Any]) -> dict[str, Any]:
    r"""Brings a store back to its last commit: truncates the rows past ``n_done``."""
    import zarr

    _remove_partial_files(store)
    n_done = int(record["n_done"])
    if n_done == 0:
        _clear_data(store)
        return record
    if not (store / "zarr.json").is_file():
        _write_json_atomic(store / "zarr.json", json.loads(_GROUP_JSON))
    arrays = _scan_store(store)
    wanted = record.get("arrays")
    if wanted is None:  # a store written before the commit record: every draw-indexed array
        wanted = {k: {"dtype": None} for k, (_, dims) in arrays.items() if dims and dims[0] == "draw"}
        record = {**record, "arrays": wanted}
    group = zarr.open_group(str(store), mode="r+")
    discarded = 0
    for name, spec in wanted.items():
        if name not in arrays or arrays[name][0][0] < n_done:
            have = arrays[name][0][0] if name in arrays else "no"
            raise StoreError(
                f"{store} is damaged: its commit record says {n_done} draws are committed, but array {name!r} has"
                f" {have} rows; the store cannot be resumed (overwrite=True starts it again)"
            )
        if arrays[name][0][0] > n_done:
            discarded = max(discarded, arrays[name][0][0] - n_done)
            _step(f"truncate {name}")
            group[name].resize((n_done, *arrays[name][0][1:]))
    for name, (shape, dims) in arrays.items():
        if name not in wanted and dims and dims[0] == "draw":  # created by an uncommitted first chunk
            _step(f"delete {name}")
            shutil.rmtree(store / name)
    if discarded:
        warnings.warn(
            f"{store}: discarded {discarded} uncommitted draw(s) past the last commit ({n_done} draws kept)",
            StoreWarning,
            stacklevel=4,
        )
    return record


def _commit(store: Path, group: Any, handles: dict[str, Any], state: dict[str, Any], values: Mapping[str, np.ndarray],
            dims: Mapping[str, list[str]], chunk_size: int) -> dict[str, Any]:
    r"""Appends ``values`` (rows ``n_done:n_done+got``) and replaces the commit record.

    The steps, in order: create the arrays (first commit only), resize every array,
    write the new rows of every array, replace the commit record. A kill before the
    last leaves the previous commit intact (the rows past it are truncated on resume).
    """
    start = int(state["n_done"])
    got = int(next(iter(values.values())).shape[0])
    arrays = state.get("arrays") or {}
    if not arrays:
        for name, v in values.items():
            _step(f"create {name}")
            group.create_array(
                name, shape=(0, *v.shape[1:]), chunks=(chunk_size, *v.shape[1:]), dtype=v.dtype,
                fill_value=np.zeros((), v.dtype).item(), dimension_names=["draw", *_site_dims(name, v.shape[1:], dims)],
            )
        arrays = {name: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for name, v in values.items()}
    if set(handles) != set(arrays):
        handles.clear()
        handles.update({name: group[name] for name in arrays})
    for name, arr in handles.items():
        _step(f"resize {name}")
        arr.resize((start + got, *arr.shape[1:]))
    for name, arr in handles.items():
        _step(f"write {name}")
        arr[start:start + got] = values[name]
    new = {**state, "arrays": arrays, "n_done": start + got}
    _step("record")
    _write_state(store, new)
    _step("committed")
    return new


def _site_dims(name: str, shape: tuple[int, ...], dims: Mapping[str, list[str]]) -> list[str]:
    if name in dims:
        names = list(dims[name])
        if len(names) != len(shape):
            raise ProblemError(f"dims for {name!r} name {len(names)} dim(s) {names}, but the site has shape {shape}")
        return names
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def _chunk_dataset(values: Mapping[str, np.ndarray], dims: Mapping[str, list[str]]) -> xr.Dataset:
    return xr.Dataset({name: (["draw", *_site_dims(name, v.shape[1:], dims)], v) for name, v in values.items()})


def _open_store(store: Path, problem: Problem, n: int, seed: int | None, chunk_size: int,
                dims: Mapping[str, list[str]], overwrite: bool) -> tuple[dict[str, Any], int]:
    r"""Under the lock: the state to start from (a fresh store, or the last commit of a resumable one)."""
    kind, record = _classify(store)
    if kind in ("file", "foreign"):
        raise StoreError(_refusal(store, kind, overwrite))
    if kind == "store":
        old_seed = record["config"].get("seed")
        resume_seed = old_seed if seed is None and isinstance(old_seed, int) else check_seed(seed)
        config = _config(problem, n, resume_seed, chunk_size, dims)
        diff = _differences(record["config"], config)
        if not diff:
            return _recover(store, record), resume_seed
        if not overwrite:
            raise StoreError(
                f"{store} holds a simulation with another configuration ({'; '.join(diff)}); pass overwrite=True to"
                " replace it, or use another path"
            )
    seed = check_seed(seed)
    state = {"config": _config(problem, n, seed, chunk_size, dims), "n_done": 0, "chunks_done": 0,
             "num_failed": 0, "errors": [], "arrays": None}
    _step("create record")
    _write_state(store, state)  # marks the folder as a bayesinv store before anything is deleted
    _clear_data(store)
    return state, seed


def _refusal(store: Path, kind: str, overwrite: bool) -> str:
    if kind == "file":
        return f"{store} is a file, not a simulation store (a store is a folder); pass another path"
    action = "refusing to delete it (overwrite=True replaces only stores written by bayesinv.simulate)" if overwrite \
        else "pass an empty or new folder (overwrite=True replaces only stores written by bayesinv.simulate)"
    return f"{store} exists and is not a bayesinv simulation store (no {_META}/{_RECORD}); {action}"


def simulate(
    model: Callable | Problem,
    n: int,
    *,
    seed: int | None = 0,
    path: str | os.PathLike | None = None,
    chunk_size: int = 1000,
    dims: Mapping[str, list[str]] | None = None,
    observed: list[str] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    vectorize: bool | None = None,
    client: Any = None,
) -> xr.Dataset:
    r"""Draws ``n`` samples from the model's joint distribution, optionally into a resumable store.

    With ``path=``, every chunk is committed transactionally: a kill at any moment loses
    at most the chunk being written, and running the same call again resumes from the
    last commit and ends with exactly the dataset an uninterrupted run makes, bit for bit
    (see the module documentation for the store layout). While it runs, the store is
    locked: a second writer gets :class:`~bayesinv.errors.StoreLockedError` naming this
    one, and :func:`open_data` reads the draws committed so far.

    Arguments:
        model: A Pyro model ``model(y=None)`` (or a traced problem).
        n: The number of (successful) draws.
        seed: The seed (default 0, like every entry point); the same seed gives the same dataset. ``None`` draws a fresh
            random seed — or, when ``path`` holds a run of this model with the same other
            settings, resumes it with the store's seed (``overwrite=True`` then draws a
            fresh one). The seed used is recorded in the store and in ``attrs["seed"]``.
        path: A zarr store (a folder) to write chunk by chunk. If it holds an unfinished
            run with the same configuration, the run resumes; if it holds the finished
            run, it is opened.
        chunk_size: Draws per chunk (one vectorised model run each); the last chunks
            are smaller, so no more simulations run than needed.
        dims: Site name → dim names (default ``{site}_dim_{i}``).
        observed: Observed site names, for models where they cannot be found automatically.
        overwrite: Replace a store that holds a run with another configuration. Only a
            store written by :func:`simulate` is ever deleted; any other folder or file is
            refused with :class:`~bayesinv.errors.StoreError`.
        progress: Show a progress bar (``None``: on a terminal).
        vectorize: Force or forbid the vectorised model run.
        client: A ``dask.distributed`` Client whose workers
            compute the chunks: a ``LocalCluster``, a ``dask-jobqueue`` cluster or any
            scheduler (see docs/cluster.md). This process stays the only writer: each chunk
            is committed once, in order, whatever worker computed it; a chunk lost with its
            worker is computed again. The dataset is bit for bit the one of the local run.
            A simulator inside the model then runs in the Dask workers' processes: its own
            ``workers=k`` pool is refused (:class:`~bayesinv.errors.OptionError`).

    Returns:
        An :class:`xarray.Dataset` with dim ``draw`` of size ``n`` (lazily backed by the
        zarr store when ``path`` is given). ``attrs`` hold the seed, the number of
        failed simulations and the first errors.

    Raises:
        StoreError: ``path`` is a file, a folder that is not a bayesinv store, or a store
            of another configuration (the message says which keys differ and how).
        StoreLockedError: Another live writer holds the store (pid, host and since when).
        OptionError: ``client=`` is not a ``distributed.Client``, or a simulator of the model
            has its own process pool (``workers > 1``) and ``client=`` is given.

    Example:
        >>> ds = bayesinv.simulate(model, 10_000, seed=0, path="train.zarr")
        >>> ds["theta"].shape
        (10000, 2)
    """
    n = check_count("n", n)
    chunk_size = check_count("chunk_size", chunk_size)
    if seed is not None:
        check_seed(seed)
    problem = as_problem(model, observed=observed)
    dims = dict(dims or {})
    if client is not None:
        from bayesinv._dask import check_client

        check_client(client, "simulate")
    if path is None:
        seed = check_seed(seed)
        state = {"config": _config(problem, n, seed, chunk_size, dims), "n_done": 0, "chunks_done": 0,
                 "num_failed": 0, "errors": []}
        parts: list[xr.Dataset] = []

        def keep(values: dict[str, np.ndarray], st: dict[str, Any]) -> dict[str, Any]:
            parts.append(_chunk_dataset(values, dims))
            return {**st, "n_done": st["n_done"] + int(next(iter(values.values())).shape[0])}

        state = _run(problem, state, vectorize, progress, keep, client)
        ds = xr.concat(parts, dim="draw") if len(parts) > 1 else parts[0]
        ds.attrs.update({k: v for k, v in _attrs_of(state).items() if k not in ("num_draws_committed", "complete")})
        return ds
    if not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
        raise StoreError(f"path= must be a folder path (str or os.PathLike), got {type(path).__name__}")
    store = Path(os.fsdecode(path))
    kind, _ = _classify(store)
    if kind in ("file", "foreign"):  # refused before anything is created inside it
        raise StoreError(_refusal(store, kind, overwrite))
    lock = _StoreLock(store)
    lock.acquire()
    try:
        state, seed = _open_store(store, problem, n, seed, chunk_size, dims, overwrite)
        if state["n_done"] < n:
            import zarr

            group, handles = zarr.open_group(str(store), mode="r+"), {}
            state = _run(problem, state, vectorize, progress,
                         lambda values, st: _commit(store, group, handles, st, values, dims, chunk_size), client)
    finally:
        lock.release()
    ds = open_data(store)
    ds.attrs.pop("num_draws_committed", None)
    ds.attrs.pop("complete", None)
    return ds


def _chunk_values(problem: Problem, size: int, seed: int, vectorize: bool | None) -> tuple[dict[str, np.ndarray], int, list[str]]:
    r"""One chunk: the good draws (site values and ``_sim_*`` outputs, NumPy), the failure count, the first errors.

    Module level, so that a Dask worker runs it (``simulate(..., client=)``).
    """
    batch = run_batch(problem, size, seed=seed, vectorize=vectorize)
    keep = batch.valid
    tensors = {k: v[keep] for k, v in batch.values.items()}
    tensors.update({f"_sim_{k}": v[keep] for k, v in batch.sim_outputs.items()})
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}, batch.num_failed, list(batch.errors)


def _run(problem: Problem, state: dict[str, Any], vectorize: bool | None, progress: bool | None,
         commit: Callable[[dict[str, np.ndarray], dict[str, Any]], dict[str, Any]], client: Any = None) -> dict[str, Any]:
    r"""Draws chunks from ``state["chunks_done"]`` on until ``n`` good draws are committed.

    With ``client``, the chunks are computed by Dask workers (a few ahead, each planned with
    the size it has if no draw fails; one planned wrongly is submitted again) and committed
    here, in index order, exactly as the local run commits them.
    """
    n, seed, chunk_size = state["config"]["n"], state["config"]["seed"], state["config"]["chunk_size"]
    bar = progress_bar(n, "simulate", progress, unit="draws", initial=state["n_done"])  # a resume's rate counts new draws only
    remote = None
    if client is not None:
        from bayesinv._dask import ChunkMap

        remote = ChunkMap(client, problem, _chunk_values, label="simulate")
    try:
        while state["n_done"] < n:
            index = state["chunks_done"]
            size = min(chunk_size, n - state["n_done"])
            if remote is None:
                chunk, num_failed, errors = _chunk_values(problem, size, chunk_seed(seed, index), vectorize)
            else:
                left = n - state["n_done"] - size  # planned as if no draw fails
                planned = ((index + j, min(chunk_size, rest)) for j, rest in enumerate(range(left, 0, -chunk_size), start=1))
                upcoming = ((i, m, (m, chunk_seed(seed, i), vectorize)) for i, m in planned)
                chunk, num_failed, errors = remote.get(index, size, (size, chunk_seed(seed, index), vectorize), upcoming)
            failed_run = state.get("failed_run", 0) + 1 if num_failed == size else 0
            if failed_run and (state["n_done"] == 0 or failed_run >= _MAX_FAILED_CHUNKS):
                # a broken simulator, not bad luck: the first chunk, or many chunks in a row, failed entirely
                raise ProblemError(
                    f"all {size} simulations of chunk {index} failed"
                    + (f" ({failed_run} chunks in a row)" if failed_run > 1 else "") + "; first error: "
                    + (errors[0] if errors else "non-finite values")
                )
            values = {k: v[: n - state["n_done"]] for k, v in chunk.items()}
            got = int(next(iter(values.values())).shape[0])
            state = {**state, "chunks_done": index + 1, "num_failed": state["num_failed"] + num_failed,
                     "errors": (state["errors"] + errors)[:5], "failed_run": failed_run}
            if got:  # (a chunk that added no draw is recorded with the next commit; redone, it fails again)
                state = commit(values, state)  # returns the state with n_done advanced by got
            bar.update(got)
    finally:
        if remote is not None:
            remote.close()
    bar.close()
    if state["num_failed"]:
        total = state["num_failed"] + n
        warnings.warn(
            f"{state['num_failed']} of {total} simulations failed ({100 * state['num_failed'] / total:.1f}%)"
            f" and were excluded; first error: {state['errors'][0] if state['errors'] else 'non-finite values'}",
            SimulationWarning,
            stacklevel=3,
        )
    return state
