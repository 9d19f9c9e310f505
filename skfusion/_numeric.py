"""Scale-safe numeric helpers shared by the embedder and the decoder.

A Euclidean norm squares its inputs: in float32 the squares overflow above about
1.8e19 and flush to zero below about 1e-19 (float64: 1.3e154 and 1.5e-154), so a
plain ``x / np.linalg.norm(x)`` turns rows of such a scale into zeros or NaN, or
leaves them unnormalised, with at most a RuntimeWarning.
"""

import numpy as np

__all__ = ["normalize_rows"]


def normalize_rows(X):
    """Scale the rows of a finite float array to unit L2 norm, in place, at any scale.

    Rows whose norm over- or underflows are first divided by their largest
    magnitude (which brings them into ``[-1, 1]`` without changing their direction),
    then normalised; other rows are divided by their norm as usual, so the result is
    the same as ``X / np.linalg.norm(X, axis=1, keepdims=True)`` wherever that is
    right. All-zero rows stay zero.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_columns), float32 or float64
        Finite values (a view, e.g. a column block of a larger array, is fine).

    Returns
    -------
    X : ndarray
        The same array.
    """
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(X, axis=1)
    # Below tiny ** 0.25 the squares of a row's entries approach the subnormal range.
    odd = ~np.isfinite(norms) | (norms < np.finfo(X.dtype).tiny ** 0.25)
    if odd.any():
        rows = X[odd]
        peak = np.abs(rows).max(axis=1, keepdims=True)
        np.divide(rows, peak, out=rows, where=peak > 0)
        X[odd] = rows
        norms[odd] = np.linalg.norm(rows, axis=1)
    norms = norms[:, None]
    np.divide(X, norms, out=X, where=norms > 0)
    return X
