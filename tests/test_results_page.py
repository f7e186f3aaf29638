r"""docs/results.md is generated from benchmarks/results/*.json, never edited by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_page_is_generated_from_the_result_files():
    run = subprocess.run([sys.executable, "tables.py", "check_page"], cwd=ROOT / "benchmarks", capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_results_section_cites_its_commands():
    text = (ROOT / "docs" / "results.md").read_text()
    sections = text.split("\n## ")[1:]
    assert len(sections) >= 8
    for section in sections:
        title = section.splitlines()[0]
        if "(no result files yet)" in section:
            continue
        assert "[1] `" in section, f"section {title!r} lists no command"
