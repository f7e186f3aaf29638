r"""Save and load of every learned posterior, checked before anything is built.

:func:`save_posterior` writes the method's settings (JSON) and the weights
(:func:`bayesinv.io.write_posterior`). :func:`load_posterior` rebuilds a posterior from a
file read by :func:`bayesinv.io.read_posterior` only after checking it:

1. the meta is a JSON object with the keys and types this module reads (layouts of
   bounded size, a known method whose settings are a JSON object);
2. every integer of the network settings is at most what the stored tensors allow (the
   largest stored dimension or the number of stored tensors, or 1024), every list of
   integers at most as long as the number of stored tensors — so a hostile ``hidden=[40000, 40000]`` or
   ``num_transforms=200000`` is refused before anything is allocated;
3. the network is built on ``torch.device("meta")`` (no memory) and its state dict is
   compared key by key and shape by shape with the stored tensors, and the normalisers
   with the target and condition layouts;

and only then is the network built for real. Every failure is a
:class:`~bayesinv.errors.PosteriorFileError` naming the problem.

A network injected with ``build=`` is saved with the recipe of its registered classes
(:mod:`bayesinv.amortized.custom`, settings key ``"custom_network"``) and goes through the same
checks; a file can name only registered classes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from bayesinv.amortized.custom import network_recipe, rebuild_network, state_differences
from bayesinv.amortized.layout import Layout, Normalizer, check_transforms, resolve_device
from bayesinv.errors import OptionError, PosteriorFileError, ProblemError

__all__ = ["save_posterior", "load_posterior", "check_meta"]

#: Largest number of entries of a site in a saved layout.
MAX_SITE_SIZE = 2**28
#: Integer settings up to this are always allowed (unused widths of old files); above it they must be
#: at most the largest stored dimension or the number of stored tensors.
_FLOOR = 1024
#: The settings key of each method's network recipe (checked against the tensors).
_NET_KEYS = ("net", "architecture")
#: The settings key of the recipe of a ``build=`` network (:mod:`bayesinv.amortized.custom`).
CUSTOM_KEY = "custom_network"


def _rebuild(method: Any, config: Mapping) -> torch.nn.Module:
    r"""The network of saved settings: the method's own, or the recipe of a ``build=`` network."""
    if CUSTOM_KEY in config:
        return rebuild_network(config[CUSTOM_KEY], method.rebuild, config)
    return method.rebuild(config)


def save_posterior(post: Any, path: Any) -> Any:
    r"""Writes ``post`` to ``path`` (a ``.bayesinv`` file).

    Arguments:
        post: An :class:`~bayesinv.amortized.posterior.AmortizedPosterior`.
        path: The file.

    Returns:
        The path written.
    """
    from bayesinv.io import write_posterior

    config = dict(post.config)
    if not post.saveable:  # a build= network: saved when its classes are registered (bayesinv.amortized.custom)
        config[CUSTOM_KEY] = network_recipe(post.net, lambda recipe: _skeleton(post.spec, {**post.config, CUSTOM_KEY: recipe}))
    meta = {
        "method": post.method,
        "target": post.target.to_json(),
        "condition": post.condition.to_json(),
        "transforms": post.transforms,
        "observed": list(post.observed),
        "obs_keys": post.obs_keys,
        "config": config,
        "info": post.info,
    }
    tensors = {f"net.{k}": v for k, v in post.net.state_dict().items()}
    tensors.update({f"x_norm.{k}": v for k, v in post.x_norm.state_dict().items()})
    tensors.update({f"c_norm.{k}": v for k, v in post.c_norm.state_dict().items()})
    return write_posterior(path, meta, tensors)


