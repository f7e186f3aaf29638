r"""File-system helpers shared by the writers of user data (simulation stores, checkpoints)."""

from __future__ import annotations

import os

__all__ = ["fsync_dir"]


def fsync_dir(folder: str | os.PathLike) -> None:
    r"""Flushes a folder's entries to disk (after an ``os.replace`` in it); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
