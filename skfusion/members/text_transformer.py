"""scikit-learn text transformers as ConcatEmbedder members."""

import joblib
from sklearn.base import clone

from skfusion.members.base import Member, as_float32

# is_text_transformer and stable_state serve this package (as_member) only.
__all__ = ["SklearnMember"]


def is_text_transformer(obj):
    """Whether ``obj`` looks like a scikit-learn transformer (fit, transform, params)."""
    return (
        hasattr(obj, "fit")
        and hasattr(obj, "transform")
        and hasattr(obj, "get_params")
        and not isinstance(obj, type)
    )


def stable_state(obj):
    """``obj`` with estimators replaced by (class, attributes), minus object ids.

    scikit-learn estimators cache object identities as state (``CountVectorizer``
    stores ``_stop_words_id = id(self.stop_words)``), which differ in every process;
    hashing them would give a refit member a new fingerprint in every process, and
    the cache would never hit across runs or ``GridSearchCV`` workers.

    Parameters
    ----------
    obj : object
        An estimator, or a list, tuple or dict holding some.

    Returns
    -------
    object
        Plain tuples, lists and dicts (estimators as ``(class path, attributes)``),
        for :func:`joblib.hash`.
    """
    if hasattr(obj, "get_params") and hasattr(obj, "__dict__"):
        cls = type(obj)
        return (
            f"{cls.__module__}.{cls.__qualname__}",
            {
                key: stable_state(value)
                for key, value in sorted(vars(obj).items())
                if not (key.startswith("_") and key.endswith("_id") and type(value) is int)
            },
        )
    if isinstance(obj, (list, tuple)):
        return type(obj)(map(stable_state, obj))
    if isinstance(obj, dict):
        return {key: stable_state(value) for key, value in obj.items()}
    return obj


class SklearnMember(Member):
    """A scikit-learn text transformer, cloned and fit on the embedder's fit passages.

    Parameters
    ----------
    estimator : estimator
        Anything with ``fit`` / ``transform`` on a list of str and dense or sparse
        output, e.g. ``make_pipeline(TfidfVectorizer(), TruncatedSVD(256))``.

    Notes
    -----
    Gets a prompt only when the embedder's ``prompts`` names one for it (prepended
    to the text). The fingerprint is ``joblib.hash`` of its parameters and fitted
    state, without the object ids some estimators cache, so it is the same in every
    process. Pickled by value (a fitted estimator: numpy arrays and plain types).

    Examples
    --------
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion.members import SklearnMember
    >>> from skfusion.members.base import EncodeSettings
    >>> member = SklearnMember(TfidfVectorizer())
    >>> member.fit_member("tfidf", ["apt vim", "vim git"], EncodeSettings()).dim_
    3
    """

    kind = "sklearn"
    needs_unicode = False

    def __init__(self, estimator):
        self.estimator = estimator

    def default_name(self):
        return type(self.estimator).__name__.lower()

    def fit_member(self, name, texts, settings):
        self.start(name)
        if not texts:
            raise ValueError(
                f"fit got no texts, but member {name!r} is a scikit-learn transformer "
                "that must be fit on passages; pass the passages to fit."
            )
        estimator = clone(self.estimator)
        try:
            estimator.fit(texts)
            probe = as_float32(estimator.transform(texts[:1]), name)
        except Exception as exc:
            raise ValueError(
                f"ConcatEmbedder member {name!r} ({type(self.estimator).__name__}) "
                f"failed to fit/transform a list of str: {type(exc).__name__}: {exc}"
            ) from exc
        self._model = estimator
        self.fingerprint_ = joblib.hash(stable_state(estimator))
        self.dim_ = int(probe.shape[1])
        return self

    def encode(self, texts, role, prompt, settings):
        return as_float32(
            self._model.transform(self.with_prompt(texts, prompt)), self.name_
        )
