"""Sphinx configuration: the user guide (Markdown, MyST) and the API reference built
from the numpydoc docstrings. `tests/test_docs.py` builds it with warnings as errors."""

import re

import skfusion

project = "skfusion"
author = "skfusion developers"
copyright = "2026, skfusion developers"
release = getattr(skfusion, "__version__", "0.1.0")

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autosummary_generate = True
autodoc_typehints = "none"
# Members are listed by autosummary on each class page, not again by numpydoc.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
html_theme = "alabaster"
# Offline builds: no intersphinx inventories, no remote images.
suppress_warnings = ["image.nonlocal_uri"]


def _literal_fitted_names(app, what, name, obj, options, lines):
    """Fitted-attribute names in shapes, "(n_features_in_, 2)", are literals: in reST a
    trailing underscore makes a link, and the build would fail on "Unknown target"."""
    for i, line in enumerate(lines):
        lines[i] = re.sub(r"(?<![`\w])(\w+_)(?=[,)])", r"``\1``", line)


def setup(app):
    app.connect("autodoc-process-docstring", _literal_fitted_names, priority=400)
