"""skfusion.metrics agrees with pytrec_eval (trec_eval), which BEIR and MTEB use."""

import math

import numpy as np
import pytest

from skfusion.metrics import (
    evaluate,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    run_from_topk,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

K_VALUES = (1, 3, 5, 10, 100)


def _trec_order(docs):
    # trec_eval's ranking: score descending, then doc id descending.
    return sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)


def _reference(run, qrels, k):
    """nDCG@k, recall@k, MRR@k from pytrec_eval, averaged as skfusion documents.

    trec_eval has no MRR cut-off, so MRR@k is ``recip_rank`` on the run truncated to its
    top ``k``. Queries absent from the run score 0; queries without a relevant document
    are left out of the mean.
    """
    measures = {f"ndcg_cut.{k}", f"recall.{k}"}
    per_q = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top = {q: dict(_trec_order(docs)[:k]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
    queries = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    if not queries:
        return 0.0, 0.0, 0.0

    def mean(res, key):
        return float(np.mean([res.get(q, {}).get(key, 0.0) for q in queries]))

    return mean(per_q, f"ndcg_cut_{k}"), mean(per_q, f"recall_{k}"), mean(rr, "recip_rank")


def _random_case(rng):
    n_docs = int(rng.integers(1, 40))
    docs = [f"d{i:02d}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(int(rng.integers(1, 10))):
        qid = f"q{q}"
        judged = rng.choice(
            docs, size=int(rng.integers(1, min(n_docs, 8) + 1)), replace=False
        )
        # Graded relevance, including 0 (judged non-relevant) and negative grades, so
        # some queries have no relevant document at all.
        qrels[qid] = {str(d): int(rng.integers(-1, 4)) for d in judged}
        if rng.random() < 0.15:
            continue  # query missing from the run
        retrieved = rng.choice(docs, size=int(rng.integers(0, n_docs + 1)), replace=False)
        if rng.random() < 0.5:
            # Few distinct scores: many ties, broken by doc id.
            scores = rng.integers(0, 3, size=len(retrieved)).astype(float)
        else:
            scores = rng.standard_normal(len(retrieved))
        run[qid] = {str(d): float(s) for d, s in zip(retrieved, scores, strict=True)}
    return run, qrels


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_pytrec_eval_on_random_runs(seed):
    run, qrels = _random_case(np.random.default_rng(seed))
    for k in K_VALUES:
        ndcg, recall, mrr = _reference(run, qrels, k)
        assert ndcg_at_k(run, qrels, k) == pytest.approx(ndcg, abs=1e-6)
        assert recall_at_k(run, qrels, k) == pytest.approx(recall, abs=1e-6)
        assert mrr_at_k(run, qrels, k) == pytest.approx(mrr, abs=1e-6)
        got = evaluate(run, qrels, [f"ndcg@{k}", f"recall@{k}", f"mrr@{k}"])
        assert got == pytest.approx(
            {f"ndcg@{k}": ndcg, f"recall@{k}": recall, f"mrr@{k}": mrr}, abs=1e-6
        )


def test_random_cases_cover_the_hard_situations():
    # Guard against the generator drifting into easy cases only.
    seen = {"tie": False, "no_relevant": False, "missing_query": False, "none_found": False}
    for seed in range(40):
        run, qrels = _random_case(np.random.default_rng(seed))
        for qid, judged in qrels.items():
            relevant = {d for d, g in judged.items() if g > 0}
            seen["no_relevant"] |= not relevant
            seen["missing_query"] |= qid not in run
            docs = run.get(qid, {})
            seen["tie"] |= len(set(docs.values())) < len(docs)
            seen["none_found"] |= bool(relevant) and bool(docs) and not relevant & set(docs)
    assert all(seen.values()), seen


def test_ties_broken_by_doc_id_descending():
    # Equal scores: trec_eval ranks "b" before "a", so the relevant "a" is second.
    run, qrels = {"q": {"a": 1.0, "b": 1.0}}, {"q": {"a": 1}}
    assert mrr_at_k(run, qrels, 10) == 0.5
    assert mrr_at_k(run, qrels, 1) == 0.0
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(1 / math.log2(3))
    assert _reference(run, qrels, 10)[2] == 0.5


def test_hand_computed_graded_ndcg():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    qrels = {"q": {"a": 1, "c": 2, "z": 1}}
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(dcg / idcg)
    assert recall_at_k(run, qrels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(run, qrels, 3) == pytest.approx(2 / 3)


def test_queries_without_relevant_docs_are_not_averaged():
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}}
    assert ndcg_at_k(run, qrels) == 1.0
    assert ndcg_at_k({}, {"q": {"a": 0}}) == 0.0


def test_run_from_topk_keeps_order_with_ties():
    # Equal scores would be reordered by doc id under trec_eval's sort; run_from_topk
    # must keep the search order instead, and drop -1 padding.
    doc_ids = ["a", "b", "c"]
    scores = np.array([[0.5, 0.5, 0.5], [0.9, 0.1, -np.inf]])
    indices = np.array([[0, 1, 2], [2, 0, -1]])
    run = run_from_topk(["q1", "q2"], doc_ids, scores, indices)
    assert [d for d, _ in _trec_order(run["q1"])] == ["a", "b", "c"]
    assert list(run["q2"]) == ["c", "a"]
    assert mrr_at_k(run, {"q1": {"a": 1}}) == 1.0


def test_run_from_topk_bad_shapes():
    with pytest.raises(ValueError, match="2-D arrays of one shape"):
        run_from_topk(["q"], ["a"], np.zeros((1, 2)), np.zeros((1, 1), dtype=int))
    with pytest.raises(ValueError, match="query_ids has 2 ids"):
        run_from_topk(["q", "r"], ["a"], np.zeros((1, 1)), np.zeros((1, 1), dtype=int))


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "10"])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ndcg_at_k({}, {}, k)


def test_bad_metric_name_and_types():
    with pytest.raises(ValueError, match="Unknown metric 'map@10'"):
        evaluate({}, {}, ["map@10"])
    with pytest.raises(ValueError, match="Unknown metric 'ndcg'"):
        evaluate({}, {}, ["ndcg"])
    with pytest.raises(TypeError, match="must be mappings"):
        ndcg_at_k([("q", "a")], {})
