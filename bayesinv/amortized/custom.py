r"""Saving posteriors whose network was injected with ``build=``.

A named network is rebuilt from the settings its method saves. A network made by a
``build=`` callable has no such recipe, unless its class tells how to make it again:
a class registered with :func:`saveable_network` has a method ``recipe()`` returning a
JSON object and a class method ``from_recipe(recipe)`` building the same module (its
weights and buffers to be loaded from the file). Two shapes of ``build=`` network
are saved:

- the whole network is an instance of a registered class (``{"root": ...}``), e.g.
  :class:`bayesinv.models.oce_spheroid.PhaseFeatureNet`;
- the method's own network with submodules replaced by registered ones
  (``{"replace": {path: ...}}``), e.g. an observation embedding swapped in by
  :func:`bayesinv.models.oce_spheroid.phase_embedding_build`.

:func:`network_recipe` finds the recipe and checks, without allocating weights, that it rebuilds
a network with the same weights (names and shapes) before anything is written, so a
file that is written can be loaded. Loading names the class by its import path; a file
can only name classes that are registered, which happens when the module defining them
is imported (modules of ``bayesinv`` itself are imported on demand).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from torch import nn

from bayesinv.errors import PosteriorFileError, ProblemError

__all__ = ["saveable_network", "registered_network", "network_recipe", "rebuild_network", "state_differences"]

_NETWORKS: dict[str, type] = {}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def saveable_network(cls: type) -> type:
    r"""Class decorator: lets posteriors with ``build=`` networks of this class be saved with ``post.save``.

    The class must be a :class:`torch.nn.Module` with a method ``recipe(self) -> dict``
    (JSON: numbers, strings, lists, objects) and a class method
    ``from_recipe(cls, recipe) -> module`` that builds a module with the same parameters
    and buffers (their values come from the file).

    Example:
        >>> import torch
        >>> @saveable_network
        ... class Scaled(torch.nn.Module):
        ...     def __init__(self, width):
        ...         super().__init__()
        ...         self.width, self.lin = width, torch.nn.Linear(width, width)
        ...     def recipe(self):
        ...         return {"width": self.width}
        ...     @classmethod
        ...     def from_recipe(cls, recipe):
        ...         return cls(int(recipe["width"]))
        >>> registered_network(f"{Scaled.__module__}.{Scaled.__qualname__}") is Scaled
        True
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"saveable_network decorates torch.nn.Module classes, got {cls!r}")
    for attr in ("recipe", "from_recipe"):
        if not callable(getattr(cls, attr, None)):
            raise TypeError(f"saveable_network: {cls.__qualname__} needs a method {attr!r} (see the docstring)")
    _NETWORKS[_name(cls)] = cls
    return cls


def registered_network(name: str) -> type:
    r"""The class registered under ``name`` (``module.QualName``); a module of ``bayesinv`` is imported first if needed.

    Raises:
        PosteriorFileError: When no such class is registered.
    """
    if not isinstance(name, str) or len(name) > 300:
        raise PosteriorFileError(f"a saved network class must be named by a string, got {name!r:.100}")
    if name not in _NETWORKS and name.startswith("bayesinv.") and "." in name:
        module = name.rsplit(".", 1)[0]
        try:  # only our own package: a file cannot make the loader import anything else
            importlib.import_module(module)
        except ImportError:
            pass
    if name not in _NETWORKS:
        raise PosteriorFileError(
            f"the file's network contains a {name!r}, which is not a registered network class: import the module "
            "that defines it (its class decorated with bayesinv.amortized.custom.saveable_network) before bayesinv.load"
        )
    return _NETWORKS[name]


def _entry(module: nn.Module) -> dict:
    recipe = module.recipe()
    if not isinstance(recipe, dict):
        raise ProblemError(f"{type(module).__qualname__}.recipe() must return a dict, got {type(recipe).__name__}")
    return {"class": _name(type(module)), "recipe": recipe}


