"""Approximate search at 1,000,000 rows: recall@10 vs queries/s for faiss indexes built
from skfusion output, and the two-stage CodeIndex, against exact search in the same run.

Data (resampled from real embeddings): the debian-packages weighted concatenation
(``_features.load_debian``, as in ``two_stage``) reduced to 128 dimensions by PCA
fitted on the 1,000 train passages (the stand-in for decoder output); 1,000,000
database rows are corpus rows drawn with replacement plus Gaussian noise (half the
per-dimension spread), then L2-normalised; the queries are the 1,000 real test
queries. Packed bits are ``RandomProjectionLSH(256)`` of the same rows (32 bytes per
vector).

Baselines, measured in the same run: faiss ``IndexFlatIP`` (float, exact) and
``IndexBinaryFlat`` (Hamming, exact), and :func:`skfusion.search.search`. Recall@10 of a
float index: the share of the exact top-10 (inner product) it returns; of a binary
index: the share of its results whose Hamming distance is at most the exact 10th
distance (ties at the boundary count as hits). Queries/s: 1,000 queries, one process,
faiss with 2 threads, on a 2-core machine shared with other jobs (best of 2).

    python -m benchmarks.ann_speed [N_ROWS]

Writes ``benchmarks/results/ann_speed.{json,md}``.
"""

import sys
import tempfile
import time

import numpy as np
from sklearn.decomposition import PCA

from skfusion import AllocatedQuantizer, RandomProjectionLSH
from skfusion.index import CodeIndex, build_faiss_index
from skfusion.search import search

from ._bench import best_time, write_results
from ._features import l2, load_debian

DIM = 128
N_BITS = 256
# HNSW over float rows is the slowest build: on these 2 shared cores it is built on
# the first N_HNSW_FLOAT rows only (stated in the table).
N_HNSW_FLOAT = 200_000


def _timed(fn, repeats=2):
    """(result, best wall seconds of ``repeats`` calls)."""
    seconds, out = best_time(fn, repeats)
    return out, seconds


def _built(build):
    """(``build()``'s index, its build seconds)."""
    t = time.perf_counter()
    index = build()
    return index, time.perf_counter() - t


def make_data(n_rows, seed=0):
    data = load_debian()
    pca = PCA(DIM, random_state=0).fit(data["train"])
    corpus = pca.transform(data["corpus"]).astype(np.float32)
    queries = l2(pca.transform(data["queries"][data["rows"]["test"]]).astype(np.float32))
    rng = np.random.default_rng(seed)
    scale = 0.5 * corpus.std(axis=0)
    X = np.empty((n_rows, DIM), dtype=np.float32)
    step = 100_000
    for s in range(0, n_rows, step):
        m = min(step, n_rows - s)
        rows = corpus[rng.integers(len(corpus), size=m)]
        X[s : s + m] = l2(rows + scale * rng.standard_normal((m, DIM)).astype(np.float32))
    train = l2(pca.transform(data["train"]).astype(np.float32))
    return train, X, queries


def recall_float(idx, ref):
    return float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref, strict=True)])
    )


def recall_binary(dist, ref_dist):
    return float(np.mean(dist <= ref_dist[:, -1:]))


