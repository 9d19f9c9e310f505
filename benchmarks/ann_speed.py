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
distance (ties at the boundary count as hits). Queries/s, one process, faiss with 2
threads, on a 2-core machine: "batch" = the 1,000 queries in one call (best of 2;
exact float search is then one matrix product), "single" = the first 100 queries one
call each (as a server answering one request at a time).

The IVF rows (faiss ``IndexIVFPQ`` + ``IndexRefineFlat``, CodeIndex
``shortlist_index="ivf"``) train on 200,000 database rows drawn without replacement,
with ``nlist=4096`` (``4 * sqrt(n)``).

    python -m benchmarks.ann_speed [N_ROWS]

Writes ``benchmarks/results/ann_speed.{json,md,png}``.
"""

import sys
import tempfile
import time

import numpy as np
from sklearn.decomposition import PCA

from skfusion import AllocatedQuantizer, RandomProjectionLSH
from skfusion.index import CodeIndex, build_faiss_index
from skfusion.search import search

from ._bench import best_time, pyplot, save_plot, write_results
from ._features import l2, load_debian

DIM = 128
N_BITS = 256
# HNSW over float rows is the slowest build: on these 2 shared cores it is built on
# the first N_HNSW_FLOAT rows only (stated in the table).
N_HNSW_FLOAT = 200_000
N_IVF_TRAIN = 200_000
NLIST = 4096
N_SINGLE = 100


def _timed(fn, repeats=2):
    """(result, best wall seconds of ``repeats`` calls)."""
    seconds, out = best_time(fn, repeats)
    return out, seconds


def _single_qps(search, queries):
    """Queries/s answering ``queries`` one call each."""
    t = time.perf_counter()
    for q in queries:
        search(q[None])
    return len(queries) / (time.perf_counter() - t)


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
    sample = X[np.random.default_rng(1).choice(n_rows, min(N_IVF_TRAIN, n_rows), False)]
    print(f"data {X.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []

    def add(kind, method, params, search, queries, recall, build, bytes_, repeats=2):
        """Time ``search(queries)`` (batch, and one query per call); one table row."""
        out, sec = _timed(lambda: search(queries), repeats)
        row = {
            "kind": kind,
            "method": method,
            "params": params,
            "recall@10": recall(out),
            "qps": len(queries) / sec,
            "qps_single": _single_qps(search, queries[:N_SINGLE]),
            "build_s": build,
            "bytes_per_vector": bytes_,
        }
        rows.append(row)
        print(
            f"{kind:7s} {method:40s} {params:22s} recall {row['recall@10']:.4f} "
            f"{row['qps']:9.0f} q/s batch {row['qps_single']:7.0f} single build {build}",
            flush=True,
        )
        return out

    def sweep(kind, method, param, values, index, queries, recall, build, bytes_):
        """One row per value of the search-time ``param`` (faiss ``nprobe`` or HNSW
        ``efSearch``) of ``index``; ``recall(index.search(...))``."""
        target = index.hnsw if param == "efSearch" else index
        for value in values:
            setattr(target, param, value)
            add(
                kind,
                method,
                f"{param}={value}",
                lambda q: index.search(q, 10),
                queries,
                recall,
                build,
                bytes_,
            )

    def recall_f(out):
        return recall_float(out[1], ref)

    # -- float rows (inner product) -------------------------------------------------
    flat, build = _built(lambda: build_faiss_index(X, "flat"))
    _, ref = add(
        "float",
        "faiss IndexFlatIP (exact)",
        "",
        lambda q: flat.search(q, 10),
        Q,
        lambda out: 1.0,
        build,
        4 * DIM,
    )
    add(
        "float",
        "skfusion.search (exact)",
        "",
        lambda q: search(q, X, 10, metric="ip"),
        Q,
        recall_f,
        0.0,
        4 * DIM,
        repeats=1,
    )
    ivf, build = _built(lambda: build_faiss_index(X, "ivf", nlist=1024))
    sweep(
        "float",
        "faiss IndexIVFFlat nlist=1024",
        "nprobe",
        (1, 4, 16, 64),
        ivf,
        Q,
        recall_f,
        build,
        4 * DIM,
    )
    del ivf

    def build_ivfpq():
        coarse = faiss.IndexFlatIP(DIM)
        pq = faiss.IndexIVFPQ(coarse, DIM, NLIST, DIM // 4, 8, faiss.METRIC_INNER_PRODUCT)
        pq.train(sample)
        refine = faiss.IndexRefineFlat(pq)
        refine.add(X)
        return pq, refine

    (pq, refine), build = _built(build_ivfpq)
    method = f"faiss IndexIVFPQ nlist={NLIST} m={DIM // 4} + IndexRefineFlat"
    for nprobe in (16, 32, 64):
        for k_factor in (10, 20):
            pq.nprobe, refine.k_factor = nprobe, k_factor
            add(
                "float",
                method,
                f"nprobe={nprobe} k_factor={k_factor}",
                lambda q: refine.search(q, 10),
                Q,
                recall_f,
                build,
                f"{DIM // 4} + 8 id + {4 * DIM} refine",
            )
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
    ref_d, _ = add(
        "binary",
        "faiss IndexBinaryFlat (exact)",
        "",
        lambda q: bflat.search(q, 10),
        QB,
        lambda out: 1.0,
        build,
        N_BITS // 8,
    )

    def recall(out):
        return recall_binary(out[0], ref_d)

    add(
        "binary",
        "skfusion.search hamming (exact)",
        "",
        lambda q: search(q, B, 10, metric="hamming", quantizer=lsh),
        QB,
        lambda out: recall_binary(N_BITS - out[0], ref_d),
        0.0,
        N_BITS // 8,
    )
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
        for name, est, engine, fit_rows, settings in (
            (
                f"AllocatedQuantizer {N_BITS} bits, exact shortlist",
                AllocatedQuantizer(bit_budget=N_BITS),
                "exact",
                train,
                [{"oversample": o} for o in (5, 20)],
            ),
            (
                f"LSH {N_BITS} bits, IndexBinaryHNSW shortlist",
                RandomProjectionLSH(N_BITS, random_state=0),
                "hnsw",
                train,
                [{"oversample": o} for o in (5, 20)],
            ),
            (
                f"AllocatedQuantizer {N_BITS} bits, IVF shortlist nlist={NLIST}",
                AllocatedQuantizer(bit_budget=N_BITS),
                "ivf",
                sample,
                [{"nprobe": p, "oversample": o} for p in (16, 32, 64) for o in (10, 20)],
            ),
        ):
            t = time.perf_counter()
            index = (
                CodeIndex(
                    est,
                    "float16",
                    rescore_metric="ip",
                    shortlist_index=engine,
                    nlist=NLIST if engine == "ivf" else None,
                    random_state=0,
                    directory=tmp,
                )
                .fit(fit_rows)
                .add(X)
            )
            if engine == "hnsw":
                index.shortlist_search(Q[:1], 1)  # builds the graph
            build = time.perf_counter() - t
            for setting in settings:
                setting = dict(setting)
                o = setting.pop("oversample")
                index.set_params(**setting)
                add(
                    "2-stage",
                    f"CodeIndex: {name} -> float16 on disk",
                    " ".join(f"{k}={v}" for k, v in {**setting, "oversample": o}.items()),
                    lambda q, i=index, o=o: i.search(q, 10, oversample=o),
                    Q,
                    recall_f,
                    build,
                    index.ram_bytes_per_vector_,
                    repeats=1 if engine == "exact" else 2,
                )
            del index
    report({"n_rows": n_rows, "dim": DIM, "n_bits": N_BITS, "nlist": NLIST, "rows": rows})


def report(payload):
    """Write ``ann_speed.{json,md,png}`` from the measured ``payload``."""
    rows, n_rows = payload["rows"], payload["n_rows"]
    lines = [
        f"# Approximate search at {n_rows:,} rows: recall@10 vs queries/s",
        "",
        f"{n_rows:,} rows resampled from debian-packages embeddings (PCA-{DIM} of the "
        f"weighted concatenation, plus noise, L2-normalised), 1,000 real test queries; "
        f"bits: RandomProjectionLSH({N_BITS}). Exact baselines (faiss IndexFlatIP / "
        "IndexBinaryFlat) in the same run; recall against them. Two-stage rows: recall "
        "against exact float search; bytes = RAM bytes per vector (faiss IVF: code + "
        "8-byte id; IndexRefineFlat keeps its float32 rows in RAM too; CodeIndex keeps "
        "float16 rows on disk, 256 B, read through np.memmap, here from the page "
        f"cache). CodeIndex IVF: lists and code steps fitted on {N_IVF_TRAIN:,} of the "
        "rows; its codes (at most 3 bits a column) live in faiss fast-scan lists: 32 B "
        "+ 8-byte id, and each list is padded to a multiple of 32 rows (at most 31 x "
        f"32 B a list: < 4 B per vector with {NLIST:,} lists). Queries/s with faiss on "
        "2 threads of a 2-core "
        f"machine (one process): batch = 1,000 queries per call, single = {N_SINGLE} "
        "queries one per call; speed-ups against faiss IndexFlatIP (binary: "
        "IndexBinaryFlat) in the same mode.",
        "",
        "| kind | method | parameters | RAM bytes/vector | recall@10 | q/s batch | "
        "speed-up | q/s single | speed-up | build s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    exact = {
        r["kind"]: r for r in rows if "(exact)" in r["method"] and "faiss" in r["method"]
    }
    exact["2-stage"] = exact["float"]
    for r in rows:
        e = exact[r["kind"]]
        lines.append(
            f"| {r['kind']} | {r['method']} | {r['params']} | {r['bytes_per_vector']} | "
            f"{r['recall@10']:.4f} | {r['qps']:.0f} | {r['qps'] / e['qps']:.1f}x | "
            f"{r['qps_single']:.0f} | {r['qps_single'] / e['qps_single']:.1f}x | "
            f"{r['build_s']:.1f} |"
        )
    write_results("ann_speed", payload, lines)
    plot(rows, exact["float"], n_rows)


def plot(rows, exact, n_rows):
    """recall@10 vs queries/s (batch) of the float-recall curves, log x."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = {}
    for r in rows:
        if r["kind"] in ("float", "2-stage") and "(exact)" not in r["method"]:
            curves.setdefault(r["method"], []).append((r["qps"], r["recall@10"]))
    for method, points in curves.items():
        # Every setting as a dot, the line through the best recall at each speed.
        points = sorted(points, reverse=True)
        front = [p for i, p in enumerate(points) if all(p[1] > q[1] for q in points[:i])]
        (line,) = ax.plot(*zip(*front, strict=True), marker="o", ms=4)
        line.set_label(method.replace(" -> float16 on disk", ""))
        ax.plot(*zip(*points, strict=True), "o", ms=4, color=line.get_color())
    ax.axvline(exact["qps"], color="grey", ls=":", label="faiss IndexFlatIP (exact)")
    ax.axvline(10 * exact["qps"], color="grey", ls="--", label="10x exact")
    ax.axhline(0.95, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s (1,000 per call, 2 cores)")
    ax.set_ylabel("recall@10")
    ax.set_ylim(0.5, 1.005)
    ax.set_title(f"Approximate search, {n_rows:,} rows")
    ax.legend(fontsize=6, loc="lower left")
    save_plot(fig, "ann_speed.png")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
