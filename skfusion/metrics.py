"""Ranking metrics (nDCG@k, recall@k, MRR@k) from a run and qrels.

A *run* maps query id -> {doc id: score}; *qrels* map query id -> {doc id: grade}.
Definitions follow ``trec_eval`` (and so ``pytrec_eval``, which MTEB and BEIR use):
documents are ranked by score, ties broken by doc id in reverse lexicographic order; a
document is relevant when its grade is > 0; DCG uses linear gains ``grade / log2(rank + 1)``
and the ideal DCG comes from the qrels. Scores are averaged over every query in ``qrels``
that has at least one relevant document; a query missing from the run scores 0.
"""

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "evaluate",
    "mrr_at_k",
    "ndcg_at_k",
    "per_query_scores",
    "recall_at_k",
    "run_from_topk",
]

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def _ranked(docs: Mapping[str, float]) -> list[str]:
    # trec_eval order: score descending, then doc id descending.
    return [d for d, _ in sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def _check_k(k):
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")


def _per_query(run: Run, qrels: Qrels, k: int, metric: str) -> list[float]:
    _check_k(k)
    if not isinstance(run, Mapping) or not isinstance(qrels, Mapping):
        raise TypeError(
            "run and qrels must be mappings {query_id: {doc_id: value}}; got "
            f"{type(run).__name__} and {type(qrels).__name__}."
        )
    values = []
    for qid, judged in qrels.items():
        relevant = {d: g for d, g in judged.items() if g > 0}
        if not relevant:
            continue
        top = _ranked(run.get(qid, {}))[:k]
        if metric == "ndcg":
            dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
            ideal = sorted(relevant.values(), reverse=True)[:k]
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
            values.append(dcg / idcg)
        elif metric == "recall":
            values.append(sum(d in relevant for d in top) / len(relevant))
        else:  # mrr
            rank = next((i for i, d in enumerate(top) if d in relevant), None)
            values.append(0.0 if rank is None else 1.0 / (rank + 1))
    return values


def _parse(spec):
    name, _, k = str(spec).partition("@")
    if name not in ("ndcg", "recall", "mrr") or not k.isdigit():
        raise ValueError(f"Unknown metric {spec!r}: use 'ndcg@K', 'recall@K' or 'mrr@K'.")
    return name, int(k)


def per_query_scores(run: Run, qrels: Qrels, metric: str = "ndcg@10") -> list[float]:
    """One ``"name@k"`` metric per query (for bootstrap intervals or paired tests).

    Parameters
    ----------
    run : mapping of str to mapping of str to float
        ``{query_id: {doc_id: score}}``.
    qrels : mapping of str to mapping of str to int
        ``{query_id: {doc_id: grade}}``.
    metric : str, default="ndcg@10"
        ``"ndcg@K"``, ``"recall@K"`` or ``"mrr@K"``.

    Returns
    -------
    values : list of float
        One value per query of ``qrels`` that has a relevant document, in qrels order;
        their mean is what :func:`evaluate` reports.

    Examples
    --------
    >>> per_query_scores({"q": {"a": 2.0, "b": 1.0}, "p": {"a": 1.0}},
    ...                  {"q": {"b": 1}, "p": {"a": 1}}, "mrr@10")
    [0.5, 1.0]
    """
    name, k = _parse(metric)
    return _per_query(run, qrels, k, name)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def ndcg_at_k(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean nDCG@k over the queries of ``qrels`` that have a relevant document.

    Examples
    --------
    >>> ndcg_at_k({"q": {"a": 0.9, "b": 0.8}}, {"q": {"b": 1}}, k=10)
    0.6309...
    """
    return _mean(_per_query(run, qrels, k, "ndcg"))


def recall_at_k(run: Run, qrels: Qrels, k: int = 100) -> float:
    """Mean fraction of each query's relevant documents found in its top ``k``.

    Examples
    --------
    >>> recall_at_k({"q": {"a": 0.9, "b": 0.8}}, {"q": {"b": 1, "c": 1}}, k=10)
    0.5
    """
    return _mean(_per_query(run, qrels, k, "recall"))


def mrr_at_k(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant document within the top ``k``.

    Examples
    --------
    >>> mrr_at_k({"q": {"a": 0.9, "b": 0.8}}, {"q": {"b": 1}}, k=10)
    0.5
    """
    return _mean(_per_query(run, qrels, k, "mrr"))


_METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}


def evaluate(
    run: Run, qrels: Qrels, metrics: Iterable[str] = ("ndcg@10", "recall@100", "mrr@10")
) -> dict[str, float]:
    """Compute several ``"name@k"`` metrics at once (names: ndcg, recall, mrr).

    Examples
    --------
    >>> evaluate({"q": {"a": 1.0}}, {"q": {"a": 1}}, ["ndcg@10", "mrr@10"])
    {'ndcg@10': 1.0, 'mrr@10': 1.0}
    """
    out = {}
    for spec in metrics:
        name, k = _parse(spec)
        out[spec] = _METRICS[name](run, qrels, k)
    return out


def run_from_topk(
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    scores: np.ndarray,
    indices: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Turn ``(scores, indices)`` from :func:`skfusion.search.search` into a run.

    Parameters
    ----------
    query_ids : sequence of str, length n_queries
    doc_ids : sequence of str, the database rows' ids
    scores, indices : ndarray of shape (n_queries, k)
        Higher score = better. Ranks are re-encoded as strictly decreasing scores so that
        the run keeps exactly the given order (ties included) under trec_eval's sort.

    Returns
    -------
    run : dict of str to dict of str to float
        ``{query_id: {doc_id: score}}``; padding indices (-1) are left out.

    Examples
    --------
    >>> import numpy as np
    >>> run_from_topk(["q"], ["a", "b", "c"], np.array([[0.9, 0.9]]), np.array([[2, 0]]))
    {'q': {'c': 2.0, 'a': 1.0}}
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    if scores.shape != indices.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and indices must be 2-D arrays of one shape; got {scores.shape} "
            f"and {indices.shape}."
        )
    if len(query_ids) != scores.shape[0]:
        raise ValueError(
            f"query_ids has {len(query_ids)} ids but scores has {scores.shape[0]} rows."
        )
    k = indices.shape[1]
    return {
        qid: {doc_ids[j]: float(k - r) for r, j in enumerate(row) if j >= 0}
        for qid, row in zip(query_ids, indices.tolist(), strict=True)
    }
