"""Scorers that let ``GridSearchCV`` pick compression settings.

Both are callables ``scorer(estimator, X, y=None) -> float`` (higher is better), the
form ``GridSearchCV(scoring=...)`` accepts, alone or in a dict for multi-metric search.

- :class:`NeighbourhoodScorer` needs no labels: on the held-out passages it measures how
  many of each passage's top-``k`` neighbours under a reference representation (by
  default the pipeline's own first step, the raw concatenation) the compressed output
  keeps.
- :class:`RetrievalScorer` is labelled: the pipeline is fitted on the training fold as
  usual, then scored on a fixed retrieval set (corpus, queries, qrels), e.g. nDCG@10 on
  a dev split, encoding queries with the query prompt and searching with the similarity
  the output implies.
- :func:`bytes_per_vector_scorer` reports the storage cost of one output row, for the
  trade-off table (it is not something to maximise).
"""

import re

import numpy as np
from scipy import sparse

from ._text import check_texts
from .evaluation import bytes_per_vector, code_step, encode, split_pipeline
from .evaluation import evaluate_retrieval as _evaluate_retrieval

__all__ = [
    "NeighbourhoodScorer",
    "PseudoQueryScorer",
    "RetrievalScorer",
    "bytes_per_vector_scorer",
]


def _as_texts(X, who):
    if isinstance(X, str) or not hasattr(X, "__len__"):
        raise TypeError(
            f"{who} scores a list of passages; got {type(X).__name__}. Pass the passages "
            "as a list of str (GridSearchCV passes the held-out fold)."
        )
    return list(X)


class NeighbourhoodScorer:
    """Unsupervised scorer: how well the output keeps each passage's neighbours.

    For the held-out passages ``X``, find each passage's ``k`` nearest other passages
    twice: with the reference representation (cosine) and with the pipeline's output
    (the similarity it implies: cosine for floats; for codes, the metric its code
    transformer names, via :func:`skfusion.search.search`). The score is the mean
    fraction of reference neighbours found again, in [0, 1].

    Parameters
    ----------
    k : int, default=10
        Neighbours per passage.
    reference : "embedder", callable or fitted transformer, default="embedder"
        The representation whose neighbourhoods should survive. ``"embedder"`` uses the
        estimator's first step (for a skfusion pipeline, the raw concatenation; with the
        ConcatEmbedder cache this costs no model call). A callable gets the list of
        passages and returns a float array; a fitted transformer is used through its
        ``transform``.
    max_passages : int, default=2000
        Score on at most this many held-out passages (the first ones), which bounds the
        cost of the exact all-pairs search.

    See Also
    --------
    RetrievalScorer : The labelled counterpart.

    Notes
    -----
    Each passage's own row is removed from its neighbour list (search ``k + 1`` then
    drop it). With discrete outputs (codes, bits) neighbours tied at the ``k``-th score
    are taken by lower index, so heavily tied outputs can lose a little by chance.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.datasets import load_sample_passages
    >>> from skfusion.scoring import NeighbourhoodScorer
    >>> passages = load_sample_passages(limit=300)
    >>> pipe = make_pipeline(TfidfVectorizer(), TruncatedSVD(8, random_state=0))
    >>> scorer = NeighbourhoodScorer(k=5, reference=pipe[:1].fit(passages))
    >>> score = scorer(pipe.fit(passages), passages)
    >>> 0.0 < score < 1.0
    True
    """

    def __init__(self, k=10, *, reference="embedder", max_passages=2000):
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if not (
            reference == "embedder"
            or callable(reference)
            or hasattr(reference, "transform")
        ):
            raise ValueError(
                "reference must be 'embedder', a callable(texts) -> array or a fitted "
                f"transformer; got {reference!r}."
            )
        if not isinstance(max_passages, (int, np.integer)) or max_passages < 2:
            raise ValueError(f"max_passages must be an integer >= 2, got {max_passages!r}.")
        self.k = int(k)
        self.reference = reference
        self.max_passages = int(max_passages)

    def _reference(self, estimator, texts):
        if isinstance(self.reference, str):
            embedder, _ = split_pipeline(estimator)
            return encode(embedder, texts, "document")
        if hasattr(self.reference, "transform"):
            return encode(self.reference, texts, "document")
        return self.reference(texts)

    def __call__(self, estimator, X, y=None):
        from .search import search

        texts = _as_texts(X, "NeighbourhoodScorer")[: self.max_passages]
        n = len(texts)
        if n <= self.k:
            raise ValueError(
                f"NeighbourhoodScorer(k={self.k}) needs more than {self.k} held-out "
                f"passages, got {n}: lower k or use fewer CV folds."
            )
        ref = self._reference(estimator, texts)
        # A sparse reference (e.g. TF-IDF) is densified: at most max_passages rows.
        ref = ref.toarray() if sparse.issparse(ref) else np.asarray(ref)
        if not np.issubdtype(ref.dtype, np.floating):
            raise ValueError(
                f"The reference representation must be float, got {ref.dtype}."
            )
        out = encode(estimator, texts, "document")
        out = out.toarray() if sparse.issparse(out) else np.asarray(out)
        _, ref_idx = search(ref, ref, k=self.k + 1, metric="cosine")
        _, out_idx = search(out, out, k=self.k + 1, quantizer=code_step(estimator))
        kept = 0
        for i in range(n):
            a = [j for j in ref_idx[i] if j != i][: self.k]
            b = [j for j in out_idx[i] if j != i][: self.k]
            kept += len(set(a) & set(b))
        return kept / (n * self.k)

    def __repr__(self):
        return f"NeighbourhoodScorer(k={self.k}, reference={self.reference!r})"


