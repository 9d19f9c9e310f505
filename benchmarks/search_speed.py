"""Speed of skfusion.search against faiss exact search (Hamming and inner product).

Side by side in one process, best of ``--repeats`` runs, top-10:

- Hamming: ``--queries`` random 1,024-bit queries over ``--db`` (default 1,000,000)
  random 1,024-bit codes; skfusion ``search(metric="hamming")`` (faiss candidates, exact
  re-ordering), its pure-numpy path, and faiss ``IndexBinaryFlat.search``.
- Float: ``--float-queries`` over ``--float-db`` x ``--float-dim`` float32 rows;
  skfusion ``search(metric="ip")`` with ``use_faiss=True`` (faiss candidates) and
  ``use_faiss=False`` (numpy, what "auto" uses for floats) and faiss
  ``IndexFlatIP.search``.

The issue asks for 1,000 Hamming queries; the default is 300 to keep the run to a few
minutes on this shared 2-core machine (time grows linearly with the query count). The
pure-numpy Hamming path runs on ``--numpy-queries`` queries and is scaled to the same
count. "Scan rate" is database bytes x queries / seconds: how fast rows are compared,
which exceeds the memory bandwidth when a block of the database serves many queries
from cache.

Run: ``python -m benchmarks.search_speed [--quiet]``.
Writes ``benchmarks/results/search_speed.{json,md}``.
"""

import os

import faiss
import numpy as np
from tqdm import tqdm

from skfusion.search import search

from ._bench import arg_parser, best_time, memory_bandwidth, write_results


def main(argv=None):
    p = arg_parser(__doc__, repeats=2)
    p.add_argument("--db", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--numpy-queries", type=int, default=30)
    p.add_argument("--float-db", type=int, default=200_000)
    p.add_argument("--float-dim", type=int, default=256)
    p.add_argument("--float-queries", type=int, default=1000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    bw = memory_bandwidth()
    rows = []
    bar = tqdm(total=5, disable=args.quiet)

    D = rng.integers(0, 256, (args.db, 128), dtype=np.uint8)
    Q = rng.integers(0, 256, (args.queries, 128), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(1024)
    index.add(D)
    scanned = D.nbytes * args.queries
    t_f, (_, fi) = best_time(lambda: index.search(Q, 10), args.repeats)
    bar.update()
    t_s, (_, si) = best_time(
        lambda: search(Q, D, 10, metric="hamming", use_faiss=True), args.repeats
    )
    bar.update()
    nq = args.numpy_queries
    t_n, (_, ni) = best_time(
        lambda: search(Q[:nq], D, 10, metric="hamming", use_faiss=False), 1
    )
    bar.update()
    t_n *= args.queries / nq
    hamming = {
        "db": args.db,
        "queries": args.queries,
        "faiss IndexBinaryFlat": t_f,
        "skfusion search (faiss candidates)": t_s,
        f"skfusion search (numpy, {nq} queries scaled)": t_n,
        "same_indices_as_faiss": float((fi == si).mean()),
        "numpy_equals_faiss_path": bool((ni == si[:nq]).all()),
    }
    for name in list(hamming)[2:5]:
        rows.append(("Hamming", name, hamming[name], t_f, scanned))
    D = index = None  # free 128 MB before the float part

    X = rng.standard_normal((args.float_db, args.float_dim), dtype=np.float32)
    Qf = rng.standard_normal((args.float_queries, args.float_dim), dtype=np.float32)
    flat = faiss.IndexFlatIP(args.float_dim)
    flat.add(X)
    scanned_f = X.nbytes * args.float_queries
    t_ff, (_, ffi) = best_time(lambda: flat.search(Qf, 10), args.repeats)
    t_fs, (_, fsi) = best_time(
        lambda: search(Qf, X, 10, metric="ip", use_faiss=True), args.repeats
    )
    bar.update()
    t_fn, (_, fni) = best_time(
        lambda: search(Qf, X, 10, metric="ip", use_faiss=False), args.repeats
    )
    bar.update()
    bar.close()
    flt = {
        "db": args.float_db,
        "dim": args.float_dim,
        "queries": args.float_queries,
        "faiss IndexFlatIP": t_ff,
        "skfusion search (faiss candidates)": t_fs,
        "skfusion search (numpy)": t_fn,
        "same_indices_as_faiss": float((ffi == fsi).mean()),
        "numpy_equals_faiss_path": bool((fni == fsi).all()),
    }
    for name in list(flt)[3:6]:
        rows.append(("float IP", name, flt[name], t_ff, scanned_f))

    out = {
        "copy_bandwidth_GBps": bw / 1e9,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "hamming": hamming,
        "float": flt,
    }
    lines = [
        f"# Exact top-10 search (best of {args.repeats}, {os.cpu_count()} shared CPUs)",
        "",
        f"Hamming: {args.queries} queries x {args.db:,} codes of 1,024 bits. "
        f"Float: {args.float_queries} queries x {args.float_db:,} x {args.float_dim} "
        f"float32. Copy bandwidth here: {bw / 1e9:.1f} GB/s.",
        "",
        "| task | method | seconds | time / faiss | scan rate (GB/s) | "
        "scan rate / bandwidth |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task, name, t, ref, nbytes in rows:
        lines.append(
            f"| {task} | {name} | {t:.2f} | {t / ref:.2f} | {nbytes / t / 1e9:.1f} | "
            f"{nbytes / t / bw:.2f} |"
        )
    lines += ["", _agreement(hamming, flt)]
    write_results("search_speed", out, lines, echo=True)


def _agreement(hamming, flt):
    """How often skfusion's and faiss's top-10 agree, and its two paths."""
    return (
        f"Hamming: skfusion and faiss return the same indices for "
        f"{100 * hamming['same_indices_as_faiss']:.2f}% of the slots (faiss breaks "
        "ties arbitrarily, skfusion by lower index); numpy and faiss paths of skfusion "
        f"identical: {hamming['numpy_equals_faiss_path']}. Float: same indices for "
        f"{100 * flt['same_indices_as_faiss']:.2f}%; paths identical: "
        f"{flt['numpy_equals_faiss_path']}."
    )


if __name__ == "__main__":
    main()
