"""Random-projection locality-sensitive hashing: sign bits of a Gaussian projection.

:class:`RandomProjectionLSH` is the paper's ``LSH_n`` (section 5.4): project onto
``n_bits`` random Gaussian directions and keep the sign of each, so that the fraction
of differing bits between two rows estimates the angle between them (Charikar's
SimHash). Bits are packed eight per byte for storage and Hamming search.
"""

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from ._compat import Interval, StrOptions, _fit_context, validate_data
from .codes import BaseCodeTransformer

__all__ = ["RandomProjectionLSH"]


class RandomProjectionLSH(BaseCodeTransformer):
    """Sign bits of a seeded Gaussian random projection (SimHash), packed or not.

    Parameters
    ----------
    n_bits : int, default=1024
        Number of random directions, i.e. bits per row. Packed rows take
        ``ceil(n_bits / 8)`` bytes (the last byte zero-padded).
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
    bits_ : ndarray of shape (n_bits,), dtype int64
        Bits of every code (all 1).
    n_bits_ : int
        Bits per vector, as fitted.
    bytes_per_vector_ : int
        Bytes of one packed row, ``ceil(n_bits_ / 8)``.
    code_values_ : ndarray of shape (n_bits, 2), dtype float32
        -1 and +1: the inner product of two sign vectors is
        ``n_bits_ - 2 * Hamming distance``.
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
    ``transform`` works in row blocks, so memory does not grow with ``n_samples``
    beyond the output. float64 input is projected in
    float64 (with the float32 directions up-cast), float32 input in float32; bits of
    values extremely close to a threshold may therefore differ between the two.
    ``thresholds_`` are float32, so for float64 input a value is compared against the
    float32 threshold. A projection that overflows (rows near the largest float32
    value) raises ``ValueError`` instead of giving arbitrary bits.

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

    symmetric_metric = "hamming"
    code_metrics = ("hamming", "codes")
    _unpacked_dtype = bool

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
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        rng = check_random_state(self.random_state)
        self.projection_ = rng.standard_normal((X.shape[1], self.n_bits)).astype(np.float32)
        if self.threshold == "median":
            # In X's dtype, as transform projects (float64 values beyond float32's
            # range made the float32 projection inf and every median NaN).
            proj = self._project(X, "fit")
            with np.errstate(over="ignore", under="ignore"):
                self.thresholds_ = np.median(proj, axis=0).astype(np.float32)
            # thresholds_ is float32: medians of X's scale must fit it (not inf, not
            # flushed to zero).
            peak = float(np.abs(X).max(initial=0.0))
            flushed = 0 < peak < float(np.finfo(np.float32).smallest_subnormal) / 2
            if not np.isfinite(self.thresholds_).all() or flushed:
                raise ValueError(
                    f"RandomProjectionLSH(threshold='median'): X has values of magnitude "
                    f"up to {peak:.3g}, whose projections' medians float32 cannot hold "
                    "(range about 1.4e-45 to 3.4e38), and thresholds_ is float32; "
                    "rescale X (e.g. L2-normalise its rows with "
                    "sklearn.preprocessing.normalize) first, or use threshold='zero'."
                )
        else:
            self.thresholds_ = np.zeros(self.n_bits, dtype=np.float32)
        self._set_code_layout(*self._fitted_layout())
        return self

    def _fitted_layout(self):
        """One bit per direction, standing for -1 or +1."""
        n_bits = self.projection_.shape[1]
        return np.ones(n_bits), np.tile([-1.0, 1.0], (n_bits, 1))

    def _block_rows(self, n_features):
        # About 16 MiB of projected float32 values per block: large enough for an
        # efficient matrix product, bounded whatever n_samples.
        return max(1, (1 << 22) // max(self.n_bits_, 1))

    def _project(self, X, method):
        with np.errstate(over="ignore", invalid="ignore"):
            proj = X @ self.projection_.astype(X.dtype, copy=False)
        if not np.isfinite(proj).all():
            # The sign of inf - inf (NaN) is no bit at all: never guess one.
            row = int(np.flatnonzero(~np.isfinite(proj).all(axis=1))[0])
            raise ValueError(
                f"RandomProjectionLSH.{method}: the projection of X row {row} "
                f"(largest magnitude {float(np.abs(X[row]).max()):.3g}) overflows "
                f"{X.dtype}; rescale X (e.g. L2-normalise its rows with "
                "sklearn.preprocessing.normalize) or pass float64."
            )
        return proj

    def _encode(self, X):
        return self._project(X, "transform") > self.thresholds_.astype(X.dtype, copy=False)