def _layout(meta: Mapping, key: str) -> Layout:
    d = meta.get(key)
    if not isinstance(d, dict) or not isinstance(d.get("names"), list) or not isinstance(d.get("shapes"), list):
        raise PosteriorFileError(f"meta {key!r} must be an object with lists 'names' and 'shapes', got {d!r:.200}")
    names, shapes = d["names"], d["shapes"]
    if len(names) != len(shapes) or len(names) > 1000 or not all(isinstance(n, str) for n in names):
        raise PosteriorFileError(f"meta {key!r}: names must be strings, one per shape")
    for n, s in zip(names, shapes):
        ok = isinstance(s, list) and len(s) <= 8 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in s)
        if not ok or math.prod(s) > MAX_SITE_SIZE:
            raise PosteriorFileError(f"meta {key!r}: site {n!r} has an invalid shape {s!r:.100}")
    return Layout.from_json(d)


def check_meta(meta: Any, method: str | None = None) -> tuple[Layout, Layout]:
    r"""Checks the keys and types of a posterior file's meta; returns the target and condition layouts."""
    if not isinstance(meta, dict):
        raise PosteriorFileError(f"meta.json must hold a JSON object, got {type(meta).__name__}")
    for key, kind in (("method", str), ("config", dict)):
        if not isinstance(meta.get(key), kind):
            raise PosteriorFileError(f"meta key {key!r} is missing or not a {kind.__name__} (got {meta.get(key)!r:.100})")
    for key, kind in (("transforms", dict), ("obs_keys", dict), ("info", dict), ("observed", list)):
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise PosteriorFileError(f"meta key {key!r} must be a {kind.__name__}, got {type(meta[key]).__name__}")
    return _layout(meta, "target"), _layout(meta, "condition")


def _bound(value: Any, max_int: int, max_len: int, where: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (float, str)):
        return
    if isinstance(value, int):
        if abs(value) > max_int:
            raise PosteriorFileError(f"network setting {where} = {value} exceeds what the stored weights allow ({max_int})")
    elif isinstance(value, list):
        floats = all(isinstance(v, float) for v in value)  # e.g. NCSN noise levels: not a size
        if len(value) > max_len and not floats:
            raise PosteriorFileError(f"network setting {where} has {len(value)} entries, more than the {max_len} stored tensors allow")
        for i, v in enumerate(value):
            _bound(v, max_int, max_len, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _bound(v, max_int, max_len, f"{where}.{k}")


_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full}
#: Tensors of at most this many elements are made for real by :class:`_LargeOnMeta` (index tables, masks).
_SMALL = 2**16


class _LargeOnMeta(TorchFunctionMode):
    r"""Creates every tensor of more than :data:`_SMALL` elements on the meta device (no memory), smaller ones on the CPU.

    For networks whose constructors compute on small tensors (zuko's masked MLPs take
    ``torch.unique`` of their adjacency, which has no meta kernel) while their weights stay unallocated.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            size = args[0] if args and (func is torch.full or isinstance(args[0], (tuple, list, torch.Size))) else args
            numel = math.prod(int(v) for v in size) if all(isinstance(v, int) for v in size) else 0
            if numel > _SMALL:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _skeleton(method: Any, config: Mapping) -> torch.nn.Module:
    r"""The network of the settings without its weights' memory: on the meta device, or with large tensors there."""
    try:
        with torch.device("meta"):
            return _rebuild(method, config)
    except NotImplementedError:  # an operator without a meta kernel in the constructor
        with _LargeOnMeta():
            return _rebuild(method, config)


def _check_state(expected: Mapping[str, Tensor], stored: Mapping[str, Tensor], what: str) -> None:
    missing, extra, shapes = state_differences(expected, stored)
    if missing or extra:
        raise PosteriorFileError(f"the stored {what} weights do not fit the network of the meta: missing {missing[:5]}, unexpected {extra[:5]}")
    if shapes:
        k = shapes[0]
        raise PosteriorFileError(f"stored tensor {what}.{k} has shape {tuple(stored[k].shape)}, the network of the meta needs {tuple(expected[k].shape)}")


