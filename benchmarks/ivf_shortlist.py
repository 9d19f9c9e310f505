"""The IVF shortlist of CodeIndex at 100,000 rows: recall@10 vs queries/s.

Data (synthetic, seeded): 100,000 database rows and 1,000 queries in 128 dimensions,
drawn around 200 Gaussian cluster centres (centre ~ N(0, I), noise ~ N(0, 0.35**2 I)),
then L2-normalised; the lists and the code steps are fitted on 50,000 further rows of
the same distribution. Ground truth: exact top-10 by inner product, faiss
``IndexFlatIP`` (also the speed baseline, same run).

Compared, all returning the top 10 of 1,000 queries:

- faiss ``IndexFlatIP``: exact, 512 bytes per vector in RAM.
- ``CodeIndex(AllocatedQuantizer(bit_budget=256), "float16", shortlist_index="ivf")``:
  32-byte codes plus a 4-byte list row number in RAM, float16 rows on disk (read
  through ``np.memmap``, here from the page cache), ``nlist=1024``, ``nprobe`` and
  ``oversample`` swept; and the same index with the exact shortlist (every code
  scored).
- faiss ``IndexIVFPQ`` (``nlist=1024``, 32 sub-quantizers of 8 bits: 32-byte codes
  plus an 8-byte id in RAM) wrapped in ``IndexRefineFlat`` (``k_factor`` = the
  oversample), whose float32 rows (512 bytes per vector) are held in RAM.

Queries/s: all 1,000 queries in one call, best of 3, one process, faiss with 2
threads, on a 2-core machine shared with other jobs. Self-contained (imports no other
benchmark module)::

    python -m benchmarks.ivf_shortlist

Writes ``benchmarks/results/ivf_shortlist.{json,md}``.
"""

import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

import skfusion
from skfusion import AllocatedQuantizer
from skfusion.index import CodeIndex

