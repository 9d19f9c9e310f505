"""Validation of text input shared by skfusion's text estimators and the CLI.

:func:`check_texts` accepts a list, tuple, 1-D numpy array or pandas Series of ``str``
and returns a plain ``list[str]``. Nothing is coerced: ``None``, NaN, bytes, numbers or
any other non-``str`` element raises a ``ValueError`` that names its position, and a bare
string or a 2-D container is rejected with the fix spelled out.
"""

import math
import sys
from collections.abc import Sequence

import numpy as np

__all__ = ["check_texts", "check_unicode"]


def _describe(value):
    if value is None:
        return "None"
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return "NaN"
    if type(value).__name__ == "NAType":
        return "pandas.NA"
    return f"{value!r:.60} (type {type(value).__name__})"


def _has_pandas():
    # Only look at pandas when the caller already imported it: a pandas object
    # cannot exist otherwise, and importing it costs ~0.5 s.
    return "pandas" in sys.modules


def _container_name(X):
    return f"{type(X).__module__}.{type(X).__qualname__}".replace("builtins.", "")


def check_texts(X, *, input_name="X"):
    """Validate a collection of texts and return it as a list of ``str``.

    Parameters
    ----------
    X : list, tuple, numpy.ndarray of shape (n_samples,) or pandas.Series of str
        The texts. Empty strings are valid texts; an empty container is valid and
        gives an empty list.
    input_name : str, default="X"
        Name used for ``X`` in error messages.

    Returns
    -------
    texts : list of str
        The texts, in order. ``numpy.str_`` elements are returned as they are (they
        are ``str`` subclasses).

    Raises
    ------
    ValueError
        If ``X`` is a single string, a 2-D container, or holds an element that is not
        a ``str`` (``None``, NaN, ``pandas.NA``, bytes, numbers, ...). The message names
        the first offending position.
    TypeError
        If ``X`` is not one of the accepted container types.

    Examples
    --------
    >>> from skfusion._text import check_texts
    >>> check_texts(("a", "", "b"))
    ['a', '', 'b']
    >>> check_texts(["a", None])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: X[1] is None; every element of X must be a str. Drop or fill ...
    """
    if isinstance(X, (str, bytes)):
        raise ValueError(
            f"{input_name} must be a collection of texts, got a single "
            f"{type(X).__name__}. Wrap it in a list: [{input_name}]."
        )
    if _has_pandas():
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            raise ValueError(
                f"{input_name} is a pandas DataFrame with {X.shape[1]} column(s); pass "
                "one text column as a Series instead, e.g. df['text'] (or select it "
                "with a ColumnTransformer using a column name, not a list)."
            )
        if isinstance(X, pd.Series):
            X = X.to_numpy(dtype=object)
    if isinstance(X, np.ndarray):
        if X.ndim != 1:
            raise ValueError(
                f"{input_name} must be 1-D (one text per row), got an array of shape "
                f"{X.shape}. For a single column use X.ravel() or X[:, 0]."
            )
        if X.dtype.kind not in "OU":
            raise ValueError(
                f"{input_name} must hold str, got a numpy array of dtype {X.dtype}."
            )
        texts = X.tolist()
    elif isinstance(X, (list, tuple)):
        texts = list(X)
    elif isinstance(X, Sequence) or hasattr(X, "__array__"):
        raise TypeError(
            f"{input_name} must be a list, tuple, 1-D numpy array or pandas Series of "
            f"str, got {_container_name(X)}. Convert it with list({input_name})."
        )
    else:
        raise TypeError(
            f"{input_name} must be a list, tuple, 1-D numpy array or pandas Series of "
            f"str, got {_container_name(X)}."
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            what = _describe(text)
            fix = (
                'Drop or fill missing texts first (e.g. series.fillna("")).'
                if what in ("None", "NaN", "pandas.NA")
                else "Convert it to str yourself if that is what you mean."
            )
            raise ValueError(
                f"{input_name}[{i}] is {what}; every element of {input_name} must be "
                f"a str. {fix}"
            )
    return texts


def check_unicode(texts, *, input_name="X", user="a model"):
    """Raise if a text is not valid Unicode (holds a lone surrogate such as ``"\\ud800"``).

    Python strings may hold lone surrogates (from ``errors="surrogateescape"`` or
    broken JSON); they cannot be encoded as UTF-8, so tokenizers and HTTP clients
    fail on them with errors that do not say which text.

    Parameters
    ----------
    texts : list of str
        Texts, as returned by :func:`check_texts`.
    input_name : str, default="X"
        Name used for the texts in error messages.
    user : str, default="a model"
        What needs valid Unicode, for the error message.

    Raises
    ------
    ValueError
        Naming the first offending text's position and the character's offset.

    Examples
    --------
    >>> from skfusion._text import check_unicode
    >>> check_unicode(["ok", "caf\\u00e9"])
    >>> check_unicode(["ok", "a\\ud800"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: X[1] holds a lone surrogate U+D800 at character 1; ...
    """
    for i, text in enumerate(texts):
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{input_name}[{i}] holds a lone surrogate U+{ord(text[exc.start]):04X} "
                f"at character {exc.start}; it is not valid Unicode and {user} cannot "
                "encode it. Fix how the text was decoded, or replace such characters, "
                'e.g. text.encode("utf-8", "replace").decode().'
            ) from None