def load_posterior(meta: dict, tensors: dict, *, device: Any = "cpu"):
    r"""Rebuilds a posterior from a checked file (used by :func:`bayesinv.load`).

    Arguments:
        meta: The meta JSON.
        tensors: Name → tensor.
        device: Where to put the network.

    Returns:
        The posterior.
    """
    from bayesinv.amortized.method import get_amortized
    from bayesinv.amortized.posterior import AmortizedPosterior

    target, condition = check_meta(meta)
    try:
        check_transforms(meta.get("transforms"), target.names)
    except OptionError as exc:
        raise PosteriorFileError(f"meta 'transforms': {exc}") from None
    observed, obs_keys = meta.get("observed") or [], meta.get("obs_keys") or {}
    if not all(isinstance(n, str) and n in condition.names for n in observed):
        raise PosteriorFileError(f"meta 'observed' must list conditioning sites {list(condition.names)}, got {observed!r:.100}")
    if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in obs_keys.items()):
        raise PosteriorFileError("meta 'obs_keys' must map site names to strings or null")
    try:
        method = get_amortized(meta["method"])
    except ProblemError as exc:
        raise PosteriorFileError(f"meta names method {meta['method']!r}, which has no saved posteriors: {exc}") from None
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()):
        raise PosteriorFileError("the weights must be a dict of named tensors")
    net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    for name, layout in (("x_norm", target), ("c_norm", condition)):
        for part in ("shift", "scale"):
            t = tensors.get(f"{name}.{part}")
            if t is None or tuple(t.shape) != (layout.dim,):
                shape = None if t is None else tuple(t.shape)
                raise PosteriorFileError(
                    f"stored {name}.{part} has shape {shape}, but the meta's {'target' if name == 'x_norm' else 'condition'}"
                    f" {dict(zip(layout.names, layout.shapes))} needs ({layout.dim},)"
                )
    config = meta["config"]
    recipe = {k: config[k] for k in (*_NET_KEYS, CUSTOM_KEY) if k in config}
    if not recipe:
        raise PosteriorFileError(f"meta config of method {method.name!r} has no network settings ({' or '.join(_NET_KEYS)})")
    missing = [k for k in method.saved_keys if k not in config]
    if missing:
        raise PosteriorFileError(f"meta config lacks the {method.name!r} settings {missing} (a file of another method?)")
    for key, spec in recipe.items():
        if not isinstance(spec, dict):
            raise PosteriorFileError(f"meta config {key!r} must be an object, got {type(spec).__name__}")
        want = {"x_dim": target.dim, "c_dim": condition.dim if method.conditional else 0}
        for name, value in want.items():
            if name in spec and spec[name] != value:
                raise PosteriorFileError(
                    f"meta config {key}.{name} = {spec[name]!r:.40}, but a {method.name!r} posterior of the meta's layouts needs {value}"
                )
    max_int = max([len(tensors), *(max(t.shape, default=1) for t in tensors.values())])
    _bound(recipe, max(max_int, _FLOOR), max(len(tensors), 8), "config")
    try:
        skeleton = _skeleton(method, config)
    except PosteriorFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any inconsistent recipe (a method swapped for another, wrong types)
        raise PosteriorFileError(f"the meta's settings do not describe a {method.name!r} network ({type(exc).__name__}: {exc})") from None
    _check_state(skeleton.state_dict(), net_state, "net")
    try:
        net = _rebuild(method, config)
        net.load_state_dict(net_state)
    except Exception as exc:  # noqa: BLE001
        raise PosteriorFileError(f"the weights cannot be loaded into the {method.name!r} network ({type(exc).__name__}: {exc})") from None
    cls = method.posterior or AmortizedPosterior
    return cls(
        method, net, target=target, condition=condition,
        x_norm=Normalizer(tensors["x_norm.shift"], tensors["x_norm.scale"]),
        c_norm=Normalizer(tensors["c_norm.shift"], tensors["c_norm.scale"]),
        transforms=meta.get("transforms"), observed=meta.get("observed") or (), obs_keys=meta.get("obs_keys"),
        config=config, info=meta.get("info"), device=resolve_device(device),
    )  # fmt: skip
