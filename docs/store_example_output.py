r"""Runs one example script and stores what it printed and drew, for the documentation site.

The site's gallery executes only the quick examples while it builds; the others are shown
with the output stored here from a recorded run (command, machine and date in the header).

Run:  python docs/store_example_output.py examples/eit.py [-- example arguments]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "docs" / "gallery_output"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", type=Path)
    parser.add_argument("args", nargs="*", help="arguments passed to the example")
    opts = parser.parse_args()
    name = opts.example.stem
    out = ROOT / "out"
    cmd = [sys.executable, str(opts.example.resolve()), *opts.args]
    env = dict(os.environ, MPLBACKEND="Agg")
    start = time.time()
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"{opts.example} failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
    dest = STORE / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    # the example's own figures: written during the run under out/<name>... (another run may write too)
    figures = sorted(p for p in out.rglob("*.png") if p.stat().st_mtime >= start and p.relative_to(out).parts[0].startswith(name))
    for i, p in enumerate(figures):
        shutil.copy(p, dest / f"{i:02d}_{p.name}")
    (dest / "stdout.txt").write_text(run.stdout)
    meta = {
        "command": "python " + " ".join([f"examples/{opts.example.name}", *opts.args]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "wall_s": round(wall, 1),
        "figures": [f"{i:02d}_{p.name}" for i, p in enumerate(figures)],
    }
    (dest / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"stored {name}: {len(figures)} figures, {wall:.0f} s")


if __name__ == "__main__":
    main()
