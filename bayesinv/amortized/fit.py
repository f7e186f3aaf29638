r"""The fit of every learned method: options → pairs → seeded network → shared loop → posterior.

:func:`fit_posterior` validates every option (names and values) before any simulation,
prepares the pairs (:func:`~bayesinv.amortized.pairs.prepare_pairs`), builds the network
inside a seeded block (the method's named builder, or ``build=``), trains it with the one
loop (:func:`~bayesinv.amortized.training.train`, with a checkpoint fingerprint) and
returns the posterior with the info record whose keys are :data:`INFO_KEYS` for every method.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from bayesinv._checks import check_count, check_seed
from bayesinv.amortized.layout import check_transforms, resolve_device
from bayesinv.amortized.method import AmortizedMethod, make_config, to_json
from bayesinv.amortized.pairs import Pairs, prepare_pairs
from bayesinv.amortized.training import RESUMABLE, TrainResult, check_checkpoint_options, train
from bayesinv.errors import OptionError
from bayesinv.problem import Problem

__all__ = ["INFO_KEYS", "check_fit_options", "fit_posterior", "seeded_rng", "info_record", "choose_sample_option", "seeded_from",
           "trained_model", "held_out", "choose_default_option", "train_stage"]  # fmt: skip

#: The keys of ``post.info``, the same for every learned method.
INFO_KEYS = ("num_simulations", "num_train_pairs", "seed", "fit_time_s", "train_time_s", "train_cpu_s", "train_steps", "best_val_loss",
             "final_train_loss", "stopped_early")  # fmt: skip


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    r"""torch's global RNG seeded with ``seed`` inside the block and restored after it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def seeded_from(generator: torch.Generator | None) -> Iterator[None]:
    r"""torch's global RNG seeded from ``generator`` inside the block (for samplers that draw from the global RNG, as zuko's)."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[generator.device] if generator.device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def trained_model(result: TrainResult) -> torch.nn.Module:
    r"""The module a training run leaves: its EMA copy if it has one, else the trained module."""
    return result.ema_model if result.ema_model is not None else result.model


def check_fit_options(method: AmortizedMethod, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    r"""Validates the fit options of ``method`` (names and values) without doing any work.

    Arguments:
        method: The method.
        options: Keyword options of ``fit`` (config fields, common options, method extras).

    Returns:
        The config and the common options (defaults filled in).
    """
    options = dict(options)
    common = {k: options.pop(k, None) for k in ("num_simulations", "data", "transforms", "condition", "checkpoint", "build")}
    common["resume"] = options.pop("resume", False)
    common["device"] = options.pop("device", "auto")
    extras = {k: options.pop(k) for k in method.fit_extras if k in options}
    cfg = make_config(method, options.pop("config", None), options)
    if common["num_simulations"] is not None:
        common["num_simulations"] = check_count("num_simulations", common["num_simulations"], minimum=10, error=OptionError)
    elif common["data"] is None:
        raise OptionError("give num_simulations= (simulate now) or data= (a dataset from bayesinv.simulate)")
    common["transforms"] = check_transforms(common["transforms"])
    check_checkpoint_options(common["checkpoint"], common["resume"])
    if common["build"] is not None and not callable(common["build"]):
        raise OptionError(f"build must be a callable build(cfg, pairs) -> nn.Module, got {common['build']!r}")
    common["device"] = resolve_device(common["device"])
    return cfg, {**common, "extras": extras}


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def info_record(pairs: Pairs, seed: int, t0: float, results: list[TrainResult], extra: dict | None = None) -> dict[str, Any]:
    r"""The info record: :data:`INFO_KEYS` (``best_val_loss`` ``None`` without validation, never NaN), for a method
    trained in stages ``stages`` (each stage's ``train_steps`` and ``best_val_loss``), and method extras."""
    last = results[-1]
    info = {
        "num_simulations": int(pairs.num_simulations),
        "num_train_pairs": int(len(pairs.x)),
        "seed": int(seed),
        "fit_time_s": time.perf_counter() - t0,
        "train_time_s": float(sum(r.wall_time for r in results)),
        "train_cpu_s": _finite(float(sum(r.cpu_time for r in results))),
        "train_steps": int(sum(r.steps for r in results)),
        "best_val_loss": _finite(last.best_val),
        "final_train_loss": last.history["train_loss"][-1] if last.history["train_loss"] else None,
        "stopped_early": any(bool(r.stopped_early) for r in results),
    }
    if len(results) > 1:
        info["stages"] = [{"train_steps": r.steps, "best_val_loss": _finite(r.best_val)} for r in results]
    info.update(extra or {})
    return info


def held_out(n: int, val_fraction: float, seed: int) -> Tensor:
    r"""Indices of the (at least one) rows of ``n`` training pairs the training loop of ``seed`` holds out for validation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: max(1, int(round(n * val_fraction)))]


def fit_posterior(
    problem: Problem,
    method: AmortizedMethod,
    *,
    target: tuple[str, ...],
    seed: int | None = 0,
    progress: bool | None = None,
    **options: Any,
):
    r"""Fits the learned posterior of ``method`` on simulated (or given) pairs.

    Arguments:
        problem: The traced problem.
        method: The method record.
        target: The target sites.
        seed: Seed of the simulations, the initial weights and the training (``None``: fresh, recorded in ``info``).
        progress: Show progress bars (``None``: on a terminal).
        options: Fields of the method's config, ``config=`` (dataclass or dict), and
            ``num_simulations``, ``data``, ``transforms``, ``condition``, ``checkpoint``,
            ``resume``, ``device``, ``build``.

    Returns:
        The posterior (``method.posterior`` or :class:`~bayesinv.amortized.posterior.AmortizedPosterior`),
        with the problem attached (deterministic sites from latent draws).
    """
    from bayesinv.amortized.posterior import AmortizedPosterior

    t0 = time.perf_counter()
    seed = check_seed(seed)
    cfg, common = check_fit_options(method, options)
    dev = common["device"]
    pairs = (method.pairs or prepare_pairs)(
        problem, tuple(target), common["condition"], normalization=cfg.normalization, transforms=common["transforms"],
        num_simulations=common["num_simulations"], data=common["data"], seed=seed, progress=progress,
        conditional=method.conditional,
    )  # fmt: skip
    check_transforms(common["transforms"], pairs.target.names)
    tcfg = cfg.train_config(seed=seed, device=dev, progress=progress)
    fingerprint = {
        "method": method.name, "config": {k: v for k, v in to_json(cfg).items() if k not in RESUMABLE}, "seed": seed, "data": pairs.digest(),
        "num_train_pairs": int(len(pairs.x)), "target": pairs.target.to_json(), "condition": pairs.condition.to_json(),
    }  # fmt: skip

    def run(loss_fn: Callable, module: torch.nn.Module, data: tuple, suffix: str = "") -> TrainResult:
        path = None if common["checkpoint"] is None else os.fspath(common["checkpoint"]) + suffix
        return train(loss_fn, module, data, config=tcfg, checkpoint_path=path, resume=common["resume"],
                     fingerprint={**fingerprint, "stage": suffix})  # fmt: skip

    with seeded_rng(seed, dev):
        net, settings = method.build(cfg, pairs, seed)
        if common["build"] is not None:
            net = common["build"](cfg, pairs)
            if not isinstance(net, torch.nn.Module):
                raise OptionError(f"build= returned {type(net).__name__}, not a torch.nn.Module")
        net = net.to(dev)
        if method.train is not None:
            net, results, extra = method.train(net, pairs, cfg, settings, run, seed)
        else:
            result = run(method.loss(cfg, net, settings), net, (pairs.x, pairs.c))
            net, results, extra = trained_model(result), [result], {}
    cls = method.posterior or AmortizedPosterior
    post = cls(
        method, net, target=pairs.target, condition=pairs.condition, x_norm=pairs.x_norm, c_norm=pairs.c_norm,
        transforms=common["transforms"], observed=pairs.observed, obs_keys=pairs.obs_keys, config=settings,
        info=info_record(pairs, seed, t0, results, extra), device=dev, saveable=common["build"] is None,
        **common["extras"],
    )  # fmt: skip
    return post.attach(problem)  # the model replays deterministic sites from latent draws


def choose_sample_option(post: Any, name: str, candidates: Sequence[Any], y: Any, truth: Any, *, seed: int = 0,
                         **options: Any) -> tuple[Any, dict[Any, float]]:  # fmt: skip
    r"""The value of the sampling option ``name`` whose draws, one per validation pair, have the smallest mean squared error.

    Arguments:
        post: A fitted posterior with one target site.
        name: A sampling option of its method (e.g. csd_star's ``insert_step``).
        candidates: The values to try.
        y: Validation observations ``(B, *obs shape)``.
        truth: Their true targets ``(B, *target shape)``.
        seed: Seed of the draws (the same for every candidate).
        options: Further sampling options.

    Returns:
        The best value and the mean MSE of every candidate.
    """
    site, truth = post.target.names[0], torch.as_tensor(np.asarray(truth)).float()
    table = {}
    for value in candidates:
        draws = post.sample(y, 1, seed=seed, **{name: value}, **options)[site][:, 0]
        table[value] = float((draws - truth).pow(2).flatten(1).mean(1).mean())
    return min(table, key=table.get), table


def choose_default_option(post: Any, name: str, candidates: Sequence[Any], y: Any, truth: Any, *, seed: int = 0, update: bool = True,
                          saved: Sequence[str] = (), **options: Any) -> tuple[Any, dict[Any, float]]:  # fmt: skip
    r""":func:`choose_sample_option`, and with ``update`` the best value becomes the posterior's default (``post.config[name]``),
    with the options named in ``saved`` that were given (the settings it was chosen under, e.g. ``steps`` for csd_star's K′)."""
    best, table = choose_sample_option(post, name, candidates, y, truth, seed=seed, **options)
    if update:
        post.config[name] = best
        post.config.update({k: options[k] for k in saved if options.get(k) is not None})
    return best, table


def train_stage(run: Callable, module: torch.nn.Module, data: tuple, suffix: str) -> TrainResult:
    r"""One stage of a method trained in stages: ``run`` (the shared loop, as passed to ``AmortizedMethod.train``)
    minimises ``module(*batch)``, and the trained (EMA) weights are loaded back into ``module``."""
    result = run(lambda m, *batch: m(*batch), module, data, suffix)
    module.load_state_dict(trained_model(result).state_dict())
    return result
