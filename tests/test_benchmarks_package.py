"""The benchmarks are one package: every module imports, none edits ``sys.path`` or
imports another benchmark (shared code lives in the private ``_*`` modules), and the
shared scorer agrees with the library's evaluation."""

import ast
import importlib
import pkgutil
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "benchmarks"
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]))
SCRIPTS = [m for m in MODULES if not m.startswith("_")]


def _tree(name):
    return ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))


def test_benchmarks_is_a_package_of_scripts_and_shared_modules():
    assert (PACKAGE / "__init__.py").is_file()
    assert {"_bench", "_features", "_models"} <= set(MODULES)
    assert {"quality", "members", "two_stage", "speed"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    before = list(sys.path)
    try:
        importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        # An optional third-party dependency (faiss, torch...) that this environment
        # lacks; a missing benchmark module is a failure.
        if exc.name is None or exc.name.split(".")[0] in {"benchmarks", *MODULES}:
            raise
        pytest.skip(f"benchmarks.{name} needs {exc.name}")
    assert sys.path == before, f"importing benchmarks.{name} changed sys.path"


@pytest.mark.parametrize("name", MODULES)
def test_no_sys_path_edits_or_dynamic_imports(name):
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), (
                f"benchmarks/{name}.py:{node.lineno} touches sys.path"
            )
        if isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "attr", getattr(func, "id", None))
            assert called not in {"import_module", "__import__"}, (
                f"benchmarks/{name}.py:{node.lineno} imports dynamically"
            )


@pytest.mark.parametrize("name", MODULES)
def test_imports_only_shared_modules(name):
    """Relative or ``benchmarks.`` imports name ``_*`` modules; no bare script names."""
    for node in ast.walk(_tree(name)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ._bench import y
                base = node.module.split(".")[0] if node.module else None
                targets = (
                    [f"benchmarks.{base}"]
                    if base
                    else [f"benchmarks.{a.name}" for a in node.names]
                )
            else:
                targets = [node.module]
        for target in targets:
            parts = target.split(".")
            if parts[0] == "benchmarks":
                assert len(parts) > 1 and parts[1].startswith("_"), (
                    f"benchmarks/{name}.py:{node.lineno} imports the script {target}"
                )
            else:
                assert parts[0] not in MODULES, (
                    f"benchmarks/{name}.py:{node.lineno} imports {target} by script name"
                )


def test_usage_lines_say_python_dash_m():
    old = re.compile(r"python\s+(\S*/)?benchmarks/\w+\.py")
    docs = [ROOT / "README.md", *(ROOT / "docs" / "guide").glob("*.md")]
    for path in [*PACKAGE.glob("*.py"), *docs]:
        text = path.read_text(encoding="utf-8")
        assert not old.search(text), f"{path.name}: {old.search(text).group(0)}"
    for name in SCRIPTS:
        doc = ast.get_docstring(_tree(name)) or ""
        assert f"benchmarks.{name}" in " ".join(doc.split()), f"{name}: no usage line"


def test_data_dir_env_and_search(tmp_path, monkeypatch):
    from benchmarks import _features

    monkeypatch.setenv("SKFUSION_DEBIAN", str(tmp_path / "elsewhere"))
    assert _features.data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SKFUSION_DEBIAN")
    checkout = tmp_path / "wt" / "checkout"
    checkout.mkdir(parents=True)
    monkeypatch.setattr(_features, "ROOT", checkout)
    if not any(
        (p / "shared" / "data" / "debian-packages").is_dir() for p in tmp_path.parents
    ):
        with pytest.raises(FileNotFoundError, match="SKFUSION_DEBIAN"):
            _features.data_dir()
    found = tmp_path / "shared" / "data" / "debian-packages"  # beside a parent folder
    found.mkdir(parents=True)
    assert _features.data_dir() == found


def test_bench_scores_like_evaluate_embeddings():
    """The one nDCG-of-a-split helper gives the library evaluation's numbers."""
    from benchmarks._bench import Bench
    from skfusion.evaluation import evaluate_embeddings
    from skfusion.search import search

    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((12, 8)).astype(np.float32)
    query_ids = [f"q{i}" for i in range(12)]
    corpus_ids = [f"d{i}" for i in range(40)]
    qrels = {
        "dev": {f"q{i}": {f"d{(3 * i) % 40}": 1} for i in range(0, 12, 2)},
        "test": {f"q{i}": {f"d{(5 * i) % 40}": 1, f"d{i}": 2} for i in range(1, 12, 2)},
    }
    bench = Bench(query_ids, corpus_ids, qrels)
    for split in ("dev", "test"):
        rows = bench.query_rows[split]
        assert [query_ids[r] for r in rows] == list(qrels[split])
        data = SimpleNamespace(
            query_ids=list(qrels[split]), corpus_ids=corpus_ids, qrels=qrels[split]
        )
        for kw in ({}, {"metric": "cosine"}, {"metric": "ip"}):
            want = evaluate_embeddings(queries[rows], corpus, data, per_query=True, **kw)
            got = bench.ndcg(split, queries, corpus, **kw)
            np.testing.assert_array_equal(got.per_query, want["ndcg@10"])
            assert float(got) == float(np.mean(want["ndcg@10"]))
        _, idx = search(queries[rows], corpus, 10)
        assert bench.score_topk(split, None, idx) == bench.ndcg(split, queries, corpus)


def test_write_results_keeps_both_markdown_forms(tmp_path, monkeypatch):
    from benchmarks import _bench

    monkeypatch.setattr(_bench, "RESULTS", tmp_path / "results")
    _bench.write_results("lines", {"a": 1}, ["# t", "x"])
    _bench.write_results("text", {"a": (1, np.float32(0.5))}, "# t\n", indent=1,
                         default=_bench.json_default)  # fmt: skip
    assert (tmp_path / "results" / "lines.md").read_text() == "# t\nx\n"
    assert (tmp_path / "results" / "text.md").read_text() == "# t\n"
    assert (tmp_path / "results" / "lines.json").read_text() == '{\n  "a": 1\n}'
    assert (tmp_path / "results" / "text.json").read_text() == (
        '{\n "a": [\n  1,\n  0.5\n ]\n}'
    )
