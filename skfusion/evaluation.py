"""Retrieval evaluation of a fitted pipeline: encode, search, score.

The one place that knows how to run a skfusion pipeline as a retriever: queries go through
the embedder with its query prompt, documents with its document prompt, the remaining
steps transform both, and :func:`skfusion.search.search` compares them with the similarity
the output implies: cosine for floats; for codes, whatever the final code transformer
(:class:`~skfusion.codes.BaseCodeTransformer`) says. :func:`evaluate_embeddings` scores
already computed query and document rows. The CLI, the demo, the GridSearchCV scorers and
the benchmarks use it.
"""

import math

import numpy as np
from sklearn.pipeline import Pipeline

from .codes import BaseCodeTransformer
from .metrics import evaluate, per_query_scores, run_from_topk
from .search import search

__all__ = [
    "bytes_per_vector",
    "code_step",
    "encode",
    "evaluate_embeddings",
    "evaluate_retrieval",
    "split_pipeline",
]


def split_pipeline(pipeline):
    """The text embedder of a pipeline and the steps after it.

    Parameters
    ----------
    pipeline : Pipeline or estimator
        A ``Pipeline`` (``None`` / ``"passthrough"`` steps are skipped) or one step.

    Returns
    -------
    embedder : estimator
        The first step (the pipeline itself when it is not a ``Pipeline``).
    rest : list of estimators
        The steps after it.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.evaluation import split_pipeline
    >>> split_pipeline(make_pipeline(TfidfVectorizer(), TruncatedSVD(3)))
    (TfidfVectorizer(), [TruncatedSVD(n_components=3)])
    """
    if isinstance(pipeline, Pipeline):
        steps = [est for _, est in pipeline.steps if est not in (None, "passthrough")]
        return steps[0], steps[1:]
    return pipeline, []


def code_step(pipeline):
    """The final step when it emits codes (a ``BaseCodeTransformer``), else None.

    Parameters
    ----------
    pipeline : Pipeline or estimator

    Returns
    -------
    step : BaseCodeTransformer or None
        Pass it to :func:`skfusion.search.search` as ``quantizer``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.decomposition import PCA
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion import PercentileQuantizer
    >>> from skfusion.evaluation import code_step
    >>> X = np.random.default_rng(0).standard_normal((50, 6))
    >>> pipe = make_pipeline(PCA(4), PercentileQuantizer(bits=2)).fit(X)
    >>> code_step(pipe) is pipe[-1], code_step(pipe[:1])
    (True, None)
    """
    _, rest = split_pipeline(pipeline)
    last = rest[-1] if rest else pipeline
    return last if isinstance(last, BaseCodeTransformer) else None


def encode(pipeline, texts, role="document"):
    """Encode ``texts`` as queries or documents through a fitted pipeline.

    Parameters
    ----------
    pipeline : Pipeline or ConcatEmbedder
        Fitted; its first step embeds text. When that step has ``encode_queries`` /
        ``encode_documents`` (``ConcatEmbedder`` does), the role selects the prompt.
    texts : list of str
    role : {"query", "document"}, default="document"

    Returns
    -------
    output : ndarray of shape (n_texts, width)
        The pipeline's output for ``texts`` in that role.

    Examples
    --------
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion import ConcatEmbedder
    >>> from skfusion.evaluation import encode
    >>> embedder = ConcatEmbedder([TfidfVectorizer()]).fit(["apt installs", "vim edits"])
    >>> encode(embedder, ["apt"], role="query").shape
    (1, 4)
    """
    if role not in ("query", "document"):
        raise ValueError(f"role must be 'query' or 'document', got {role!r}.")
    embedder, rest = split_pipeline(pipeline)
    method = "encode_queries" if role == "query" else "encode_documents"
    out = (
        getattr(embedder, method)(texts)
        if hasattr(embedder, method)
        else (embedder.transform(texts))
    )
    for step in rest:
        out = step.transform(out)
    return out


