"""evaluate_retrieval: the similarity and the size follow the pipeline's last step."""

import numpy as np
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline, make_pipeline

from skfusion import AllocatedQuantizer, ConcatEmbedder, PercentileQuantizer, search
from skfusion.datasets import load_sample, load_sample_passages
from skfusion.evaluation import bytes_per_vector, encode, evaluate_retrieval
from skfusion.metrics import ndcg_at_k, run_from_topk


@pytest.fixture(scope="module")
def data():
    return load_sample("dev"), load_sample_passages(limit=400)


def _embedder():
    lex = make_pipeline(TfidfVectorizer(), TruncatedSVD(32, random_state=0))
    return ("embed", ConcatEmbedder([("lex", lex)], show_progress_bar=False))


@pytest.mark.parametrize(
    "quantizer, expected_bytes",
    [
        (PercentileQuantizer(bits=2), 8),  # 32 dims x 2 bits
        (PercentileQuantizer(bits=2, pack=True), 8),
        (AllocatedQuantizer(bit_budget=40, max_bits=2), 5),  # 40 bits in total
    ],
)
def test_codes_are_searched_with_their_quantizer(data, quantizer, expected_bytes):
    dataset, passages = data
    pipe = Pipeline([_embedder(), ("quant", quantizer)]).fit(passages)
    scores = evaluate_retrieval(pipe, dataset)
    assert scores["bytes_per_vector"] == expected_bytes
    # The same numbers by hand: code similarity through the fitted quantizer.
    docs = encode(pipe, dataset.corpus_texts, "document")
    queries = encode(pipe, dataset.query_texts, "query")
    s, i = search(queries, docs, k=10, quantizer=pipe["quant"])
    run = run_from_topk(dataset.query_ids, dataset.corpus_ids, s, i)
    assert scores["ndcg@10"] == pytest.approx(ndcg_at_k(run, dataset.qrels, 10))
    assert scores["ndcg@10"] > 0.05


def test_float_output_costs_its_itemsize(data):
    dataset, passages = data
    pipe = Pipeline([_embedder()]).fit(passages)
    out = encode(pipe, dataset.query_texts[:3])
    assert bytes_per_vector(pipe, out) == 32 * 4
    assert bytes_per_vector(pipe, np.zeros((1, 24), dtype=bool)) == 3


def test_role_must_be_query_or_document(data):
    dataset, passages = data
    pipe = Pipeline([_embedder()]).fit(passages)
    with pytest.raises(ValueError, match="role"):
        encode(pipe, dataset.query_texts[:2], role="passage")


def test_evaluate_embeddings_is_what_evaluate_retrieval_reports(data):
    from skfusion.evaluation import evaluate_embeddings

    dataset, passages = data
    pipe = Pipeline([_embedder(), ("quant", AllocatedQuantizer(40, max_bits=2))])
    pipe.fit(passages)
    metrics = ("ndcg@10", "recall@20", "mrr@10")
    docs = encode(pipe, dataset.corpus_texts, "document")
    queries = encode(pipe, dataset.query_texts, "query")
    got = evaluate_embeddings(queries, docs, dataset, metrics=metrics, quantizer=pipe[-1])
    ref = evaluate_retrieval(pipe, dataset, metrics=metrics)
    assert got == {m: ref[m] for m in metrics}
    per_query = evaluate_embeddings(
        queries, docs, dataset, metrics=metrics, per_query=True, quantizer=pipe[-1]
    )
    for m in metrics:
        assert per_query[m].shape == (len(dataset.qrels),)
        assert per_query[m].mean() == pytest.approx(got[m])
    with pytest.raises(ValueError, match="corpus_embeddings has 3 rows"):
        evaluate_embeddings(queries, docs[:3], dataset, quantizer=pipe[-1])


def _offset(X):
    return X + 1.0  # a shared mean direction, as e5-like members have


def test_centring_step_before_codes_keeps_asymmetric_search_close_to_float(data):
    # The README's recipe for anisotropic outputs: StandardScaler(with_std=False) before
    # the quantizer. encode / search take the pipeline's float part for the queries.
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    dataset, passages = data
    shift = ("shift", FunctionTransformer(_offset))
    quant = ("quant", PercentileQuantizer(bits=2, random_state=0))
    raw = Pipeline([_embedder(), shift, quant]).fit(passages)
    centred = Pipeline(
        [_embedder(), shift, ("centre", StandardScaler(with_std=False)), quant]
    ).fit(passages)

    def ndcg(pipe, asymmetric):
        docs = encode(pipe if asymmetric else pipe[:-1], dataset.corpus_texts, "document")
        queries = encode(pipe[:-1], dataset.query_texts, "query")
        params = {"metric": "asymmetric", "quantizer": pipe[-1]} if asymmetric else {}
        s, i = search(queries, docs, k=10, **params)
        run = run_from_topk(dataset.query_ids, dataset.corpus_ids, s, i)
        return ndcg_at_k(run, dataset.qrels, 10)

    assert centred["centre"].mean_ == pytest.approx(raw[:-1].transform(passages).mean(0))
    # Centred: 2-bit codes keep most of the float score; uncentred, the codes spend
    # their levels on the offset and lose much more.
    kept_centred = ndcg(centred, True) / ndcg(centred, False)
    kept_raw = ndcg(raw, True) / ndcg(raw, False)
    assert kept_centred > 0.9
    assert kept_centred > kept_raw + 0.05