def _from_entry(entry: Any) -> nn.Module:
    if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), dict):
        raise PosteriorFileError(f"a saved custom network entry must be an object with 'class' and 'recipe', got {entry!r:.100}")
    cls = registered_network(entry.get("class"))
    module = cls.from_recipe(entry["recipe"])
    if not isinstance(module, nn.Module):
        raise PosteriorFileError(f"{entry['class']}.from_recipe returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _registered(module: nn.Module) -> bool:
    return _NETWORKS.get(_name(type(module))) is type(module)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = root.get_submodule(parent_path) if parent_path else root
        getattr(parent, name)
    except AttributeError:
        raise PosteriorFileError(f"the saved network has no submodule {path!r} to replace") from None
    setattr(parent, name, module)


def rebuild_network(recipe: Any, rebuild: Callable[[Mapping], nn.Module], settings: Mapping) -> nn.Module:
    r"""The network of a saved ``build=`` recipe (see the module docstring).

    Arguments:
        recipe: ``{"root": entry}`` or ``{"replace": {path: entry}}``, an entry being
            ``{"class": "module.QualName", "recipe": {...}}``.
        rebuild: The method's ``rebuild(settings)`` (for ``"replace"``).
        settings: The method's saved settings.
    """
    if not isinstance(recipe, dict) or set(recipe) not in ({"root"}, {"replace"}):
        raise PosteriorFileError(f"a saved custom network must be {{'root': ...}} or {{'replace': ...}}, got {recipe!r:.100}")
    if "root" in recipe:
        return _from_entry(recipe["root"])
    replace = recipe["replace"]
    if not isinstance(replace, dict) or not replace or len(replace) > 64 or not all(isinstance(p, str) for p in replace):
        raise PosteriorFileError("a saved custom network's 'replace' must map between 1 and 64 submodule paths to entries")
    net = rebuild(settings)
    for path, entry in replace.items():
        _set_submodule(net, path, _from_entry(entry))
    return net


def state_differences(expected: Mapping[str, Any], stored: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    r"""The keys of ``expected`` missing from ``stored``, those of ``stored`` not expected, and those whose shapes differ."""
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    shapes = [k for k, v in expected.items() if k in stored and tuple(v.shape) != tuple(stored[k].shape)]
    return missing, extra, shapes


def network_recipe(net: nn.Module, skeleton: Callable[[dict], nn.Module]) -> dict:
    r"""The recipe that rebuilds the ``build=`` network ``net``, checked without allocating weights.

    Arguments:
        net: The trained network.
        skeleton: ``skeleton(recipe)``: the network of a recipe with its weights on the meta device
            (the loader's own, :func:`bayesinv.amortized.files.load_posterior`).

    Raises:
        ProblemError: When ``net`` is neither a registered class nor the method's network with
            registered submodules, or when the recipe does not rebuild the same weights.
    """
    if _registered(net):
        recipe = {"root": _entry(net)}
    else:
        found = {}
        for path, module in net.named_modules():
            if path and _registered(module) and not any(path.startswith(p + ".") for p in found):
                found[path] = module
        if not found:
            raise ProblemError(
                "this posterior's network was injected with build= and neither it nor any of its submodules is a"
                " registered network class, so a file could not rebuild it: decorate the class that build= makes with"
                " bayesinv.amortized.custom.saveable_network, or save post.net.state_dict() yourself"
            )
        recipe = {"replace": {path: _entry(m) for path, m in found.items()}}
    try:
        rebuilt = skeleton(recipe)
    except (PosteriorFileError, ProblemError):
        raise
    except Exception as exc:  # noqa: BLE001 - a recipe that does not build is the caller's bug, named here
        raise ProblemError(f"the build= network's recipe {recipe!r:.200} does not rebuild ({type(exc).__name__}: {exc})") from None
    diff = [k for keys in state_differences(rebuilt.state_dict(), net.state_dict()) for k in keys]
    if diff:
        raise ProblemError(
            f"the build= network's recipe rebuilds a network with other weights ({diff[:5]}): its registered classes'"
            " recipe()/from_recipe() do not describe it (or build= changed more than the registered submodules)"
        )
    return recipe