RESULTS = Path(__file__).resolve().parent / "results"
N_DB, N_TRAIN, N_QUERIES, DIM, N_CLUSTERS, NOISE = 100_000, 50_000, 1_000, 128, 200, 0.35
K, NLIST, CODE_BITS = 10, 1024, 256
OVERSAMPLES = (10, 50)
NPROBES = (1, 4, 16, 64)


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, DIM))

    def draw(n):
        x = centres[rng.integers(0, N_CLUSTERS, n)] + NOISE * rng.standard_normal((n, DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    return draw(N_TRAIN), draw(N_DB), draw(N_QUERIES)


def timed(fn, repeats=3):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def recall(idx, truth):
    return float(
        np.mean([len(set(a) & set(b)) / K for a, b in zip(idx, truth, strict=True)])
    )


def main():
    faiss.omp_set_num_threads(2)
    load_before = os.getloadavg()[0]
    train, db, queries = make_data()
    rows = []

    def row(method, setting, ram, disk, idx, seconds, build):
        rows.append(
            {
                "method": method,
                "setting": setting,
                "ram_bytes_per_vector": ram,
                "disk_bytes_per_vector": disk,
                "recall_at_10": recall(idx, truth),
                "queries_per_s": N_QUERIES / seconds,
                "build_s": build,
            }
        )
        print(rows[-1], flush=True)

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(db)
    build = time.perf_counter() - t
    (_, truth), seconds = timed(lambda: flat.search(queries, K))
    row("faiss IndexFlatIP (exact)", "", 4 * DIM, 0, truth, seconds, build)

    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        index = CodeIndex(
            AllocatedQuantizer(bit_budget=CODE_BITS),
            "float16",
            shortlist_index="ivf",
            nlist=NLIST,
            random_state=0,
            directory=folder,
        )
        index.fit(train).add(db)
        build = time.perf_counter() - t
        name = (
            f"CodeIndex IVF nlist={NLIST}: AllocatedQuantizer {CODE_BITS} bits -> float16"
        )
        for oversample, nprobe in itertools.product(OVERSAMPLES, NPROBES):
            index.set_params(nprobe=nprobe, oversample=oversample)
            (_, idx), seconds = timed(lambda: index.search(queries, K))
            row(
                name,
                f"nprobe={nprobe}, oversample={oversample}",
                index.ram_bytes_per_vector_,
                index.disk_bytes_per_vector_,
                idx,
                seconds,
                build,
            )
        index.set_params(shortlist_index="exact")
        for oversample in OVERSAMPLES:
            index.set_params(oversample=oversample)
            (_, idx), seconds = timed(lambda: index.search(queries, K))
            row(
                f"CodeIndex exact shortlist: AllocatedQuantizer {CODE_BITS} bits -> "
                "float16",
                f"oversample={oversample}",
                index.shortlist_.bytes_per_vector_,
                index.disk_bytes_per_vector_,
                idx,
                seconds,
                build,
            )

    t = time.perf_counter()
    m = CODE_BITS // 8  # one byte per sub-quantizer: the same code bytes
    ivfpq = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(DIM), DIM, NLIST, m, 8, faiss.METRIC_INNER_PRODUCT
    )
    refine = faiss.IndexRefineFlat(ivfpq)
    refine.train(train)
    refine.add(db)
    build = time.perf_counter() - t
    for oversample, nprobe in itertools.product(OVERSAMPLES, NPROBES):
        ivfpq.nprobe, refine.k_factor = nprobe, oversample
        (_, idx), seconds = timed(lambda: refine.search(queries, K))
        row(
            f"faiss IndexIVFPQ nlist={NLIST} PQ{m}x8 + IndexRefineFlat",
            f"nprobe={nprobe}, k_factor={oversample}",
            m + 8,
            0,
            idx,
            seconds,
            build,
        )

    base = rows[0]["queries_per_s"]
    payload = {
        "data": {
            "n_database": N_DB,
            "n_train": N_TRAIN,
            "n_queries": N_QUERIES,
            "dim": DIM,
            "clusters": N_CLUSTERS,
            "noise": NOISE,
        },
        "k": K,
        "faiss_threads": 2,
        "faiss": faiss.__version__,
        "skfusion": skfusion.__version__,
        "machine": platform.platform(),
        # The machine is shared: its 1-minute load average before and after the run.
        "load_average": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ivf_shortlist.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# IVF shortlist of CodeIndex at 100,000 rows: recall@10 vs queries/s",
        "",
        f"{N_DB:,} synthetic rows, {DIM}-d, {N_CLUSTERS} Gaussian clusters "
        f"(noise {NOISE}), L2-normalised; lists and code steps fitted on {N_TRAIN:,} "
        f"other rows; {N_QUERIES:,} queries. Recall@10 against exact inner-product "
        "search (faiss IndexFlatIP, same run). RAM bytes/vector: what the first stage "
        "holds in RAM (CodeIndex IVF: code + 4-byte list row number; IVFPQ: code + "
        "8-byte id). The second stage reads float16 rows from disk for CodeIndex; "
        "IndexRefineFlat holds float32 rows (512 bytes/vector) in RAM. Queries/s: "
        "1,000 queries per call, best of 3, faiss on 2 threads of a shared 2-core "
        f"machine (1-minute load average {load_before:.1f} before the run, "
        f"{payload['load_average'][1]:.1f} after; under load, timings vary "
        "several-fold between runs).",
        "",
        "| method | setting | RAM bytes/vector | disk bytes/vector | recall@10 "
        "| queries/s | vs IndexFlatIP | build s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ram = r["ram_bytes_per_vector"]
        if r["method"].startswith("faiss IndexIVFPQ"):
            ram = f"{ram} + 512 (refine)"
        lines.append(
            f"| {r['method']} | {r['setting']} | {ram} | {r['disk_bytes_per_vector']} "
            f"| {r['recall_at_10']:.4f} | {r['queries_per_s']:,.0f} "
            f"| {r['queries_per_s'] / base:.2f}x | {r['build_s']:.1f} |"
        )
    (RESULTS / "ivf_shortlist.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
