"""The documentation builds (Sphinx, numpydoc API reference, MyST user guide) with
warnings as errors, so a broken docstring or a dead cross-reference fails CI."""

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    res = subprocess.run(
        [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q",
         "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    api = (tmp_path / "html" / "generated" / "skfusion.ConcatEmbedder.html").read_text()
    assert "Parameters" in api and "Examples" in api
