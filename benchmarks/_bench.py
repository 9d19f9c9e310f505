"""The benchmarks' harness: timing, results, bootstrap, plots and the ``Bench`` scorer.

Every benchmark writes ``benchmarks/results/<stem>.{json,md}`` (and sometimes a
``.png``) through :func:`write_results` / :func:`results_path`, times with
:func:`best_time`, and scores retrieval with one :class:`Bench`: the rows of each qrels
split's queries, nDCG@10 of a top-k (:meth:`Bench.score_topk`, the one
nDCG-of-a-split helper) and the result rows chosen on dev and reported on test.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from skfusion.metrics import per_query_scores, run_from_topk
from skfusion.search import search

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def arg_parser(doc, *, repeats=None, quiet=True):
    """An ``ArgumentParser`` described by ``doc``'s first line.

    ``repeats`` adds ``--repeats`` (best of that many timed runs) with that default;
    ``quiet`` adds ``--quiet`` (no progress bars or echo).
    """
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats)
    if quiet:
        p.add_argument("--quiet", action="store_true")
    return p


def module_command(module):
    """``python -m <module>``: a benchmark's child process (run it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", module]


def best_time(fn, repeats):
    """(fastest wall time in seconds over ``repeats`` calls, the last call's result)."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def timed(fn, cpu=None):
    """Wall seconds of one ``fn()`` and its result; appends its CPU seconds to ``cpu``."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    if cpu is not None:
        cpu.append(time.process_time() - c)
    return wall, out


def memory_bandwidth(n_bytes=512 << 20, repeats=5):
    """Copy bandwidth (bytes read + written per second) of one large ``np.copyto``."""
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    t, _ = best_time(lambda: np.copyto(dst, src), repeats)
    return 2 * n_bytes / t


def results_path(name):
    """``benchmarks/results/<name>``, the folder created if missing."""
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / name


def json_default(x):
    """``json.dumps`` fallback: numpy scalars as Python numbers, tuples as lists."""
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))


def write_json(stem, payload, *, indent=2, default=None):
    """Write ``results/<stem>.json``."""
    text = json.dumps(payload, indent=indent, default=default)
    results_path(f"{stem}.json").write_text(text)


def write_results(stem, payload, markdown, *, indent=2, default=None, echo=False):
    """Write ``results/<stem>.json`` and ``results/<stem>.md``.

    ``markdown`` is a list of lines (written joined, with a final newline) or a
    string (written as it is); ``echo`` also prints it.
    """
    write_json(stem, payload, indent=indent, default=default)
    text = markdown if isinstance(markdown, str) else "\n".join(markdown) + "\n"
    results_path(f"{stem}.md").write_text(text)
    if echo:
        print(text if isinstance(markdown, str) else "\n".join(markdown))


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig, name):
    """Save ``fig`` as ``results/<name>`` at 120 dpi, after ``tight_layout``."""
    fig.tight_layout()
    fig.savefig(results_path(name), dpi=120)


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


class Score(float):
    """Mean nDCG@k that keeps its per-query values (for bootstrap intervals)."""

    def __new__(cls, values):
        obj = super().__new__(cls, float(np.mean(values)) if len(values) else 0.0)
        obj.per_query = np.asarray(values, dtype=np.float64)
        return obj


class Bench:
    """nDCG of the dev and test queries, and the result rows of one benchmark.

    Parameters
    ----------
    query_ids, corpus_ids : list of str
        The ids of every query row and every corpus row of the arrays to be scored.
    qrels : dict
        ``{split: {query_id: {doc_id: grade}}}`` for ``"dev"`` and ``"test"``.

    Attributes
    ----------
    query_rows : dict of str to ndarray
        The query rows of each split, in qrels order.
    rows : list of dict
        The result rows, as :meth:`add` appends them (subclasses give them their
        columns).
    """

    splits = ("dev", "test")

    def __init__(self, query_ids, corpus_ids, qrels):
        self.query_ids, self.corpus_ids, self.qrels = query_ids, corpus_ids, qrels
        pos = {q: i for i, q in enumerate(query_ids)}
        self.query_rows = {s: np.array([pos[q] for q in qrels[s]]) for s in self.splits}
        self.rows = []

    @classmethod
    def from_features(cls, feats):
        """A Bench of ``load_features()``'s (or ``load_debian()``'s) queries and qrels."""
        return cls(feats["query_ids"], feats["corpus_ids"], feats["qrels"])

    def score_topk(self, split, scores, idx, corpus_ids=None, k=10):
        """nDCG@k of a top-k (``idx``; ``scores`` may be None: only the order counts)
        of ``split``'s queries, as a :class:`Score`."""
        ids = self.corpus_ids if corpus_ids is None else corpus_ids
        idx = np.asarray(idx)
        if scores is None:
            scores = np.tile(-np.arange(idx.shape[1]), (len(idx), 1))
        run = run_from_topk(list(self.qrels[split]), ids, scores, idx)
        return Score(per_query_scores(run, self.qrels[split], f"ndcg@{k}"))

    def ndcg(self, split, queries, corpus, corpus_ids=None, *, k=10, **search_params):
        """nDCG@k of :func:`skfusion.search.search` for ``split``'s rows of ``queries``."""
        q = np.asarray(queries)[self.query_rows[split]]
        scores, idx = search(q, corpus, k=min(k, len(corpus)), **search_params)
        return self.score_topk(split, scores, idx, corpus_ids, k=k)

    def both(self, queries, corpus, **kw):
        """:meth:`ndcg` on every split."""
        return {s: self.ndcg(s, queries, corpus, **kw) for s in self.splits}

    def add(self, **row):
        """Append one result row and return it."""
        self.rows.append(row)
        return row

    @staticmethod
    def best_on_dev(candidates):
        """``(dev score, params, fn)`` of the ``(params, fn(split) -> nDCG)`` candidate
        best on dev (ties: the first)."""
        best = None
        for params, fn in candidates:
            dev = fn("dev")
            if best is None or dev > best[0]:
                best = (dev, params, fn)
        return best
