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


def test_label_free_weights_recipe_runs(tmp_path, capsys):
    """The user guide's GridSearchCV + PseudoQueryScorer recipe (included verbatim from
    examples/label_free_weights.py), on its small setting."""
    import importlib.util

    path = DOCS.parent / "examples" / "label_free_weights.py"
    spec = importlib.util.spec_from_file_location("label_free_weights", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    search = recipe.main(["--small", "--cache-dir", str(tmp_path)])
    grid = search.param_grid["weights"]
    assert search.best_params_["weights"] in grid
    out = capsys.readouterr().out
    assert out.count("pseudo-query nDCG@10") == len(grid)
    assert "test nDCG@10 with the chosen weights" in out


def _public_api():
    """(qualified name, object) of every class and function a public module exports."""
    import importlib
    import inspect
    import pkgutil

    import skfusion

    names = ["skfusion"] + [
        m.name
        for m in pkgutil.walk_packages(skfusion.__path__, "skfusion.")
        if not any(part.startswith("_") for part in m.name.split("."))
    ]
    for module_name in names:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and (
                obj.__module__ == module_name
            ):
                yield f"{module_name}.{name}", obj


def test_every_public_class_and_function_has_a_runnable_example():
    """Examples sections run as doctests (pyproject: --doctest-modules); an example
    marked +SKIP must say why in the text before it."""
    import inspect

    missing = []
    for name, obj in _public_api():
        doc = inspect.getdoc(obj) or ""
        examples = doc.partition("Examples\n--------")[2]
        if ">>>" not in examples:
            missing.append(name)
        elif "+SKIP" in examples and "not run as a doctest" not in examples:
            missing.append(f"{name} (skipped without a reason)")
    assert not missing, "no runnable Examples section: " + ", ".join(missing)
