"""sentence-transformers models as ConcatEmbedder members."""

import contextlib
import hashlib
import json
import os
import sys
import threading
import weakref

import numpy as np

from skfusion.members.base import (
    Member,
    as_float32,
    normalized_reference,
    reference_name,
)

# is_sentence_transformer and st_fingerprint serve this package (as_member) only.
__all__ = ["SentenceTransformerMember"]

# sentence-transformers' own look-up order (encode_query / encode_document).
_PROMPT_CANDIDATES = {
    "query": ("query",),
    "document": ("document", "passage", "corpus"),
}

# One lock per SentenceTransformer object: max_seq_length is an attribute of the
# shared model, so an encode that sets it for its call must not overlap another
# encode of the same model (which would run with, or leave behind, the wrong limit).
_MODEL_LOCKS = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model):
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


@contextlib.contextmanager
def _max_seq_length(model, value):
    """Set a SentenceTransformer's max_seq_length for one call (hold its lock)."""
    if value is None:
        yield
        return
    old = model.max_seq_length
    model.max_seq_length = value
    try:
        yield
    finally:
        model.max_seq_length = old


def is_sentence_transformer(obj):
    """Whether ``obj`` is a ``SentenceTransformer`` (without importing the package)."""
    # One can only exist if its package was imported; checking sys.modules keeps
    # `import skfusion` free of torch.
    st = sys.modules.get("sentence_transformers")
    return st is not None and isinstance(obj, st.SentenceTransformer)


def _hash_tokenizer(h, tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        h.update(repr(tokenizer).encode())
        return
    config = json.loads(to_str())
    # transformers changes truncation/padding on the backend at every call; they are
    # call settings, not part of the model.
    config.pop("truncation", None)
    config.pop("padding", None)
    h.update(json.dumps(config, sort_keys=True).encode())


def st_fingerprint(model):
    """Hash of a SentenceTransformer's modules, weights and tokenizer (hex str).

    Parameters
    ----------
    model : sentence_transformers.SentenceTransformer

    Returns
    -------
    str
    """
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(repr(model).encode())
    for key, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy())
    _hash_tokenizer(h, getattr(model, "tokenizer", None))
    return h.hexdigest()


def _load(name, ref, device, reloading):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(ref, device=device)
    except Exception as exc:
        where = (
            f"the local directory {ref!r} (exists: {os.path.isdir(ref)}) or, failing "
            f"that, the Hugging Face model {ref!r} (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')})"
        )
        hint = (
            "The fitted embedder stores this member by reference (name or path), not "
            "its weights; make the model available there again or refit."
            if reloading
            else "Check the name or path."
        )
        raise OSError(
            f"ConcatEmbedder member {name!r}: cannot load a SentenceTransformer from "
            f"{where}: {type(exc).__name__}: {exc}. {hint}"
        ) from exc


class SentenceTransformerMember(Member):
    """A sentence-transformers model: by name or path (by reference) or an instance.

    Parameters
    ----------
    model : str, path-like or SentenceTransformer
        A Hugging Face model id or local directory, loaded in ``fit`` and pickled by
        reference (local directories as absolute paths), or an instance, used as is
        and pickled by value.

    Notes
    -----
    Queries and documents go through ``encode_query`` / ``encode_document`` with an
    explicit prompt: the member's entry in the embedder's ``prompts``, else the
    model's configured prompt (``"query"``; ``"document"``, ``"passage"`` or
    ``"corpus"``). ``max_seq_length`` is set on the model for one call only, under a
    per-model lock. The fingerprint hashes modules, weights and tokenizer; an instance
    is re-fingerprinted before each cached transform, so changing it in place never
    serves stale vectors.

    Examples
    --------
    >>> from skfusion.members import SentenceTransformerMember
    >>> SentenceTransformerMember("sentence-transformers/all-MiniLM-L6-v2")
    SentenceTransformerMember(model='sentence-transformers/all-MiniLM-L6-v2')
    """

    kind = "sentence-transformers"
    holds_caller_model = True  # an instance is used as is

    def __init__(self, model):
        self.model = model

    def default_name(self):
        if not is_sentence_transformer(self.model):
            return reference_name(self.model)
        card = getattr(self.model, "model_card_data", None)
        base = getattr(card, "base_model", None)
        if base:
            return base.rstrip("/").rsplit("/", 1)[-1]
        return "sentencetransformer"

    def fit_member(self, name, texts, settings):
        self.start(name)
        if is_sentence_transformer(self.model):
            model = self.model
        else:
            self.ref_ = normalized_reference(self.model)
            model = _load(name, self.ref_, settings.device, reloading=False)
        self._model = model
        self.fingerprint_ = self._current_fingerprint = st_fingerprint(model)
        # get_embedding_dimension is the sentence-transformers >= 5.4 name.
        getter = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        dim = getter()
        if not dim:
            # Some modules do not declare their width; measure it on one text.
            dim = int(np.asarray(model.encode(["dimension probe"])).shape[1])
        self.dim_ = int(dim)
        return self

    def load_model(self, settings):
        return _load(self.name_, self.ref_, settings.device, reloading=True)

    def export_model(self, device="cpu"):
        """The SentenceTransformer itself: the caller's instance, or loaded from
        ``ref_`` on ``device`` (offline with ``HF_HUB_OFFLINE=1``)."""
        if self.ref_ is None:
            return self.model
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(self.ref_, device=device)

    def model_fingerprint(self, model):
        return st_fingerprint(model)

    def prompt(self, role, prompts):
        if role is not None and role in prompts:
            return prompts[role]
        configured = getattr(self._model, "prompts", None) or {}
        if role is None:
            default = getattr(self._model, "default_prompt_name", None)
            return configured.get(default, "") if default else ""
        for candidate in _PROMPT_CANDIDATES[role]:
            if candidate in configured:
                return configured[candidate]
        return ""

    def cache_parts(self, role, prompt, settings):
        model = self.loaded(settings)
        length = settings.max_seq_length or getattr(model, "max_seq_length", None)
        # The task (query/document) can route texts through different modules.
        fingerprint = self.cache_fingerprint(settings)
        return (self.kind, fingerprint, prompt, str(role), str(length))

    def encode(self, texts, role, prompt, settings):
        model = self.loaded(settings)
        encode = {
            None: model.encode,
            "query": model.encode_query,
            "document": model.encode_document,
        }[role]
        kwargs = {}
        if settings.device is not None:
            kwargs["device"] = settings.device
        with _model_lock(model), _max_seq_length(model, settings.max_seq_length):
            values = encode(
                texts,
                prompt=prompt,
                batch_size=settings.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=False,
                **kwargs,
            )
        return as_float32(values, self.name_)
