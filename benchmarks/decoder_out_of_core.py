"""Fitting MatryoshkaDecoder out of core: an 8 GB memmap with bounded memory.

Writes a 2,000,000 x 1,024 float32 ``.npy`` file (8 GB; low-rank signal plus noise,
L2-normalised rows) under ``benchmarks/.cache/`` with plain file writes, then in a fresh
process fits ``MatryoshkaDecoder`` on it opened with ``np.load(mmap_mode="r")`` and
reports the elapsed time and the process's peak resident memory (``ru_maxrss``, which
counts mapped file pages too) next to its resident memory just before ``fit`` (Python,
numpy, torch loaded). A second fresh process fits the first ``--check-rows`` rows twice
with the same ``random_state``, from the memmap and from an in-memory copy, and
compares the fitted weights. The data file is deleted at the end (``--keep`` keeps it).

The fit is one epoch (``max_epochs=1``) of small batches to a narrow output
(``n_components=16``, no early stopping, raw target cosines), so that it finishes in
minutes on a 2-core machine; every row still goes through the streaming statistics
(mean, covariance, PCA start) and through training. Both children run torch and BLAS
with one thread (``OMP_NUM_THREADS=1``): this machine is shared, and oversubscribed
threads made a training step several times slower.

Writes ``benchmarks/results/decoder_out_of_core.{json,md}``.

    python -m benchmarks.decoder_out_of_core [--rows 2000000] [--dim 1024]
        [--check-rows 100000] [--keep]
"""

import argparse
import json
import os
import platform
import subprocess
import time

import numpy as np

from ._bench import ROOT, module_command, write_results
from ._features import CACHE

PARAMS = dict(
    n_components=16,
    stops=(8, 16),
    max_epochs=1,
    batch_size=512,
    early_stopping=False,
    target_whiten=0.0,
    random_state=0,
)


def make_data(path, n, d, chunk=50_000, rank=64, seed=0):
    """Write an ``(n, d)`` float32 ``.npy`` of unit rows chunk by chunk (file writes)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((rank, d)) / np.sqrt(np.arange(1, rank + 1))[:, None]
    mixing = mixing.astype(np.float32)
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    offset = header.offset
    del header
    with open(path, "r+b") as f:
        f.seek(offset)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            X = rng.standard_normal((m, rank), dtype=np.float32) @ mixing
            X += 0.3 * rng.standard_normal((m, d), dtype=np.float32)
            X /= np.linalg.norm(X, axis=1, keepdims=True)
            f.write(X.tobytes())


def _child(kind, path, check_rows):
    """Run in a fresh process; prints one JSON line."""
    import resource

    from skfusion.decoder import MatryoshkaDecoder

    def rss_mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

    X = np.load(path, mmap_mode="r")
    # Warm up torch and the allocators on a few rows, so the baseline includes them.
    MatryoshkaDecoder(**PARAMS).fit(np.array(X[:2048]))
    out = {"rss_before_fit_mb": rss_mb("VmRSS")}
    if kind == "fit":
        start = time.perf_counter()
        dec = MatryoshkaDecoder(**PARAMS).fit(X)
        out["fit_seconds"] = time.perf_counter() - start
        out["loss_curve"] = dec.loss_curve_
        out["n_samples_seen"] = dec.n_samples_seen_
    else:
        part = X[:check_rows]
        start = time.perf_counter()
        a = MatryoshkaDecoder(**PARAMS).fit(part)
        out["memmap_fit_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        b = MatryoshkaDecoder(**PARAMS).fit(np.array(part))
        out["in_memory_fit_seconds"] = time.perf_counter() - start
        out["max_abs_diff"] = {
            attr: float(np.max(np.abs(getattr(a, attr) - getattr(b, attr))))
            for attr in ("components_", "bias_", "explained_variance_", "mean_")
        }
        out["bitwise_equal"] = (
            all(
                np.array_equal(getattr(a, attr), getattr(b, attr))
                for attr in ("components_", "bias_", "explained_variance_", "mean_")
            )
            and a.loss_curve_ == b.loss_curve_
        )
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = kb / 1024
    print(json.dumps(out))


def _run_child(kind, path, check_rows):
    # This checkout's skfusion and benchmarks.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    threads = dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env = dict(os.environ, PYTHONPATH=pythonpath, **threads)
    cmd = [*module_command(__spec__.name), "--child", kind, "--path", str(path)]
    cmd += ["--check-rows", str(check_rows)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode:
        raise RuntimeError(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--check-rows", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the data file")
    ap.add_argument("--child", choices=["fit", "check"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.path, args.check_rows)
        return

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"decoder_ooc_{args.rows}x{args.dim}.npy"
    try:
        if not path.exists():
            start = time.perf_counter()
            make_data(path, args.rows, args.dim)
            print(f"wrote {path} in {time.perf_counter() - start:.0f}s", flush=True)
        fit = _run_child("fit", path, args.check_rows)
        print("fit", fit, flush=True)
        check = _run_child("check", path, args.check_rows)
        print("check", check, flush=True)
        file_gb = path.stat().st_size / 1e9
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)

    payload = {
        "rows": args.rows,
        "dim": args.dim,
        "file_gb": file_gb,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in PARAMS.items()},
        "threads": 1,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "fit": fit,
        "check_rows": args.check_rows,
        "check": check,
    }
    params = ", ".join(f"{k}={v!r}" for k, v in PARAMS.items())
    md = [
        "# MatryoshkaDecoder fitted out of core from an np.memmap",
        "",
        f"`benchmarks/decoder_out_of_core.py`: {args.rows:,} x {args.dim:,} float32 "
        f"memmap ({file_gb:.1f} GB on disk), `MatryoshkaDecoder({params})`, torch and "
        f"BLAS on 1 thread, {payload['machine']} (shared with other jobs).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| fit time (statistics pass + 1 epoch) | {fit['fit_seconds']:.0f} s |",
        f"| peak RSS of the fitting process | {fit['peak_rss_mb']:,.0f} MB |",
        f"| RSS before fit (Python, numpy, torch) | {fit['rss_before_fit_mb']:,.0f} MB |",
        f"| fit on the first {args.check_rows:,} rows: memmap vs in-memory copy, "
        f"bitwise equal | {check['bitwise_equal']} |",
        f"| same, largest weight difference | {check['max_abs_diff']['components_']:.1e} |",
        f"| same, fit time memmap / in memory | {check['memmap_fit_seconds']:.1f} s / "
        f"{check['in_memory_fit_seconds']:.1f} s |",
    ]
    write_results("decoder_out_of_core", payload, md, echo=True)


if __name__ == "__main__":
    main()
