r"""One training loop for every learned method.

``train(loss_fn, module, train_data)`` minimises ``loss_fn(module, *batch)`` over
shuffled mini-batches of the tensors in ``train_data`` (rows paired along the first
dimension), keeps an exponential moving average (EMA) of the weights,
:math:`\theta' \leftarrow d\,\theta' + (1 - d)\,\theta` (eq. 19 of the cSDM paper, with
the warm-up :math:`d = \min(d, (1 + k)/(10 + k))` at step :math:`k`), evaluates a
validation loss with the EMA weights, stops early when it stops improving, and writes
resumable checkpoints. Options live in the frozen :class:`TrainConfig`; everything the
loop knows is in the checkpoint, nothing is kept between calls.

Checkpoints are ``torch.save`` dictionaries of tensors, numbers, strings, lists and
dictionaries only, so ``torch.load(path, weights_only=True)`` reads them. They are written
atomically (temporary file, fsync, ``os.replace``): a kill at any moment leaves the
previous checkpoint or the new one, never a torn file. A checkpoint carries the
``fingerprint`` of its run (configuration, data digest, site layout); resuming from one
whose fingerprint differs raises :class:`~bayesinv.errors.CheckpointError` naming what differs.

After the first steps the loop logs (logger ``"bayesinv"``, level INFO) and shows in its
progress bar the estimated training time.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from bayesinv._fsutil import fsync_dir
from bayesinv.errors import CheckpointError, OptionError

__all__ = ["TrainConfig", "TrainResult", "train", "check_checkpoint_options", "read_checkpoint", "write_checkpoint"]

logger = logging.getLogger("bayesinv")
#: Options that may change between a run and its resume (the budget, where it runs); all others are fingerprinted.
RESUMABLE = ("max_epochs", "max_steps", "patience", "checkpoint_every", "device", "progress")
#: Training precisions: float32, or a bfloat16 autocast of the loss.
PRECISIONS = ("float32", "bfloat16")
#: Steps timed before the training time is estimated and reported.
ETA_AFTER_STEPS = 10


@dataclass(frozen=True)
class TrainConfig:
    r"""Options of :func:`train`.

    Arguments:
        batch_size: The mini-batch size.
        max_epochs: Passes over the training data (used when ``max_steps`` is ``None``).
        max_steps: Optimiser steps; overrides ``max_epochs``.
        lr: The learning rate.
        optimizer: ``"adam"`` or ``"adamw"``.
        weight_decay: Weight decay of the optimiser.
        lr_schedule: ``None`` (constant) or ``"cosine"`` (to 0 at the last step).
        warmup_steps: Steps of linear learning-rate warm-up.
        ema_decay: The EMA momentum :math:`d`, or ``None`` for no EMA.
        val_fraction: Share of ``train_data`` held out when no ``val_data`` is given.
        eval_every: Steps between evaluations; ``None`` for once per epoch.
        patience: Evaluations without improvement before stopping; ``None`` never stops.
        min_delta: The least decrease of the validation loss counted as improvement.
        restore_best: Whether to return the weights of the best validation loss.
        grad_clip: Maximal gradient norm, or ``None``.
        checkpoint_every: Steps between checkpoints; ``None`` for every evaluation.
        seed: Seed of the validation split, the shuffling and the validation noise.
        device: Where to train; ``None`` keeps the module's device.
        progress: Show a progress bar; ``None`` shows it only on a terminal.
        precision: ``"float32"``, or ``"bfloat16"``: the training loss under ``torch.autocast`` (weights,
            optimiser and validation stay float32). On CPU it pays off for wide convolutional networks only
            (docs/benchmarks.md, "Training-loop throughput").
    """

    batch_size: int = 128
    max_epochs: int | None = 100
    max_steps: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str | None = None
    warmup_steps: int = 0
    ema_decay: float | None = 0.999
    val_fraction: float = 0.1
    eval_every: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    grad_clip: float | None = None
    checkpoint_every: int | None = None
    seed: int = 0
    device: str | None = None
    progress: bool | None = None
    precision: str = "float32"

    def __post_init__(self):
        if self.max_steps is None and self.max_epochs is None:
            raise OptionError("TrainConfig needs max_steps or max_epochs")
        for name in ("max_steps", "max_epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise OptionError(f"{name} must be None or an integer >= 1 (0 would return an untrained network), got {value!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise OptionError(f"unknown optimizer {self.optimizer!r}; use 'adam' or 'adamw'")
        if self.lr_schedule not in (None, "cosine"):
            raise OptionError(f"unknown lr_schedule {self.lr_schedule!r}; use None or 'cosine'")
        if self.precision not in PRECISIONS:
            raise OptionError(f"unknown precision {self.precision!r}; use one of {list(PRECISIONS)}")


class TrainResult(NamedTuple):
    r"""The outcome of :func:`train`.

    Arguments:
        model: The trained module (best validation weights if ``restore_best``).
        ema_model: Its EMA copy (``None`` without EMA).
        history: Lists ``step``, ``train_loss`` (mean since the previous evaluation),
            ``val_loss`` (NaN without validation data) and ``lr``, one entry per evaluation.
        best_val: The best validation loss (NaN without validation data).
        steps: Optimiser steps done, those of resumed runs included.
        wall_time: Seconds spent training, those of resumed runs included.
        stopped_early: Whether early stopping ended the run.
        cpu_time: Process CPU seconds spent training, those of resumed runs included (NaN when the run
            resumed from a checkpoint written before checkpoints recorded it).
    """

    model: nn.Module
    ema_model: nn.Module | None
    history: dict[str, list[float]]
    best_val: float
    steps: int
    wall_time: float
    stopped_early: bool = False
    cpu_time: float = math.nan


def _split(train_data: Sequence[Tensor], val_data, cfg: TrainConfig) -> tuple[tuple, tuple | None]:
    train_data = (train_data,) if isinstance(train_data, Tensor) else tuple(train_data)
    if val_data is not None:
        return train_data, ((val_data,) if isinstance(val_data, Tensor) else tuple(val_data))
    n = len(train_data[0])
    n_val = int(round(n * cfg.val_fraction))
    if n_val < 1 or n_val >= n:
        return train_data, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    pick = lambda idx: tuple(d[idx.to(d.device)] for d in train_data)
    return pick(perm[n_val:]), pick(perm[:n_val])


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    if cfg.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return lr


class _Pairs(NamedTuple):
    r"""The EMA's and the module's parameters and buffers as lists, built once per run (updates are in place)."""

    ema_params: list[Tensor]
    params: list[Tensor]
    ema_buffers: list[Tensor]
    buffers: list[Tensor]


def _ema_pairs(ema: nn.Module, module: nn.Module) -> _Pairs:
    pairs = [(be, b) for be, b in zip(ema.buffers(), module.buffers())]
    return _Pairs([p for p in ema.parameters()], [p.detach() for p in module.parameters()],
                  [be for be, _ in pairs], [b for _, b in pairs])  # fmt: skip


@torch.no_grad()
def _ema_update(pairs: _Pairs, decay: float) -> None:
    r"""θ' ← θ' + (1 − d)(θ − θ') for every parameter in one fused call (bitwise the same as ``lerp_`` one by one), buffers copied."""
    torch._foreach_lerp_(pairs.ema_params, pairs.params, 1 - decay)
    if pairs.buffers:
        torch._foreach_copy_(pairs.ema_buffers, pairs.buffers)


@torch.no_grad()
def _evaluate(loss_fn: Callable, module: nn.Module, data: tuple, cfg: TrainConfig, device: torch.device) -> float:
    was_training = module.training
    module.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed + 1)  # the same noise at every evaluation
        total, n = 0.0, len(data[0])
        for start in range(0, n, cfg.batch_size):
            batch = tuple(d[start : start + cfg.batch_size].to(device) for d in data)
            total = total + loss_fn(module, *batch).detach().double() * len(batch[0])  # one host sync, at the end
    module.train(was_training)
    return float(total) / n


