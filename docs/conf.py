"""Sphinx configuration for autocheck's documentation.

Build (offline, warnings are errors):

    .venv/bin/python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

# Build from the working tree even when autocheck is not installed.
sys.path.insert(0, os.path.abspath(".."))

import autocheck  # noqa: E402

project = "autocheck"
author = "autocheck developers"
copyright = "the autocheck developers"
version = release = autocheck.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
master_doc = root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: $...$ and $$...$$ maths, ::: fences for admonitions, {attr} on spans, and
# anchors for headings up to level 3 so pages can link to sections.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Docstrings are Google style (Args:, Returns:, Raises:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Returns:" sections describe several cases in prose ("One input, scalar: ..."): keep them text.
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

# -n (nitpicky) resolves every cross-reference; these live in other projects' docs, which
# are not fetched (the build is offline: no intersphinx).
nitpick_ignore_regex = [
    ("py:.*", r"(torch|sympy|numpy|np|pytest|hypothesis|typing|collections\.abc)(\..*)?"),
    ("py:.*", r"(Callable|Any|Sequence|Mapping|Tolerance|Point|Trace|Implementation|optional)"),
    # Report.worst and Report.faults hold private record types, and register_torch_op returns one;
    # their fields and methods are described there.
    ("py:class", r"autocheck\._(compare\.Row|autograd\.Fault|trace\.Registration)"),
    ("py:class", r"(int|float|str|bool|tuple|list|dict|None|AssertionError|TypeError|ValueError)"),
]

html_theme = "alabaster"
html_title = f"autocheck {release}"
html_static_path: list[str] = []
pygments_style = "sphinx"