class RetrievalScorer:
    """Labelled scorer: a retrieval metric of the fitted pipeline on a fixed data set.

    ``GridSearchCV`` fits each candidate on the training fold of the passages it is
    given; this scorer ignores the held-out fold and scores the fitted pipeline on
    ``dataset`` (for example the dev split of a BEIR folder): documents are encoded
    with the document prompt, queries with the query prompt, and compared with the
    similarity the output implies (:func:`skfusion.evaluation.evaluate_retrieval`).

    Parameters
    ----------
    dataset : RetrievalDataset
        From :func:`skfusion.datasets.load_beir` or :func:`~skfusion.datasets.load_sample`.
        Use a split you do not report final numbers on (``"dev"``).
    metric : str, default="ndcg@10"
        ``"ndcg@K"``, ``"recall@K"`` or ``"mrr@K"``.
    **search_params
        Passed to :func:`skfusion.search.search` (e.g. ``metric="asymmetric"``).

    See Also
    --------
    NeighbourhoodScorer : Needs no labels.
    skfusion.evaluation.evaluate_retrieval : What is computed.

    Notes
    -----
    Every candidate encodes the corpus and the queries; give the embedder a
    ``cache_dir`` so that only the first candidate runs the models. The score does not
    depend on the CV fold beyond the fit, so the mean over folds measures how stable
    the fit is, not generalisation to new queries: keep the test split for the end.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.datasets import load_sample, load_sample_passages
    >>> from skfusion.scoring import RetrievalScorer
    >>> pipe = make_pipeline(TfidfVectorizer(), TruncatedSVD(32, random_state=0))
    >>> pipe = pipe.fit(load_sample_passages(limit=500))
    >>> score = RetrievalScorer(load_sample("dev"))(pipe, None)
    >>> 0.0 < score < 1.0
    True
    """

    def __init__(self, dataset, metric="ndcg@10", **search_params):
        for attr in ("corpus_texts", "query_texts", "qrels", "query_ids", "corpus_ids"):
            if not hasattr(dataset, attr):
                raise TypeError(
                    "dataset must be a RetrievalDataset (skfusion.datasets.load_beir or "
                    f"load_sample); got {type(dataset).__name__} without {attr!r}."
                )
        name, _, k = str(metric).partition("@")
        if name not in ("ndcg", "recall", "mrr") or not k.isdigit() or int(k) < 1:
            raise ValueError(
                f"metric must be 'ndcg@K', 'recall@K' or 'mrr@K', got {metric!r}."
            )
        self.dataset = dataset
        self.metric = metric
        self.search_params = search_params

    def __call__(self, estimator, X=None, y=None):
        scores = _evaluate_retrieval(
            estimator, self.dataset, metrics=(self.metric,), **self.search_params
        )
        return float(scores[self.metric])

    def __repr__(self):
        return f"RetrievalScorer({self.dataset!r}, metric={self.metric!r})"