def main(n_rows=1_000_000):
    import faiss

    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    train, X, Q = make_data(n_rows)
    print(f"data {X.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []

    def add(kind, method, params, recall, seconds, build=None, bytes_=None):
        row = {
            "kind": kind,
            "method": method,
            "params": params,
            "recall@10": recall,
            "qps": len(Q) / seconds,
            "build_s": build,
            "bytes_per_vector": bytes_,
        }
        rows.append(row)
        print(
            f"{kind:7s} {method:40s} {params:22s} recall {recall:.4f} "
            f"{row['qps']:9.0f} q/s build {build}",
            flush=True,
        )

    def sweep(kind, method, param, values, index, queries, recall, build, bytes_):
        """One row per value of the search-time ``param`` (faiss ``nprobe`` or HNSW
        ``efSearch``) of ``index``; ``recall(index.search(...))``."""
        target = index.hnsw if param == "efSearch" else index
        for value in values:
            setattr(target, param, value)
            out, sec = _timed(lambda: index.search(queries, 10))
            add(kind, method, f"{param}={value}", recall(out), sec, build, bytes_)

    # -- float rows (inner product) -------------------------------------------------
    flat, build = _built(lambda: build_faiss_index(X, "flat"))
    (_, ref), sec = _timed(lambda: flat.search(Q, 10))
    add("float", "faiss IndexFlatIP (exact)", "", 1.0, sec, build, 4 * DIM)
    (_, idx), sec = _timed(lambda: search(Q, X, 10, metric="ip"), repeats=1)
    add("float", "skfusion.search (exact)", "", recall_float(idx, ref), sec, 0.0, 4 * DIM)
    ivf, build = _built(lambda: build_faiss_index(X, "ivf", nlist=1024))
    sweep(
        "float",
        "faiss IndexIVFFlat nlist=1024",
        "nprobe",
        (1, 4, 16, 64),
        ivf,
        Q,
        lambda out: recall_float(out[1], ref),
        build,
        4 * DIM,
    )
    del ivf
    sub = X[:N_HNSW_FLOAT]
    _, ref_sub = build_faiss_index(sub, "flat").search(Q, 10)
    hnsw, build = _built(lambda: build_faiss_index(sub, "hnsw", M=16))
    sweep(
        "float",
        f"faiss IndexHNSWFlat M=16 ({N_HNSW_FLOAT:,} rows)",
        "efSearch",
        (16, 64, 256),
        hnsw,
        Q,
        lambda out: recall_float(out[1], ref_sub),
        build,
        4 * DIM,
    )
    del hnsw

    # -- packed bits (Hamming) ------------------------------------------------------
    lsh = RandomProjectionLSH(N_BITS, random_state=0).fit(train)
    B, QB = lsh.transform(X), lsh.transform(Q)
    bflat, build = _built(lambda: build_faiss_index(B, "flat", quantizer=lsh))
    (ref_d, _), sec = _timed(lambda: bflat.search(QB, 10))
    add("binary", "faiss IndexBinaryFlat (exact)", "", 1.0, sec, build, N_BITS // 8)
    (agree, _), sec = _timed(lambda: search(QB, B, 10, metric="hamming", quantizer=lsh))
    add(
        "binary",
        "skfusion.search hamming (exact)",
        "",
        recall_binary(N_BITS - agree, ref_d),
        sec,
        0.0,
        N_BITS // 8,
    )

    def recall(out):
        return recall_binary(out[0], ref_d)

    for kind, params, method, param, values in (
        ("ivf", {"nlist": 1024}, "faiss IndexBinaryIVF nlist=1024", "nprobe", (1, 8, 32)),
        ("hnsw", {"M": 16}, "faiss IndexBinaryHNSW M=16", "efSearch", (16, 64, 256)),
    ):
        index, build = _built(
            lambda kind=kind, params=params: build_faiss_index(
                B, kind, quantizer=lsh, **params
            )
        )
        sweep("binary", method, param, values, index, QB, recall, build, N_BITS // 8)
        del index  # free it before the next build

    # -- two-stage: codes in RAM, float16 rows on disk, recall vs exact float -------
    with tempfile.TemporaryDirectory() as tmp:
        for name, est, engine in (
            (
                f"AllocatedQuantizer {N_BITS} bits, exact shortlist",
                AllocatedQuantizer(bit_budget=N_BITS),
                "exact",
            ),
            (
                f"LSH {N_BITS} bits, IndexBinaryHNSW shortlist",
                RandomProjectionLSH(N_BITS, random_state=0),
                "hnsw",
            ),
        ):
            t = time.perf_counter()
            index = (
                CodeIndex(
                    est,
                    "float16",
                    rescore_metric="ip",
                    shortlist_index=engine,
                    directory=tmp,
                )
                .fit(train)
                .add(X)
            )
            if engine == "hnsw":
                index.shortlist_search(Q[:1], 1)  # builds the graph
            build = time.perf_counter() - t
            for o in (5, 20):
                (_, idx), sec = _timed(
                    lambda i=index, o=o: i.search(Q, 10, oversample=o), repeats=1
                )
                add(
                    "2-stage",
                    f"CodeIndex: {name} -> float16 on disk",
                    f"oversample={o}",
                    recall_float(idx, ref),
                    sec,
                    build,
                    index.ram_bytes_per_vector_,
                )
            del index
    lines = [
        f"# Approximate search at {n_rows:,} rows: recall@10 vs queries/s",
        "",
        f"{n_rows:,} rows resampled from debian-packages embeddings (PCA-{DIM} of the "
        f"weighted concatenation, plus noise, L2-normalised), 1,000 real test queries; "
        f"bits: RandomProjectionLSH({N_BITS}). Exact baselines (faiss IndexFlatIP / "
        "IndexBinaryFlat) in the same run; recall against them. Two-stage rows: recall "
        "against exact float search; bytes = RAM bytes per vector. Queries/s with faiss "
        "on 2 threads of a shared 2-core machine (one process).",
        "",
        "| kind | method | parameters | bytes/vector | recall@10 | queries/s | "
        "speed-up vs exact | build s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    exact = {
        r["kind"]: r["qps"]
        for r in rows
        if "(exact)" in r["method"] and "faiss" in r["method"]
    }
    exact["2-stage"] = exact["float"]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['method']} | {r['params']} | {r['bytes_per_vector']} | "
            f"{r['recall@10']:.4f} | {r['qps']:.0f} | {r['qps'] / exact[r['kind']]:.1f}x | "
            f"{r['build_s']:.1f} |"
        )
    write_results(
        "ann_speed", {"n_rows": n_rows, "dim": DIM, "n_bits": N_BITS, "rows": rows}, lines
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
