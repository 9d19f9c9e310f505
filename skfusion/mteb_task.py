"""Run fitted skfusion pipelines through MTEB, offline on any BEIR folder.

:class:`MTEBEncoder` turns a fitted pipeline (or any object with ``transform`` on a list
of texts) into an MTEB encoder: MTEB's ``prompt_type`` selects the embedder's query or
document prompt, and the output is compared with the similarity it implies: cosine for
floats; for the output of a code transformer (:class:`~skfusion.codes.BaseCodeTransformer`:
percentile or allocated codes, LSH bits) the inner product of its ``code_vectors``, the
estimator's own symmetric code similarity; never cosine on raw ``uint8`` by accident.
:func:`beir_retrieval_task` builds an MTEB retrieval task from a local BEIR folder (the
built-in loader of mteb 2.x only reads the Hugging Face hub), and :func:`run_mteb` calls
``mteb.evaluate`` with the settings that make offline runs reproducible.

``mteb`` is an optional dependency (``pip install skfusion[eval]``); it is imported inside
the functions, so ``import skfusion`` never needs it.
"""

import re
from pathlib import Path

import numpy as np

from .evaluation import code_step, encode, split_pipeline

__all__ = ["MTEBEncoder", "beir_retrieval_task", "run_mteb"]

_SIMILARITIES = ("auto", "cosine", "dot", "hamming", "codes")


