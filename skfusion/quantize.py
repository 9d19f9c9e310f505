"""Per-dimension percentile quantization of embeddings into b-bit codes.

:class:`PercentileQuantizer` implements the paper's scalar quantizer (section 3.3): on a
calibration set it learns, for every output dimension ``j``, the ``2**b - 1`` empirical
percentiles ``tau[j, k] = Percentile(H[:, j], 100 k / 2**b)``; a new value ``h`` gets
the code ``q = sum_k 1[h > tau[j, k]]``, so every bucket holds about ``1 / 2**b`` of the
calibration mass. :func:`pack_codes` and :func:`unpack_codes` (from
:mod:`skfusion.codes`) store ``b``-bit codes in ``ceil(d * b / 8)`` bytes per row.
"""

from numbers import Integral

import numpy as np

from ._compat import Interval, _fit_context
from .codes import BaseQuantizer, pack_codes, unpack_codes

__all__ = ["PercentileQuantizer", "pack_codes", "unpack_codes"]


class PercentileQuantizer(BaseQuantizer):
    """Quantize every dimension into ``2**bits`` equal-mass buckets (percentile codes).

    Implements the paper's offline calibration and online quantization (section 3.3):
    ``fit`` learns per-dimension percentiles on a calibration set; ``transform`` maps
    new rows to uint8 codes ``q[i, j] = sum_k 1[H[i, j] > thresholds_[j, k]]``.

    Parameters
    ----------
    bits : int, default=2
        Bits per dimension, 1..8; each dimension gets ``2**bits`` buckets.
    subsample : int or None, default=100_000
        Calibrate on at most this many rows, drawn without replacement with
        ``random_state`` (the paper uses 100,000 reference passages). ``None`` uses
        every row. A ``numpy.memmap`` or a dask array is sampled before it is
        validated, so only the drawn rows are ever read (the same rows, and the same
        fit, as for the array in memory).
    pack : bool, default=False
        If True, ``transform`` returns the codes bit-packed into
        ``ceil(n_features * bits / 8)`` bytes per row (see :func:`pack_codes`), the
        storage format; if False, one uint8 code per dimension.
    random_state : int, RandomState instance or None, default=None
        Draws the calibration subsample when there are more than ``subsample`` rows.

    Attributes
    ----------
    thresholds_ : ndarray of shape (n_features_in_, 2**bits - 1), dtype float64
        Break-points ``tau[j, k]``, non-decreasing along ``k`` (linear interpolation
        between order statistics, ``numpy.percentile``'s default).
    bits_ : ndarray of shape (n_features_in_,), dtype int64
        Bits of every code (all ``bits``), as fitted.
    n_bits_ : int
        Bits per vector, ``n_features_in_ * bits``.
    bytes_per_vector_ : int
        Bytes of one packed row, ``ceil(n_bits_ / 8)``.
    code_values_ : ndarray of shape (n_features_in_, 2**bits), dtype float32
        Value of each code in the symmetric code similarity: the centred code
        ``code - (2**bits - 1) / 2``.
    bucket_values_ : ndarray of shape (n_features_in_, 2**bits), dtype float32
        Representative value of each bucket used by :meth:`inverse_transform`: the mean
        of the calibration values that fall in it; an empty bucket (possible with tied
        values) gets the midpoint of its interval.
    data_min_ : ndarray of shape (n_features_in_,), dtype float64
        Per-dimension minimum of the calibration rows (the paper's ``tau[j, 0]``).
    data_max_ : ndarray of shape (n_features_in_,), dtype float64
        Per-dimension maximum (the paper's ``tau[j, 2**b]``).
    std_ : ndarray of shape (n_features_in_,), dtype float32
        Per-dimension standard deviation of the calibration rows; percentile codes give
        every dimension the same spread, and ``std_ ** beta`` is the per-dimension
        weight that :func:`skfusion.search.spread_weights` derives from it.
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :meth:`fit`, when ``X`` has string column names.

    See Also
    --------
    skfusion.lsh.RandomProjectionLSH : Sign bits of a random projection.
    skfusion.search.search : Exact top-k search over codes (symmetric or asymmetric).
    sklearn.preprocessing.KBinsDiscretizer : The same buckets with
        ``strategy="quantile"``, per-column ``searchsorted`` and float output.

    Notes
    -----
    Ties and constant dimensions: a value equal to a break-point goes to the lower
    bucket (strict ``>``). If a dimension is constant on the calibration set, all its
    break-points equal that constant, so the constant itself codes as 0 and anything
    larger as ``2**bits - 1``; heavily tied dimensions likewise give unequal bucket
    masses, never NaN or an error.

    For float32 input the float64 break-points are rounded down to the nearest float32
    before comparing, which gives exactly the same codes as the float64 formula (for a
    float32 ``h`` and a float64 ``t``, ``h > t`` iff ``h > round_down_32(t)``) without
    up-casting the input.

    Calibrate on a calibration set, never on the batch being encoded: a single batch
    gives skewed break-points.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.quantize import PercentileQuantizer
    >>> rng = np.random.default_rng(0)
    >>> H = rng.standard_normal((1000, 4)).astype(np.float32)
    >>> q = PercentileQuantizer(bits=2).fit(H)
    >>> codes = q.transform(H)
    >>> codes.dtype, codes.shape
    (dtype('uint8'), (1000, 4))
    >>> np.bincount(codes[:, 0])
    array([250, 250, 250, 250])
    >>> PercentileQuantizer(bits=2, pack=True).fit(H).transform(H[:3]).shape
    (3, 1)
    """

    _parameter_constraints = {
        "bits": [Interval(Integral, 1, 8, closed="both")],
        "subsample": [Interval(Integral, 1, None, closed="left"), None],
        "pack": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, bits=2, *, subsample=100_000, pack=False, random_state=None):
        self.bits = bits
        self.subsample = subsample
        self.pack = pack
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn per-dimension percentile break-points on calibration rows ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Calibration rows (e.g. decoder outputs of reference passages); finite.
        y : None
            Ignored. Present for API consistency by convention.

        Returns
        -------
        self : PercentileQuantizer
            The fitted quantizer.
        """
        n_buckets = 1 << self.bits
        X64 = self._calibration_rows(
            X, n_buckets, f"PercentileQuantizer(bits={self.bits})", "bits"
        )
        d = X64.shape[1]
        q = 100.0 * np.arange(1, n_buckets) / n_buckets
        self.thresholds_ = np.ascontiguousarray(np.percentile(X64, q, axis=0).T)
        self.data_min_ = X64.min(axis=0)
        self.data_max_ = X64.max(axis=0)
        self.std_ = X64.std(axis=0).astype(np.float32)
        centred = np.arange(n_buckets) - (n_buckets - 1) / 2.0
        self._set_code_layout(np.full(d, self.bits), np.tile(centred, (d, 1)))
        edges = np.column_stack([self.data_min_, self.thresholds_, self.data_max_])
        mid = 0.5 * (edges[:, :-1] + edges[:, 1:])
        self.bucket_values_ = self._bucket_means(X64, mid)
        return self