def bytes_per_vector(pipeline, output):
    """Storage bytes of one output row: codes counted bit-packed.

    Float rows cost ``itemsize * width``; the output of a code transformer its
    ``bytes_per_vector_`` (what ``pack=True`` stores); unpacked bool bits
    ``ceil(width / 8)``.

    Parameters
    ----------
    pipeline : Pipeline or estimator
        The fitted pipeline that made ``output``.
    output : ndarray of shape (n_samples, width)
        Some of its output rows.

    Returns
    -------
    n_bytes : int

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion import RandomProjectionLSH
    >>> from skfusion.evaluation import bytes_per_vector
    >>> X = np.random.default_rng(0).standard_normal((20, 8))
    >>> lsh = RandomProjectionLSH(64, random_state=0).fit(X)
    >>> bytes_per_vector(lsh, lsh.transform(X)), bytes_per_vector(None, X)
    (8, 64)
    """
    output = np.asarray(output)
    step = code_step(pipeline)
    if step is not None:
        return int(step.bytes_per_vector_)
    if output.dtype == bool:  # unpacked sign bits
        return math.ceil(output.shape[1] / 8)
    return output.shape[1] * output.dtype.itemsize


def evaluate_embeddings(
    query_embeddings,
    corpus_embeddings,
    dataset,
    *,
    metrics=("ndcg@10",),
    k=None,
    per_query=False,
    **search_params,
):
    """Retrieval metrics of already encoded queries and documents.

    Searches with :func:`skfusion.search.search` (ties go to the lower document index)
    and scores the ranking with :mod:`skfusion.metrics`: one evaluation for the CLI, the
    scorers and the benchmarks.

    Parameters
    ----------
    query_embeddings : array-like of shape (n_queries, width)
        One row per ``dataset.query_ids`` entry, in that order.
    corpus_embeddings : array-like of shape (n_documents, width)
        One row per ``dataset.corpus_ids`` entry (may be a memmap).
    dataset : RetrievalDataset
        Anything with ``query_ids``, ``corpus_ids`` and ``qrels``.
    metrics : iterable of str, default=("ndcg@10",)
        ``"ndcg@K"``, ``"recall@K"``, ``"mrr@K"``.
    k : int, default=None
        Depth of the search; defaults to the largest K in ``metrics``.
    per_query : bool, default=False
        If True, each metric maps to an array of per-query values (the queries of
        ``qrels`` with a relevant document, in qrels order) instead of their mean.
    **search_params
        Passed to :func:`skfusion.search.search` (``metric``, ``quantizer``,
        ``weights``, ``normalize``...).

    Returns
    -------
    scores : dict of str to float (or ndarray)

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from skfusion.evaluation import evaluate_embeddings
    >>> data = SimpleNamespace(query_ids=["q"], corpus_ids=["a", "b", "c"],
    ...                        qrels={"q": {"b": 1}})
    >>> docs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> evaluate_embeddings(np.array([[1.0, 0.0]]), docs, data, metrics=["mrr@10"])
    {'mrr@10': 0.5}
    """
    metrics = list(metrics)
    if k is None:
        k = max(int(m.partition("@")[2]) for m in metrics)
    n_docs = len(dataset.corpus_ids)
    if len(corpus_embeddings) != n_docs:
        raise ValueError(
            f"corpus_embeddings has {len(corpus_embeddings)} rows but the dataset has "
            f"{n_docs} documents."
        )
    scores, indices = search(
        query_embeddings, corpus_embeddings, k=min(k, n_docs), **search_params
    )
    run = run_from_topk(dataset.query_ids, dataset.corpus_ids, scores, indices)
    if per_query:
        return {m: np.asarray(per_query_scores(run, dataset.qrels, m)) for m in metrics}
    return evaluate(run, dataset.qrels, metrics)


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

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion import ConcatEmbedder
    >>> from skfusion.datasets import load_sample, load_sample_passages
    >>> from skfusion.evaluation import evaluate_retrieval
    >>> lsa = make_pipeline(TfidfVectorizer(), TruncatedSVD(64, random_state=0))
    >>> embedder = ConcatEmbedder([lsa]).fit(load_sample_passages(limit=500))
    >>> scores = evaluate_retrieval(embedder, load_sample("dev"), metrics=["ndcg@10"])
    >>> sorted(scores), 0 < scores["ndcg@10"] < 1
    (['bytes_per_vector', 'ndcg@10'], True)
    """
    docs = (
        encode(pipeline, dataset.corpus_texts, "document")
        if corpus_embeddings is None
        else corpus_embeddings
    )
    queries = encode(pipeline, dataset.query_texts, "query")
    search_params.setdefault("quantizer", code_step(pipeline))
    out = evaluate_embeddings(queries, docs, dataset, metrics=metrics, k=k, **search_params)
    out["bytes_per_vector"] = bytes_per_vector(pipeline, docs)
    return out