class MTEBEncoder:
    """Wrap a fitted skfusion pipeline as an MTEB encoder.

    Parameters
    ----------
    pipeline : object with ``transform(list of str)``
        Fitted: a ``Pipeline`` whose first step embeds text (``ConcatEmbedder``, or any
        scikit-learn text transformer such as ``TfidfVectorizer``), or such a step alone.
    name : str, default="skfusion/pipeline"
        MTEB model name, ``"organisation/name"``. MTEB files results under it: give each
        pipeline you evaluate its own name (see Notes).
    similarity : {"auto", "cosine", "dot", "hamming", "codes"}, default="auto"
        How outputs are compared. ``"auto"`` asks the last step: a code transformer
        names its ``symmetric_metric`` (``"codes"`` for ``PercentileQuantizer`` and
        ``AllocatedQuantizer``, ``"hamming"`` for ``RandomProjectionLSH``); float output
        -> ``"cosine"``. Any other integer or boolean output raises instead of being
        compared as floats. ``"hamming"`` takes boolean bits or ``np.packbits`` rows and
        compares the +/-1 vectors with an inner product, which equals
        ``n_bits - 2 * Hamming distance``. ``"codes"`` compares the code transformer's
        ``code_vectors`` (each code replaced by its ``code_values_`` entry) with an
        inner product: the symmetric code similarity of :func:`skfusion.search.search`.
    weights : array-like of shape (n_dims,), default=None
        Per-dimension non-negative weights of the code similarity (``"codes"`` only),
        e.g. ``std_j ** beta``; the inner product becomes ``sum_j w_j q_j d_j``.
    revision : str, default="local"
        MTEB model revision string stored with the results.

    Attributes
    ----------
    mteb_model_meta : mteb.models.ModelMeta
        Metadata MTEB reads (name, revision, similarity).

    See Also
    --------
    beir_retrieval_task : An MTEB retrieval task from a local BEIR folder.
    run_mteb : ``mteb.evaluate`` with offline-safe settings.
    skfusion.evaluation.encode : The query/document encoding used here.

    Notes
    -----
    MTEB's ``prompt_type`` (``query``/``document``) selects the embedder's
    ``encode_queries`` / ``encode_documents`` (``ConcatEmbedder`` has both: each member
    gets its own query or document prompt); an embedder without them encodes both the
    same way. Packed and unpacked codes are both read through the code transformer.

    MTEB caches results by model name and revision and silently reuses them: evaluate
    with :func:`run_mteb` (no cache, always recompute) or pass ``cache=None`` and
    ``overwrite_strategy="always"`` to ``mteb.evaluate`` yourself.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.mteb_task import MTEBEncoder
    >>> texts = ["apt package manager", "python web framework", "debian package tools"]
    >>> pipe = make_pipeline(TfidfVectorizer(), TruncatedSVD(2, random_state=0))
    >>> enc = MTEBEncoder(pipe.fit(texts), name="me/tfidf-svd")
    >>> enc.encode_texts(texts, prompt_type="query").shape
    (3, 2)
    >>> enc.similarity_name
    'cosine'
    """

    def __init__(
        self,
        pipeline,
        name="skfusion/pipeline",
        *,
        similarity="auto",
        weights=None,
        revision="local",
    ):
        if not hasattr(pipeline, "transform"):
            raise TypeError(
                "pipeline must be a fitted estimator with transform(list of texts), got "
                f"{type(pipeline).__name__}."
            )
        if not isinstance(name, str) or "/" not in name:
            raise ValueError(
                f"name must be 'organisation/model_name' (MTEB requires a '/'), got "
                f"{name!r}."
            )
        if similarity not in _SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {_SIMILARITIES}, got {similarity!r}."
            )
        self.pipeline = pipeline
        self.name = name
        self.revision = revision
        self.similarity_name = self._resolve(similarity)
        if weights is not None:
            if self.similarity_name != "codes":
                raise ValueError(
                    "weights apply to the code similarity only; got weights with "
                    f"similarity={self.similarity_name!r}."
                )
            weights = np.asarray(weights, dtype=np.float64)
            if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError("weights must be a 1-D array of finite values >= 0.")
        self.weights = weights
        self._meta = None

    def _resolve(self, similarity):
        step = code_step(self.pipeline)
        if similarity == "auto":
            return "cosine" if step is None else step.symmetric_metric
        if similarity == "codes" and (step is None or "codes" not in step.code_metrics):
            last = split_pipeline(self.pipeline)[1][-1:] or [self.pipeline]
            raise ValueError(
                "similarity='codes' needs a fitted code transformer (PercentileQuantizer, "
                "AllocatedQuantizer, ...) as the last step to know what each code stands "
                f"for; the last step is {type(last[0]).__name__}."
            )
        return similarity

    # -- MTEB encoder protocol ------------------------------------------------------

    @property
    def mteb_model_meta(self):
        if self._meta is None:
            from mteb.models.model_meta import ModelMeta, ScoringFunction

            # create_empty applies overrides without validation: pass the enum itself.
            fn = ScoringFunction("cosine" if self.similarity_name == "cosine" else "dot")
            self._meta = ModelMeta.create_empty(
                {
                    "name": self.name,
                    "revision": self.revision,
                    "similarity_fn_name": fn,
                    "framework": ["NumPy"],
                    "languages": None,
                    "open_weights": True,
                }
            )
        return self._meta

    def encode(
        self,
        inputs,
        *,
        task_metadata=None,
        hf_split=None,
        hf_subset=None,
        prompt_type=None,
        **kwargs,
    ):
        """Encode an MTEB dataloader of ``{"text": [...]}`` batches (MTEB calls this)."""
        texts = []
        for batch in inputs:
            texts.extend(batch["text"])
        role = getattr(prompt_type, "value", prompt_type)
        return self.encode_texts(texts, prompt_type=role)

    def encode_texts(self, texts, prompt_type=None):
        """Encode ``texts`` into the float space this encoder's similarity works in.

        Parameters
        ----------
        texts : list of str
        prompt_type : {"query", "document", None}, default=None
            ``None`` encodes as documents.

        Returns
        -------
        embeddings : ndarray of shape (n_texts, n_dims), float32
        """
        if prompt_type not in (None, "query", "document"):
            raise ValueError(
                f"prompt_type must be 'query', 'document' or None, got {prompt_type!r}."
            )
        out = encode(self.pipeline, list(texts), prompt_type or "document")
        return self._to_float(np.asarray(out))

    def _to_float(self, out):
        kind = self.similarity_name
        if kind in ("cosine", "dot"):
            if not np.issubdtype(out.dtype, np.floating):
                raise ValueError(
                    f"The pipeline outputs {out.dtype} values, which must not be compared "
                    f"with {kind!r}: pass similarity='hamming' for sign bits or "
                    "similarity='codes' for percentile codes."
                )
            return out.astype(np.float32, copy=False)
        step = code_step(self.pipeline)
        if kind == "hamming" and step is not None and "hamming" in step.code_metrics:
            # +/-1 code values: <q, d> = n_bits - 2 * Hamming(q, d).
            return step.code_vectors(out)
        if kind == "hamming":
            if out.dtype == np.uint8:
                out = np.unpackbits(out, axis=1)
            elif out.dtype != bool:
                raise ValueError(
                    f"similarity='hamming' needs boolean bits or np.packbits uint8 rows, "
                    f"got {out.dtype}."
                )
            # +/-1 vectors: <q, d> = n_bits - 2 * Hamming(q, d).
            return out.astype(np.float32) * 2.0 - 1.0
        centred = step.code_vectors(out)
        if self.weights is not None:
            if self.weights.shape[0] != centred.shape[1]:
                raise ValueError(
                    f"weights has {self.weights.shape[0]} entries but the codes have "
                    f"{centred.shape[1]} dimensions."
                )
            centred *= np.sqrt(self.weights).astype(np.float32)
        return centred

    def similarity(self, embeddings1, embeddings2):
        """Score matrix between two sets of :meth:`encode_texts` outputs."""
        a = np.asarray(embeddings1, dtype=np.float32)
        b = np.asarray(embeddings2, dtype=np.float32)
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        if self.similarity_name == "cosine":
            a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return a @ b.T

    def similarity_pairwise(self, embeddings1, embeddings2):
        """Row-by-row scores of two equally long sets of :meth:`encode_texts` outputs."""
        a = np.atleast_2d(np.asarray(embeddings1, dtype=np.float32))
        b = np.atleast_2d(np.asarray(embeddings2, dtype=np.float32))
        if self.similarity_name == "cosine":
            a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return np.einsum("ij,ij->i", a, b)

    def __repr__(self):
        return (
            f"MTEBEncoder(name={self.name!r}, similarity={self.similarity_name!r}, "
            f"pipeline={type(self.pipeline).__name__})"
        )


