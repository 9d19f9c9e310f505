"""Timing and result-writing helpers shared by the speed benchmarks."""

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
