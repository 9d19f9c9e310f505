"""Retrieval evaluation of a fitted pipeline: encode, search, score.

The one place that knows how to run a skfusion pipeline as a retriever: queries go through
the embedder with its query prompt, documents with its document prompt, the remaining
steps transform both, and :func:`skfusion.search.search` compares them with the similarity
the output implies (cosine for floats, Hamming for packed bits, code similarity for
percentile codes). The CLI, the demo, the GridSearchCV scorers and the benchmarks use it.
"""

import math

import numpy as np
from sklearn.pipeline import Pipeline

from .metrics import evaluate, run_from_topk

__all__ = ["bytes_per_vector", "encode", "evaluate_retrieval"]


def _split(pipeline):
    """(embedder, rest) where rest is the list of steps after the text embedder."""
    if isinstance(pipeline, Pipeline):
        steps = [est for _, est in pipeline.steps if est not in (None, "passthrough")]
        return steps[0], steps[1:]
    return pipeline, []


def encode(pipeline, texts, role="document"):
    """Encode ``texts`` as queries or documents through a fitted pipeline.

    Parameters
    ----------
    pipeline : Pipeline or ConcatEmbedder
        Fitted; its first step embeds text. When that step has ``encode_queries`` /
        ``encode_documents`` (``ConcatEmbedder`` does), the role selects the prompt.
    texts : list of str
    role : {"query", "document"}, default="document"
    """
    if role not in ("query", "document"):
        raise ValueError(f"role must be 'query' or 'document', got {role!r}.")
    embedder, rest = _split(pipeline)
    method = "encode_queries" if role == "query" else "encode_documents"
    out = (
        getattr(embedder, method)(texts)
        if hasattr(embedder, method)
        else (embedder.transform(texts))
    )
    for step in rest:
        out = step.transform(out)
    return out


def _final_quantizer(pipeline):
    from .allocation import AllocatedQuantizer
    from .quantize import PercentileQuantizer

    _, rest = _split(pipeline)
    last = rest[-1] if rest else None
    return last if isinstance(last, (PercentileQuantizer, AllocatedQuantizer)) else None


def bytes_per_vector(pipeline, output):
    """Storage bytes of one output row: codes counted bit-packed.

    Float rows cost ``itemsize * width``; percentile codes ``ceil(width * bits / 8)``
    (what ``pack=True`` stores); packed LSH bits their byte width.
    """
    output = np.asarray(output)
    if output.dtype == bool:  # unpacked sign bits
        return math.ceil(output.shape[1] / 8)
    quantizer = _final_quantizer(pipeline)
    if quantizer is not None and not quantizer.pack:
        # AllocatedQuantizer spends n_bits_ per row in total; PercentileQuantizer bits each.
        n_bits = getattr(quantizer, "n_bits_", None)
        if n_bits is None:
            n_bits = output.shape[1] * quantizer.bits
        return math.ceil(n_bits / 8)
    return output.shape[1] * output.dtype.itemsize


def evaluate_retrieval(
    pipeline,
    dataset,
    *,
    metrics=("ndcg@10",),
    k=None,
    corpus_embeddings=None,
    **search_params,
):
    """Score a fitted pipeline on a :class:`~skfusion.datasets.RetrievalDataset`.

    Parameters
    ----------
    pipeline : Pipeline or ConcatEmbedder
        Fitted.
    dataset : RetrievalDataset
        From :func:`skfusion.datasets.load_beir` or ``load_sample``.
    metrics : iterable of str, default=("ndcg@10",)
        ``"ndcg@K"``, ``"recall@K"``, ``"mrr@K"``.
    k : int, default=None
        Depth of the search; defaults to the largest K in ``metrics``.
    corpus_embeddings : ndarray, default=None
        Already encoded documents (saves re-encoding across several calls).
    **search_params
        Passed to :func:`skfusion.search.search` (``metric``, ``weights``...).

    Returns
    -------
    scores : dict
        Each metric, plus ``"bytes_per_vector"``.
    """
    from .search import search

    if k is None:
        k = max(int(m.partition("@")[2]) for m in metrics)
    docs = (
        encode(pipeline, dataset.corpus_texts, "document")
        if corpus_embeddings is None
        else corpus_embeddings
    )
    queries = encode(pipeline, dataset.query_texts, "query")
    search_params.setdefault("quantizer", _final_quantizer(pipeline))
    scores, indices = search(queries, docs, k=min(k, len(docs)), **search_params)
    run = run_from_topk(dataset.query_ids, dataset.corpus_ids, scores, indices)
    out = evaluate(run, dataset.qrels, metrics)
    out["bytes_per_vector"] = bytes_per_vector(pipeline, docs)
    return out
