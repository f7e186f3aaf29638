"""Sphinx configuration of the bayesinv documentation site (``make docs``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import bayesinv  # noqa: E402

project = "bayesinv"
author = "the bayesinv developers"
copyright = "2026, the bayesinv developers"
release = bayesinv.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "gallery_output", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip", "**.codeobj.json"]
templates_path = ["_templates"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 4

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autosummary_generate = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "pydata_sphinx_theme"
html_title = "bayesinv"
html_theme_options = {"navigation_depth": 2, "show_toc_level": 2}

# The gallery: examples/*.py rendered as pages. Only the quick ones run while the site builds
# (the demo and the optic nerve head, about a minute each); the others show the output stored by
# docs/store_example_output.py from a run recorded with its command and machine.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": os.environ.get("BAYESINV_GALLERY_RUN", r"/(demo|optic_nerve_head)\.py$"),
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "plot_gallery": "True",
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "write_computation_times": False,
}


def _stored_output(app, docname, source):
    """Appends the stored output of a recorded run to a gallery page that did not execute."""
    import json
    import re

    if not docname.startswith("auto_examples/") or docname.endswith("index"):
        return
    name = docname.split("/", 1)[1]
    if re.search(sphinx_gallery_conf["filename_pattern"], f"/{name}.py"):
        return
    store = Path(app.srcdir) / "gallery_output" / name
    if not (store / "meta.json").exists():
        source[0] += (
            "\n\n.. note::\n\n   This example is not run while the site builds "
            f"(it takes minutes or more); run it with ``python examples/{name}.py``.\n"
        )
        return
    meta = json.loads((store / "meta.json").read_text())
    text = (store / "stdout.txt").read_text().rstrip() or "(nothing printed)"
    lines = ["", "", "Output stored from a recorded run", "-" * 33, "",
             f"``{meta['command']}`` on {meta['machine']}, {meta['date_utc']}, {meta['wall_s']:.0f} s "
             "(not re-run while the site builds).", "", ".. code-block:: none", ""]
    lines += ["    " + line for line in text.splitlines()]
    for fig in meta["figures"]:
        lines += ["", f".. image:: /gallery_output/{name}/{fig}", "   :width: 90%"]
    source[0] += "\n".join(lines) + "\n"


def setup(app):
    app.connect("source-read", _stored_output)
