"""Random-projection locality-sensitive hashing: sign bits of a Gaussian projection.

:class:`RandomProjectionLSH` is the paper's ``LSH_n`` (section 5.4): project onto
``n_bits`` random Gaussian directions and keep the sign of each, so that the fraction
of differing bits between two rows estimates the angle between them (Charikar's
SimHash). Bits are packed eight per byte for storage and Hamming search.
"""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, StrOptions, _fit_context, validate_data

__all__ = ["RandomProjectionLSH"]

# Projected values per block (16 MiB of float32): bounds memory whatever n_samples.
_BLOCK_VALUES = 1 << 22


class RandomProjectionLSH(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Sign bits of a seeded Gaussian random projection (SimHash), packed or not.

    Parameters
    ----------
    n_bits : int, default=1024
        Number of random directions, i.e. bits per row. Must be a multiple of 8 when
        ``pack=True``.
    random_state : int, RandomState instance or None, default=None
        Draws the projection; an int gives the same bits on every fit.
    pack : bool, default=True
        If True, ``transform`` returns ``n_bits / 8`` uint8 bytes per row
        (``numpy.packbits`` order, first bit = most significant); if False, a bool
        array with one column per bit.
    threshold : {"zero", "median"}, default="zero"
        "zero" keeps the sign of each projection (the classical SimHash, angle
        preserving). "median" learns each projection's median on the fitted rows and
        compares against it, so every bit is balanced (half ones) on that data: useful
        when the rows are not centred.

    Attributes
    ----------
    projection_ : ndarray of shape (n_features_in_, n_bits), dtype float32
        The Gaussian directions (i.i.d. N(0, 1) entries).
    thresholds_ : ndarray of shape (n_bits,), dtype float32
        Per-bit offsets: zeros for ``threshold="zero"``, the fitted medians for
        ``threshold="median"``.
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :meth:`fit`, when ``X`` has string column names.

    See Also
    --------
    skfusion.quantize.PercentileQuantizer : b-bit percentile codes per dimension.
    skfusion.search.search : Exact Hamming top-k over the packed bits.
    sklearn.random_projection.GaussianRandomProjection : The projection alone.

    Notes
    -----
    ``transform`` works in row blocks of about 16 MiB of projected values, so memory
    does not grow with ``n_samples`` beyond the output. float64 input is projected in
    float64 (with the float32 directions up-cast), float32 input in float32; bits of
    values extremely close to a threshold may therefore differ between the two.
    ``thresholds_`` are float32, so for float64 input a value is compared against the
    float32 threshold.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.lsh import RandomProjectionLSH
    >>> Z = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    >>> lsh = RandomProjectionLSH(n_bits=64, random_state=0).fit(Z)
    >>> lsh.transform(Z).shape, lsh.transform(Z).dtype
    ((5, 8), dtype('uint8'))
    >>> lsh.set_params(pack=False).fit(Z).transform(Z).shape
    (5, 64)
    """

    _parameter_constraints = {
        "n_bits": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "pack": ["boolean"],
        "threshold": [StrOptions({"zero", "median"})],
    }

    def __init__(self, n_bits=1024, *, random_state=None, pack=True, threshold="zero"):
        self.n_bits = n_bits
        self.random_state = random_state
        self.pack = pack
        self.threshold = threshold

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Output is packed uint8 (or bool) bits whatever the input float dtype.
        tags.transformer_tags.preserves_dtype = []
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Draw the projection (and, for ``threshold="median"``, learn bit medians).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite float rows; only the width is used unless ``threshold="median"``.
        y : None
            Ignored. Present for API consistency by convention.

        Returns
        -------
        self : RandomProjectionLSH
            The fitted hasher.
        """
        if self.pack and self.n_bits % 8:
            raise ValueError(
                f"n_bits must be a multiple of 8 when pack=True, got n_bits="
                f"{self.n_bits}; use n_bits={8 * -(-self.n_bits // 8)} or pack=False."
            )
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        rng = check_random_state(self.random_state)
        self.projection_ = rng.standard_normal((X.shape[1], self.n_bits)).astype(np.float32)
        if self.threshold == "median":
            proj = X.astype(np.float32, copy=False) @ self.projection_
            self.thresholds_ = np.median(proj, axis=0).astype(np.float32)
        else:
            self.thresholds_ = np.zeros(self.n_bits, dtype=np.float32)
        self._n_features_out = self.n_bits // 8 if self.pack else self.n_bits
        return self

    def transform(self, X):
        """Hash rows into sign bits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite float rows with the fitted width.

        Returns
        -------
        bits : ndarray
            (n_samples, n_bits / 8) uint8 when ``pack=True``, else (n_samples,
            n_bits) bool; bit ``k`` is ``X @ projection_[:, k] > thresholds_[k]``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if self.pack and self.n_bits % 8:
            raise ValueError(
                f"n_bits must be a multiple of 8 when pack=True, got {self.n_bits}."
            )
        n = X.shape[0]
        proj = self.projection_.astype(X.dtype, copy=False)
        thr = self.thresholds_.astype(X.dtype, copy=False)
        width = self.n_bits // 8 if self.pack else self.n_bits
        out = np.empty((n, width), dtype=np.uint8 if self.pack else bool)
        step = max(1, _BLOCK_VALUES // self.n_bits)
        buf = np.empty((min(step, n), self.n_bits), dtype=bool)
        for start in range(0, n, step):
            block = X[start : start + step] @ proj
            bits = np.greater(block, thr, out=buf[: block.shape[0]])
            if self.pack:
                out[start : start + step] = np.packbits(bits, axis=1)
            else:
                out[start : start + step] = bits
        return out
