"""model2vec static embedding models as ConcatEmbedder members."""

import hashlib
import json
import os
import sys

import numpy as np

from skfusion.members.base import (
    Member,
    as_float32,
    normalized_reference,
    reference_name,
)

# is_static_model serves this package (as_member) only.
__all__ = ["StaticModelMember"]

# What a StaticModel is rebuilt from (plain types and arrays: skops can persist it).
_STATE_KEY = "skfusion-static-model"


def is_static_model(obj):
    """Whether ``obj`` is a model2vec ``StaticModel`` (without importing model2vec)."""
    m2v = sys.modules.get("model2vec")
    return m2v is not None and isinstance(obj, m2v.StaticModel)


def _fingerprint(model):
    h = hashlib.blake2b(digest_size=16)
    for part in (model.embedding, model.weights, model.token_mapping):
        if part is None:
            h.update(b"none")
            continue
        part = np.ascontiguousarray(part)
        h.update(f"{part.dtype}|{part.shape}".encode())
        h.update(part.view(np.uint8).reshape(-1))
    h.update(json.dumps(json.loads(model.tokenizer.to_str()), sort_keys=True).encode())
    h.update(f"normalize={model.normalize}|max_length={model.max_length}".encode())
    return h.hexdigest()


def _to_plain(model):
    return {
        _STATE_KEY: 1,
        "vectors": np.asarray(model.embedding),
        "tokenizer": model.tokenizer.to_str(),
        "config": json.loads(json.dumps(dict(model.config), default=str)),
        "normalize": bool(model.normalize),
        "max_length": model.max_length,
        "base_model_name": model.base_model_name,
        "language": model.language,
        "weights": model.weights,
        "token_mapping": model.token_mapping,
    }


def _from_plain(state):
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    kwargs = {k: v for k, v in state.items() if k != _STATE_KEY}
    kwargs["tokenizer"] = Tokenizer.from_str(kwargs["tokenizer"])
    return StaticModel(**kwargs)


def _is_plain(value):
    return isinstance(value, dict) and _STATE_KEY in value


class StaticModelMember(Member):
    """A model2vec ``StaticModel``: by local path or hub name (by reference) or instance.

    Parameters
    ----------
    model : str, path-like or model2vec.StaticModel
        A local directory or Hugging Face model id (e.g.
        ``"minishlab/potion-base-8M"``), loaded with
        ``StaticModel.from_pretrained`` in ``fit`` and pickled by reference, or an
        instance, pickled by value as its vectors, tokenizer JSON and configuration
        (plain types and numpy arrays).

    Notes
    -----
    Static models have no prompts of their own; the embedder's ``prompts`` entry
    for the member is prepended to the text. ``max_seq_length`` is passed to
    ``encode`` per call (the model is never modified). The fingerprint hashes the
    vectors, tokenizer and normalisation; an instance is fingerprinted again before
    each cached transform, so changing it in place never serves stale vectors.

    Examples
    --------
    >>> from skfusion.members import StaticModelMember
    >>> StaticModelMember("minishlab/potion-base-8M")
    StaticModelMember(model='minishlab/potion-base-8M')
    """

    kind = "model2vec"
    holds_caller_model = True  # an instance is used as is

    def __init__(self, model):
        self.model = model

    def default_name(self):
        if is_static_model(self.model):
            base = self.model.base_model_name
            return reference_name(base) if base else "staticmodel"
        return reference_name(self.model)

    def fit_member(self, name, texts, settings):
        self.start(name)
        if is_static_model(self.model):
            model = self.model
        else:
            self.ref_ = normalized_reference(self.model)
            model = self.load_model(settings)
        self._model = model
        self.fingerprint_ = self._current_fingerprint = _fingerprint(model)
        self.dim_ = int(model.dim)
        return self

    def export_model(self, device="cpu"):
        """A folder given by path loads as a SentenceTransformer (a StaticEmbedding
        model); an in-memory model2vec ``StaticModel`` has no such form: refused."""
        if self.ref_ is None:
            return super().export_model(device)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(self.ref_, device=device)

    def load_model(self, settings):
        from model2vec import StaticModel

        try:
            # force_download=False: use the local Hugging Face cache when offline.
            return StaticModel.from_pretrained(self.ref_, force_download=False)
        except Exception as exc:
            raise OSError(
                f"ConcatEmbedder member {self.name_!r}: cannot load a model2vec "
                f"StaticModel from {self.ref_!r} (local directory exists: "
                f"{os.path.isdir(self.ref_)}): {type(exc).__name__}: {exc}. A fitted "
                "embedder stores this member by reference; make the model available "
                "there again or refit."
            ) from exc

    def model_fingerprint(self, model):
        return _fingerprint(model)

    def cache_parts(self, role, prompt, settings):
        model = self.loaded(settings)
        length = settings.max_seq_length or model.max_length
        return (self.kind, self.cache_fingerprint(settings), prompt, str(length))

    def encode(self, texts, role, prompt, settings):
        model = self.loaded(settings)
        length = settings.max_seq_length or model.max_length
        values = model.encode(
            self.with_prompt(texts, prompt),
            max_length=length,
            batch_size=max(settings.batch_size, 1024),
            use_multiprocessing=False,
        )
        return as_float32(values, self.name_)

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never edit the live __dict__
        if getattr(self, "ref_", None) is None and is_static_model(self.model):
            plain = _to_plain(self.model)
            state["model"] = plain
            if state.get("_model") is self.model:
                state["_model"] = plain
        return state

    def __setstate__(self, state):
        if _is_plain(state.get("model")):
            model = _from_plain(state["model"])
            if _is_plain(state.get("_model")):
                state["_model"] = model
            state["model"] = model
        super().__setstate__(state)
