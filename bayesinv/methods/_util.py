r"""Small helpers shared by the method files."""

from __future__ import annotations

import numpy as np

__all__ = ["chunk_seed", "progress_bar"]


def chunk_seed(seed: int | None, index: int) -> int:
    r"""A reproducible, well-mixed seed for chunk ``index`` of a run seeded with ``seed``."""
    entropy = [0 if seed is None else int(seed) % (2**63), int(index) % (2**63), 0 if index >= 0 else 1]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % (2**63))


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "it"):
    r"""A tqdm progress bar; ``enabled=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled, leave=False)