def bytes_per_vector_scorer(estimator, X, y=None):
    """Bytes one output row of ``estimator`` costs to store (codes counted packed).

    For the trade-off table of a multi-metric ``GridSearchCV``
    (``scoring={"ndcg@10": RetrievalScorer(dev), "bytes": bytes_per_vector_scorer}``
    with ``refit="ndcg@10"``); lower is cheaper, so never ``refit`` on it.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.scoring import bytes_per_vector_scorer
    >>> texts = ["apt get", "get apt vim", "vim git", "git apt"]
    >>> pipe = make_pipeline(TfidfVectorizer(), TruncatedSVD(2, random_state=0)).fit(texts)
    >>> bytes_per_vector_scorer(pipe, texts)
    16
    """
    texts = _as_texts(X, "bytes_per_vector_scorer")[:2]
    return int(bytes_per_vector(estimator, encode(estimator, texts, "document")))


# The end of a sentence: ".", "!" or "?" followed by white space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class PseudoQueryScorer:
    """Label-free retrieval scorer: each passage's first sentence must find the rest.

    Unlabelled passages already contain query-document pairs: a passage's first
    sentence usually names and summarises its subject (a package synopsis, a title, a
    topic sentence) and the rest of the passage is about the same thing. For the
    held-out passages ``X`` this scorer splits every passage into a pseudo-query (its
    first sentence) and a pseudo-document (the remaining sentences), and scores the
    fitted pipeline exactly as :class:`RetrievalScorer` scores a labelled split: the
    pseudo-queries are encoded with the query prompt, the pseudo-documents with the
    document prompt, compared with the similarity the output implies, and each query
    has one relevant document, its own passage's rest. So ``GridSearchCV`` can choose
    member weights (and decoder / code settings) with no labelled queries at all.

    Parameters
    ----------
    metric : str, default="ndcg@10"
        ``"ndcg@K"``, ``"recall@K"`` or ``"mrr@K"``.
    min_words : int, default=5
        A passage is used only when its rest has at least this many words (a passage
        of one sentence has no rest and is skipped).
    max_passages : int, default=2000
        Use at most this many pairs (the first ones), which bounds the cost of the
        exact search.
    distractors : list, tuple, 1-D array or pandas Series of str, default=None
        Unlabelled documents searched alongside the pseudo-documents, none of them
        relevant; typically the corpus the pipeline will search. A few hundred
        pseudo-documents alone make an easy task that rewards whatever member ranks a
        passage's own rest first; among the real corpus's documents the task rewards
        what real retrieval needs, telling near neighbours apart. Texts equal to a
        pair's passage, pseudo-query or pseudo-document are left out (so the scored
        passages may be drawn from the corpus itself). Encoded through the
        estimator with the document prompt on every call: give the
        :class:`~skfusion.ConcatEmbedder` a ``cache_dir``.
    **search_params
        Passed to :func:`skfusion.search.search` (e.g. ``metric="asymmetric"``).

    See Also
    --------
    RetrievalScorer : The labelled counterpart (a fixed dev split with qrels).
    NeighbourhoodScorer : Label-free, but measures agreement with a reference
        representation, so it cannot choose the weights of that reference.

    Notes
    -----
    Sentences end at ``.``, ``!`` or ``?`` followed by white space. Pairs whose
    pseudo-query or pseudo-document repeats an earlier pair's are dropped, so that
    every query has exactly one correct answer among the documents. The score favours
    representations that match a summary sentence to its elaboration, which is close
    to, but not the same as, matching a user's query to a document: use it to *rank*
    candidate settings, not as an estimate of the labelled score. Like
    :class:`RetrievalScorer` it encodes texts through the estimator; give a
    :class:`~skfusion.ConcatEmbedder` a ``cache_dir`` so that changing weights or
    compression does not run the models again.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.datasets import load_sample_passages
    >>> from skfusion.scoring import PseudoQueryScorer
    >>> passages = load_sample_passages(limit=400)
    >>> scorer = PseudoQueryScorer()
    >>> pairs = scorer.make_pairs(passages)
    >>> len(pairs.query_texts) == len(pairs.corpus_texts) > 100
    True
    >>> pipe = make_pipeline(TfidfVectorizer(), TruncatedSVD(32, random_state=0))
    >>> score = scorer(pipe.fit(passages), passages)
    >>> 0.0 < score < 1.0
    True
    """

    def __init__(
        self,
        metric="ndcg@10",
        *,
        min_words=5,
        max_passages=2000,
        distractors=None,
        **search_params,
    ):
        from .metrics import evaluate

        try:
            evaluate({}, {}, [metric])
        except ValueError as exc:
            raise ValueError(f"metric={metric!r} is not valid: {exc}") from None
        for name, value, low in (
            ("min_words", min_words, 1),
            ("max_passages", max_passages, 2),
        ):
            if (
                not isinstance(value, (int, np.integer))
                or isinstance(value, bool)
                or value < low
            ):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if distractors is not None:
            distractors = check_texts(distractors, input_name="distractors")
        self.metric = metric
        self.min_words = int(min_words)
        self.max_passages = int(max_passages)
        self.distractors = distractors
        self.search_params = search_params

    def make_pairs(self, X):
        """The pseudo-query / pseudo-document pairs of ``X`` as a labelled data set.

        Parameters
        ----------
        X : list of str
            Passages.

        Returns
        -------
        pairs : RetrievalDataset
            Query ``"q<i>"`` is the first sentence of passage ``i`` and its only
            relevant document is ``"d<i>"``, the rest of that passage. Distractor
            ``j`` follows as document ``"x<j>"``, judged for no query.
        """
        from pathlib import Path

        from .datasets import RetrievalDataset

        texts = _as_texts(X, "PseudoQueryScorer")
        ids, queries, docs, seen, whole = [], [], [], set(), set()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"PseudoQueryScorer scores passages of str; item {i} is "
                    f"{type(text).__name__}."
                )
            head, *rest = _SENTENCE_END.split(text.strip(), maxsplit=1)
            rest = rest[0] if rest else ""
            if not head or len(rest.split()) < self.min_words:
                continue
            if head in seen or rest in seen:
                continue
            seen.update((head, rest))
            whole.add(text.strip())
            ids.append(str(i))
            queries.append(head)
            docs.append(rest)
            if len(ids) == self.max_passages:
                break
        # A scored passage that is also a distractor would outrank its own rest.
        taken = seen | whole
        extra = [
            (f"x{j}", t)
            for j, t in enumerate(self.distractors or ())
            if t.strip() not in taken
        ]
        return RetrievalDataset(
            corpus_ids=[f"d{i}" for i in ids] + [j for j, _ in extra],
            corpus_texts=docs + [t for _, t in extra],
            query_ids=[f"q{i}" for i in ids],
            query_texts=queries,
            qrels={f"q{i}": {f"d{i}": 1} for i in ids},
            split="pseudo-queries",
            path=Path("."),
        )

    def __call__(self, estimator, X, y=None):
        pairs = self.make_pairs(X)
        k = int(str(self.metric).partition("@")[2])
        if len(pairs.query_ids) <= k:
            raise ValueError(
                f"PseudoQueryScorer({self.metric!r}) needs more than {k} passages of at "
                f"least two sentences (rest >= {self.min_words} words); the "
                f"{len(_as_texts(X, 'PseudoQueryScorer'))} held-out passages gave "
                f"{len(pairs.query_ids)}. Pass more passages or use fewer CV folds."
            )
        return RetrievalScorer(pairs, self.metric, **self.search_params)(estimator)

    def __repr__(self):
        extra = (
            ""
            if self.distractors is None
            else f", distractors=<{len(self.distractors)} texts>"
        )
        return (
            f"PseudoQueryScorer(metric={self.metric!r}, min_words={self.min_words}, "
            f"max_passages={self.max_passages}{extra})"
        )