def _clone_state(module: nn.Module | None) -> dict | None:
    return None if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}


def write_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    r"""Writes ``payload`` atomically: a temporary file in the same folder, fsync, ``os.replace``, fsync of the folder.

    Arguments:
        path: The checkpoint path.
        payload: Tensors, numbers, strings, lists and dicts (``weights_only`` loadable).
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _remove_stale_temporaries(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _remove_stale_temporaries(path: str) -> None:
    r"""Removes ``<path>.tmp<pid>`` files left by writers that were killed mid-write (their process is gone)."""
    folder, base = os.path.split(os.path.abspath(path))
    for name in os.listdir(folder):
        pid = name[len(base) + 4 :]
        if not name.startswith(base + ".tmp") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # still alive: leave its file alone
        except ProcessLookupError:
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
        except OSError:
            pass


def read_checkpoint(path: str | os.PathLike) -> dict:
    r"""Reads a checkpoint written by :func:`train` (``weights_only``); a broken file is a :class:`CheckpointError`."""
    try:
        ck = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise CheckpointError(f"checkpoint {os.fspath(path)} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ck, dict) or "model" not in ck or "step" not in ck:
        raise CheckpointError(f"{os.fspath(path)} is not a bayesinv training checkpoint")
    return ck


def check_checkpoint_options(checkpoint: Any, resume: Any) -> None:
    r"""Refuses, before any work, ``resume=True`` without ``checkpoint=`` and a checkpoint in a missing folder."""
    if not isinstance(resume, bool):
        raise OptionError(f"resume must be True or False, got {resume!r}")
    if checkpoint is None:
        if resume:
            raise OptionError("resume=True needs checkpoint= (the path of the checkpoint to continue from)")
        return
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise OptionError(f"checkpoint must be a path, got {checkpoint!r} ({type(checkpoint).__name__})")
    folder = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
    if not os.path.isdir(folder):
        raise OptionError(f"checkpoint={os.fspath(checkpoint)!r}: the folder {folder} does not exist")
    if os.path.isdir(os.fspath(checkpoint)):
        raise OptionError(f"checkpoint={os.fspath(checkpoint)!r} is a folder; give a file path")


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if not isinstance(stored, dict):
        return ["the checkpoint has no fingerprint"] if not prefix else [f"{prefix}: checkpoint {stored!r}, this run {current!r}"]
    out = []
    for k in sorted(set(stored) | set(current)):
        a, b = stored.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r:.80}, this run {b!r:.80}")
    return out


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _report_eta(bar: Any, steps: int, seconds: float, remaining: int) -> None:
    per_step = seconds / steps
    eta = per_step * remaining
    text = f"{eta / 3600:.1f} h" if eta > 5400 else f"{eta / 60:.1f} min" if eta > 90 else f"{eta:.0f} s"
    logger.info("training: %d steps to go at %.3g s per step: about %s more (estimated after %d steps)",
                remaining, per_step, text, steps)  # fmt: skip
    if hasattr(bar, "format_dict"):  # a tqdm bar; log lines carry their own ETA
        bar.set_description(f"train (about {text} left)")


def train(
    loss_fn: Callable[..., Tensor],
    module: nn.Module,
    train_data: Sequence[Tensor] | Tensor,
    *,
    val_data: Sequence[Tensor] | Tensor | None = None,
    config: TrainConfig | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
    **options: Any,
) -> TrainResult:
    r"""Trains ``module`` by minimising ``loss_fn(module, *batch)``.

    Arguments:
        loss_fn: Maps the module and one mini-batch of each tensor of ``train_data`` to
            a scalar loss; it draws its own noise from torch's global generator.
        module: The parameters to train, updated in place.
        train_data: Tensors with the same first dimension.
        val_data: Validation tensors; by default ``val_fraction`` of ``train_data``.
        config: The options; keyword ``options`` override its fields.
        checkpoint_path: Where to write checkpoints (model, EMA, optimiser, step,
            shuffling and random states, best state, history).
        resume: Whether to continue from ``checkpoint_path`` when it exists.
        fingerprint: JSON-able description of the run (stored in checkpoints; a resume
            from a checkpoint with another fingerprint raises :class:`CheckpointError`).
            The training options are always part of it.

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> loss = lambda net, theta, y: dsm_loss(net, theta, y, VE(5.0))
        >>> result = train(loss, ScoreMLP(2, 3), (theta, y), max_steps=2000, patience=10)
    """
    cfg = dataclasses.replace(config or TrainConfig(), **options) if options else (config or TrainConfig())
    device = torch.device(cfg.device) if cfg.device else next(module.parameters()).device
    module.to(device)
    train_data, val_data = _split(train_data, val_data, cfg)
    # the pairs live on the training device for the whole run: no host-to-device copy per step
    train_data = tuple(d.to(device) for d in train_data)
    val_data = None if val_data is None else tuple(d.to(device) for d in val_data)
    n = len(train_data[0])
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.max_epochs * per_epoch
    eval_every = cfg.eval_every or per_epoch
    ckpt_every = cfg.checkpoint_every or eval_every

    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = [p for p in module.parameters()]
    # fused: one kernel per Adam update (2.5x faster than foreach on a CPU MLP; equal up to rounding), where
    # torch has it for every parameter; else foreach (one multi-tensor update instead of a loop over tensors)
    fused = all(p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda") for p in params)
    opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **({"fused": True} if fused else {"foreach": True}))
    gen = torch.Generator().manual_seed(cfg.seed)
    s: dict[str, Any] = dict(
        step=0, perm=torch.randperm(n, generator=gen), pos=0, best_val=math.inf, bad=0, wall=0.0, cpu=0.0,
        run_sum=0.0, run_n=0, stopped=False, best_model=None, best_ema=None,
        history={"step": [], "train_loss": [], "val_loss": [], "lr": []},
    )  # fmt: skip

    config_json = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                   for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE}  # fmt: skip
    fp = _json_safe({**(fingerprint or {}), "train_config": config_json})
    check_checkpoint_options(checkpoint_path, resume)
    ck = None
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        ck = read_checkpoint(checkpoint_path)
        diff = _differences(ck.get("fingerprint"), fp)
        if diff:
            raise CheckpointError(
                f"checkpoint {os.fspath(checkpoint_path)} belongs to another run; refusing to resume from it. Differences: "
                + "; ".join(diff)
            )
        try:
            module.load_state_dict(ck["model"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {os.fspath(checkpoint_path)} does not fit this network: {exc}") from exc
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["rng_shuffle"])
        torch.set_rng_state(ck["rng_torch"])
        if device.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"], device)
        # "cpu" arrived after the first checkpoints: an older one resumes with the CPU time unknown (NaN), not 0
        s.update({k: ck.get(k, math.nan) if k == "cpu" else ck[k] for k in s})
    ema = copy.deepcopy(module).requires_grad_(False).eval() if cfg.ema_decay is not None else None
    if ema is not None and ck is not None and ck["ema"] is not None:
        ema.load_state_dict(ck["ema"])
    ema_pairs = None if ema is None else _ema_pairs(ema, module)

    def checkpoint() -> None:
        if checkpoint_path is None:
            return
        write_checkpoint(checkpoint_path, {
            "model": module.state_dict(), "ema": None if ema is None else ema.state_dict(),
            "optimizer": opt.state_dict(), "rng_shuffle": gen.get_state(), "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "config": {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                       for k, v in dataclasses.asdict(cfg).items()},
            "fingerprint": fp,
            **s,
        })  # fmt: skip

    from bayesinv.methods._util import progress_bar

    bar = progress_bar(total, "train", cfg.progress, unit="steps", initial=s["step"])  # a bar, or log lines without a terminal
    run_sum = torch.tensor(s["run_sum"], device=device)
    start, cpu_start = time.perf_counter() - s["wall"], time.process_time() - s["cpu"]
    first_step, first_time = s["step"], time.perf_counter()
    perm_dev = None
    module.train()
    while s["step"] < total and not s["stopped"]:
        if s["pos"] >= n or perm_dev is None:
            if s["pos"] >= n:
                s["perm"], s["pos"] = torch.randperm(n, generator=gen), 0
            perm_dev = s["perm"].to(device)  # one copy of the epoch's order, not one per step
        idx = perm_dev[s["pos"] : s["pos"] + cfg.batch_size]
        s["pos"] += len(idx)
        batch = tuple(d.index_select(0, idx) for d in train_data)
        lr = _lr_at(s["step"], total, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):
            loss = loss_fn(module, *batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        s["step"] += 1
        if ema is not None:
            _ema_update(ema_pairs, min(cfg.ema_decay, (1 + s["step"]) / (10 + s["step"])))
        run_sum += loss.detach()
        s["run_n"] += 1
        bar.update(1)
        if s["step"] - first_step == ETA_AFTER_STEPS and total > s["step"]:
            _report_eta(bar, s["step"] - first_step, time.perf_counter() - first_time, total - s["step"])

        if s["step"] % eval_every == 0 or s["step"] == total:
            train_loss = run_sum.item() / s["run_n"]
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"train: non-finite training loss at step {s['step']}")
            run_sum.zero_()
            s["run_n"] = 0
            val_loss = math.nan
            if val_data is not None:
                val_loss = _evaluate(loss_fn, ema if ema is not None else module, val_data, cfg, device)
                if val_loss < s["best_val"] - cfg.min_delta:
                    s["best_val"], s["bad"] = val_loss, 0
                    if cfg.restore_best:
                        s["best_model"], s["best_ema"] = _clone_state(module), _clone_state(ema)
                else:
                    s["bad"] += 1
                    s["stopped"] = cfg.patience is not None and s["bad"] > cfg.patience
            for key, value in zip(s["history"], (s["step"], train_loss, val_loss, lr)):
                s["history"][key].append(value)
            bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
        if s["step"] % ckpt_every == 0 or s["step"] == total or s["stopped"]:
            s["wall"], s["cpu"], s["run_sum"] = time.perf_counter() - start, time.process_time() - cpu_start, run_sum.item()
            checkpoint()
    bar.close()
    s["wall"], s["cpu"] = time.perf_counter() - start, time.process_time() - cpu_start

    if cfg.restore_best and s["best_model"] is not None:
        module.load_state_dict(s["best_model"])
        if ema is not None:
            ema.load_state_dict(s["best_ema"])
    best_val = s["best_val"] if val_data is not None else math.nan
    return TrainResult(module, ema, s["history"], best_val, s["step"], s["wall"], s["stopped"], s["cpu"])
