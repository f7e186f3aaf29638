r"""Helpers shared by the benchmark scripts: run metadata and result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["RESULTS", "metadata", "write_results", "set_threads"]

RESULTS = Path(__file__).resolve().parent / "results"


def set_threads(n: int | None) -> None:
    r"""Limits torch to ``n`` threads (``None``: leave as is)."""
    if n:
        torch.set_num_threads(int(n))


def metadata(machine: str) -> dict[str, Any]:
    r"""The date, command line, machine description, versions and git commit of a run."""
    root = Path(__file__).resolve().parent.parent
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, check=False).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no", "--", "bayesinv", "benchmarks", ":!benchmarks/results"):
            commit += "+modified"  # the code that ran differs from the commit
    except OSError:
        commit = ""
    import bayesinv

    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "bayesinv": bayesinv.__version__,
        "git_commit": commit,
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    r"""Writes ``payload`` as ``benchmarks/results/<name>.json`` and returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=float))
    return path
