"""Timing, result-writing and bootstrap helpers shared by the benchmarks."""

import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def best_time(fn, repeats):
    """(fastest wall time in seconds over ``repeats`` calls, the last call's result)."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def memory_bandwidth(n_bytes=512 << 20, repeats=5):
    """Copy bandwidth (bytes read + written per second) of one large ``np.copyto``."""
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    t, _ = best_time(lambda: np.copyto(dst, src), repeats)
    return 2 * n_bytes / t


def write_results(stem, payload, markdown_lines):
    """Write ``results/<stem>.json`` and ``results/<stem>.md``."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{stem}.md").write_text("\n".join(markdown_lines) + "\n")


def paired_bootstrap(a, c, stat=np.divide, n_boot=2000, seed=0):
    """95% paired-bootstrap interval of ``stat(mean a, mean c)`` over the same queries.

    ``a`` and ``c`` are per-query scores of two systems on one query set; resampling
    the queries together keeps the pairing (``np.divide``: recovery, ``np.subtract``:
    lead).
    """
    a, c = np.asarray(a), np.asarray(c)
    idx = np.random.default_rng(seed).integers(0, len(c), size=(n_boot, len(c)))
    vals = stat(a[idx].mean(axis=1), c[idx].mean(axis=1))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))