def beir_retrieval_task(
    path,
    *,
    name=None,
    splits=("test",),
    languages=("eng-Latn",),
    description=None,
):
    """An MTEB retrieval task that reads a local BEIR folder.

    mteb 2.x's built-in loader reads the Hugging Face hub, not a BEIR folder; this task
    overrides ``load_data`` to read the folder with :func:`skfusion.datasets.load_beir`
    and builds the ``datasets.Dataset`` objects in memory, so ``mteb.evaluate`` runs
    offline. Scores are MTEB's (nDCG@k, recall@k, MRR@k, MAP... with ``ndcg_at_10`` the
    main score).

    Parameters
    ----------
    path : str or path-like
        A BEIR folder (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``,
        ``qrels/<split>.tsv``), e.g. ``skfusion.datasets.sample_path()``.
    name : str, default=None
        Task name MTEB files results under. Defaults to ``"Local" + folder name``
        in CamelCase (``"LocalDebianSample"``).
    splits : sequence of str, default=("test",)
        The qrels splits to evaluate.
    languages : sequence of str, default=("eng-Latn",)
        MTEB language codes of the data.
    description : str, default=None
        Free text stored in the task metadata.

    Returns
    -------
    task : mteb.AbsTaskRetrieval
        A task instance for ``mteb.evaluate`` / :func:`run_mteb`.

    See Also
    --------
    MTEBEncoder : The encoder side.
    skfusion.datasets.load_beir : The reader used here.

    Notes
    -----
    MTEB averages its scores over the queries that have at least one judged document
    (including queries whose judgements are all 0, which score 0), whereas
    :mod:`skfusion.metrics` averages over queries with at least one *relevant* document.
    The two agree whenever every query has a relevant document (true of BEIR test sets
    and debian-packages).

    Examples
    --------
    >>> from skfusion.datasets import sample_path
    >>> from skfusion.mteb_task import beir_retrieval_task
    >>> task = beir_retrieval_task(sample_path(), splits=["dev"])
    >>> task.metadata.name, task.metadata.eval_splits, task.metadata.main_score
    ('LocalDebianSample', ['dev'], 'ndcg_at_10')
    """
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    from .datasets import load_beir

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"BEIR folder {str(folder)!r} does not exist.")
    if isinstance(splits, str):
        splits = (splits,)
    splits = list(splits)
    if not splits:
        raise ValueError("splits must name at least one qrels split, e.g. ('test',).")
    missing = [s for s in splits if not (folder / "qrels" / f"{s}.tsv").is_file()]
    if missing:
        raise FileNotFoundError(f"No qrels/<split>.tsv for split(s) {missing} in {folder}.")
    if name is None:
        words = re.split(r"[^0-9A-Za-z]+", folder.resolve().name)
        name = "Local" + "".join(w[:1].upper() + w[1:] for w in words if w)

    metadata = TaskMetadata(
        name=name,
        description=description or f"Local BEIR retrieval task read from {folder}.",
        reference=None,
        dataset={"path": str(folder), "revision": "local"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=splits,
        eval_langs=list(languages),
        main_score="ndcg_at_10",
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation="",
    )

    def load_data(self, num_proc=None, **kwargs):
        from datasets import Dataset

        if self.data_loaded:
            return
        self.dataset = {"default": {}}
        for split in self.metadata.eval_splits:
            data = load_beir(folder, split=split)
            self.dataset["default"][split] = RetrievalSplitData(
                corpus=Dataset.from_dict(
                    {"id": data.corpus_ids, "text": data.corpus_texts}
                ),
                queries=Dataset.from_dict({"id": data.query_ids, "text": data.query_texts}),
                relevant_docs={q: dict(j) for q, j in data.qrels.items()},
                top_ranked=None,
            )
        self.data_loaded = True

    cls = type(
        name,
        (AbsTaskRetrieval,),
        {"metadata": metadata, "load_data": load_data, "__module__": __name__},
    )
    return cls()


def run_mteb(model, tasks, *, show_progress_bar=False, **kwargs):
    """``mteb.evaluate`` with settings safe for offline, repeated runs.

    Turns off MTEB's result cache (``cache=None``) and always recomputes
    (``overwrite_strategy="always"``), so a changed pipeline under an old name never
    returns stale scores.

    Parameters
    ----------
    model : MTEBEncoder or anything ``mteb.evaluate`` accepts
        A fitted skfusion pipeline is wrapped in :class:`MTEBEncoder` with default
        arguments.
    tasks : mteb task or list of tasks
        E.g. from :func:`beir_retrieval_task` or ``mteb.get_tasks(...)``.
    show_progress_bar : bool, default=False
    **kwargs
        Passed to ``mteb.evaluate`` (``encode_kwargs``, ``prediction_folder``, or
        ``cache`` / ``overwrite_strategy`` to override the defaults).

    Returns
    -------
    result : mteb.results.ModelResult
        ``result.task_results[i].scores[split][0]["ndcg_at_10"]`` etc.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.datasets import load_sample_passages, sample_path
    >>> from skfusion.mteb_task import MTEBEncoder, beir_retrieval_task, run_mteb
    >>> lsa = make_pipeline(TfidfVectorizer(), TruncatedSVD(64, random_state=0))
    >>> lsa = lsa.fit(load_sample_passages(limit=500))
    >>> task = beir_retrieval_task(sample_path(), splits=["dev"])
    >>> result = run_mteb(MTEBEncoder(lsa, name="me/lsa-64"), task)
    >>> bool(0 < result.task_results[0].get_score() < 1)
    True
    """
    import mteb

    if hasattr(model, "transform") and not hasattr(model, "mteb_model_meta"):
        model = MTEBEncoder(model)
    # mteb only silences its bars when encode_kwargs is not given at all.
    encode_kwargs = dict(kwargs.pop("encode_kwargs", None) or {})
    encode_kwargs.setdefault("show_progress_bar", show_progress_bar)
    kwargs["encode_kwargs"] = encode_kwargs
    kwargs.setdefault("cache", None)
    kwargs.setdefault("overwrite_strategy", "always")
    return mteb.evaluate(model, tasks, show_progress_bar=show_progress_bar, **kwargs)
