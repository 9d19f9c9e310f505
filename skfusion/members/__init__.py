"""Members of a :class:`~skfusion.ConcatEmbedder`: one adapter class per kind of model.

==========================  ================================================  ==========
kind                        given as                                          pickled
==========================  ================================================  ==========
sentence-transformers       name or path (str), ``SentenceTransformer``       reference
                                                                              / value
scikit-learn transformer    any estimator with ``fit``/``transform`` on str   value
model2vec                   ``StaticModelMember(path or hub name)``,          reference
                            a ``StaticModel`` instance                        / value
encoder object / callables  an object with ``encode_query`` and               reference
                            ``encode_document``, ``EncoderMember(...)``       / value
hosted model (HTTP)         ``OpenAIEmbeddingsMember(model, base_url=...)``   parameters
==========================  ================================================  ==========

:func:`as_member` turns an entry of ``models`` into its adapter; every adapter
implements the :class:`Member` protocol (load, fingerprint, prompt, encode, pickle).
"""

import os

from skfusion.members.base import (
    EncodeSettings,
    Member,
    MemberOutputError,
    UnsupportedMemberError,
    as_float32,
)
from skfusion.members.encoder import EncoderMember, has_encode_methods
from skfusion.members.remote import EmbeddingServiceError, OpenAIEmbeddingsMember
from skfusion.members.sbert import SentenceTransformerMember, is_sentence_transformer
from skfusion.members.static import StaticModelMember, is_static_model
from skfusion.members.text_transformer import SklearnMember, is_text_transformer

__all__ = [
    "EmbeddingServiceError",
    "EncodeSettings",
    "EncoderMember",
    "Member",
    "MemberOutputError",
    "OpenAIEmbeddingsMember",
    "SentenceTransformerMember",
    "SklearnMember",
    "StaticModelMember",
    "UnsupportedMemberError",
    "as_float32",
    "as_member",
]


def as_member(obj, where="member"):
    """The :class:`Member` adapter for an entry of ``ConcatEmbedder(models=...)``.

    Parameters
    ----------
    obj : object
        A :class:`Member` (returned as is), a sentence-transformers name or path
        (str), a ``SentenceTransformer``, a model2vec ``StaticModel``, an object with
        ``encode_query`` and ``encode_document``, or a scikit-learn text transformer.
    where : str, default="member"
        How to name ``obj`` in errors (e.g. ``"models[2]"``).

    Returns
    -------
    Member

    Examples
    --------
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion.members import as_member
    >>> as_member(TfidfVectorizer())
    SklearnMember(estimator=TfidfVectorizer())
    >>> as_member("sentence-transformers/all-MiniLM-L6-v2")
    SentenceTransformerMember(model='sentence-transformers/all-MiniLM-L6-v2')
    """
    if isinstance(obj, Member):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        if not os.fspath(obj):
            raise ValueError(f"{where} is an empty string; give a model name or path.")
        return SentenceTransformerMember(obj)
    if is_sentence_transformer(obj):
        return SentenceTransformerMember(obj)
    if is_static_model(obj):
        return StaticModelMember(obj)
    if has_encode_methods(obj):
        return EncoderMember(obj)
    if is_text_transformer(obj):
        return SklearnMember(obj)
    raise ValueError(
        f"{where} must be a sentence-transformers model name or local path (str), a "
        "SentenceTransformer or model2vec StaticModel instance, an object with "
        "encode_query and encode_document, a skfusion.members adapter (e.g. "
        "OpenAIEmbeddingsMember, EncoderMember), or a scikit-learn text transformer "
        "with fit and transform (e.g. make_pipeline(TfidfVectorizer(), "
        f"TruncatedSVD(256))); got {type(obj).__name__}."
    )
