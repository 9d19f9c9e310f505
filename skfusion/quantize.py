"""Per-dimension percentile quantization of embeddings into b-bit codes.

:class:`PercentileQuantizer` implements the paper's scalar quantizer (section 3.3): on a
calibration set it learns, for every output dimension ``j``, the ``2**b - 1`` empirical
percentiles ``tau[j, k] = Percentile(H[:, j], 100 k / 2**b)``; a new value ``h`` gets
the code ``q = sum_k 1[h > tau[j, k]]``, so every bucket holds about ``1 / 2**b`` of the
calibration mass. :func:`pack_codes` and :func:`unpack_codes` store ``b``-bit codes in
``ceil(d * b / 8)`` bytes per row.
"""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, _fit_context, validate_data

__all__ = ["PercentileQuantizer", "pack_codes", "unpack_codes"]

# About 256K input values per block: the block and its uint8 codes stay in L2 cache
# while the 2**b - 1 compare-and-accumulate passes run over it.
_BLOCK_VALUES = 1 << 18


def _calibration_rows(X, n_buckets, subsample, random_state, setting, param):
    """Float64 calibration rows: at least ``n_buckets``, at most ``subsample`` (seeded).

    Shared by the quantizers so both refuse too few rows the same way and draw the same
    subsample for the same ``random_state``.
    """
    n = X.shape[0]
    if n < n_buckets:
        raise ValueError(
            f"{setting} needs at least 2**{param} = {n_buckets} calibration rows, got "
            f"n_samples={n}. Pass more rows or lower {param}."
        )
    if subsample is not None and n > subsample:
        rng = check_random_state(random_state)
        X = X[np.sort(rng.choice(n, size=subsample, replace=False))]
    return np.asarray(X, dtype=np.float64)


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, Integral) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}.")
    return int(bits)


def _packed_width(n_features, bits):
    return -(-n_features * bits // 8)


def pack_codes(codes, bits):
    """Pack ``bits``-bit codes into ``ceil(d * bits / 8)`` bytes per row.

    Each code contributes its ``bits`` low bits, most significant first, to one
    bit stream per row; the stream is zero-padded to whole bytes.

    Parameters
    ----------
    codes : array-like of shape (n_samples, d), integer dtype
        Codes in ``0 .. 2**bits - 1``.
    bits : int
        Bits per code, 1..8.

    Returns
    -------
    packed : ndarray of shape (n_samples, ceil(d * bits / 8)), dtype uint8

    See Also
    --------
    unpack_codes : The inverse.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.quantize import pack_codes, unpack_codes
    >>> codes = np.array([[0, 1, 2, 3, 3]], dtype=np.uint8)
    >>> pack_codes(codes, 2)
    array([[ 27, 192]], dtype=uint8)
    >>> unpack_codes(pack_codes(codes, 2), 2, 5)
    array([[0, 1, 2, 3, 3]], dtype=uint8)
    """
    bits = _check_bits(bits)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D array, got shape {codes.shape}.")
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}.")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(
            f"codes must lie in 0..{(1 << bits) - 1} for bits={bits}; got values in "
            f"{codes.min()}..{codes.max()}."
        )
    return _pack(codes.astype(np.uint8, copy=False), bits)


def _percentile_codes(X, thresholds):
    """Codes ``sum_k 1[X[:, j] > thresholds[j, k]]`` as uint8 (compare-and-accumulate).

    ``thresholds`` is a float64 ``(d, n_thresholds)`` array; ``+inf`` entries are never
    exceeded, so rows padded with them give fewer buckets.
    """
    n, d = X.shape
    thr = thresholds
    if X.dtype == np.float32:
        t32 = thr.astype(np.float32)
        # Round down so that float32 `x > t32` equals float64 `x > thr` exactly.
        t32 = np.where(t32 > thr, np.nextafter(t32, np.float32(-np.inf)), t32)
        thr = t32
    thr_t = np.ascontiguousarray(thr.T)  # (n_thresholds, d): one row per pass
    out = np.empty((n, d), dtype=np.uint8)
    step = max(1, _BLOCK_VALUES // max(d, 1))
    buf = np.empty((min(step, n), d), dtype=bool)
    buf_u8 = buf.view(np.uint8)
    for start in range(0, n, step):
        xb = X[start : start + step]
        ob = out[start : start + step]
        m = xb.shape[0]
        np.greater(xb, thr_t[0], out=ob.view(bool))
        for k in range(1, thr_t.shape[0]):
            np.greater(xb, thr_t[k], out=buf[:m])
            np.add(ob, buf_u8[:m], out=ob)
    return out


def _pack(codes, bits):
    """Pack validated uint8 codes (no checks)."""
    n, d = codes.shape
    if bits == 8:
        return np.ascontiguousarray(codes)
    if 8 % bits == 0:
        # 1, 2 or 4 bits: whole codes per byte, combined with shifts (no bit planes).
        per = 8 // bits
        if d % per:
            codes = np.concatenate(
                [codes, np.zeros((n, per - d % per), dtype=np.uint8)], axis=1
            )
        out = codes[:, 0::per] << np.uint8(8 - bits)
        for t in range(1, per):
            out |= codes[:, t::per] << np.uint8(8 - bits * (t + 1))
        return out
    # 3, 5, 6, 7 bits: 8 codes fill exactly `bits` bytes; build each group of 8 as
    # one big-endian integer and split it into bytes.
    if d % 8:
        codes = np.concatenate([codes, np.zeros((n, 8 - d % 8), dtype=np.uint8)], axis=1)
    v = np.zeros((n, codes.shape[1] // 8), dtype=np.uint64)
    for t in range(8):
        v |= codes[:, t::8].astype(np.uint64) << np.uint64(bits * (7 - t))
    out = np.empty((n, v.shape[1], bits), dtype=np.uint8)
    for r in range(bits):
        shifted = v >> np.uint64(8 * (bits - 1 - r))
        out[:, :, r] = (shifted & np.uint64(0xFF)).astype(np.uint8)
    return np.ascontiguousarray(
        out.reshape(n, v.shape[1] * bits)[:, : _packed_width(d, bits)]
    )


def unpack_codes(packed, bits, n_features):
    """Unpack rows written by :func:`pack_codes` back into uint8 codes.

    Parameters
    ----------
    packed : array-like of shape (n_samples, ceil(n_features * bits / 8)), dtype uint8
    bits : int
        Bits per code, 1..8.
    n_features : int
        Number of codes per row.

    Returns
    -------
    codes : ndarray of shape (n_samples, n_features), dtype uint8

    See Also
    --------
    pack_codes : The inverse.
    """
    bits = _check_bits(bits)
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise TypeError(
            f"packed must be a 2-D uint8 array, got shape {packed.shape} and dtype "
            f"{packed.dtype}."
        )
    width = _packed_width(n_features, bits)
    if packed.shape[1] != width:
        raise ValueError(
            f"packed rows must have ceil(n_features * bits / 8) = {width} bytes for "
            f"n_features={n_features}, bits={bits}; got {packed.shape[1]}."
        )
    if bits == 8:
        return np.ascontiguousarray(packed)
    n = packed.shape[0]
    stream = np.unpackbits(packed, axis=1, count=n_features * bits)
    planes = np.zeros((n, n_features, 8), dtype=np.uint8)
    planes[:, :, 8 - bits :] = stream.reshape(n, n_features, bits)
    return np.packbits(planes, axis=2)[:, :, 0]


class PercentileQuantizer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
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
        every row.
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Output is uint8 codes whatever the input float dtype.
        tags.transformer_tags.preserves_dtype = []
        return tags

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
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        n_buckets = 1 << self.bits
        X64 = _calibration_rows(
            X,
            n_buckets,
            self.subsample,
            self.random_state,
            f"PercentileQuantizer(bits={self.bits})",
            "bits",
        )
        q = 100.0 * np.arange(1, n_buckets) / n_buckets
        self.thresholds_ = np.ascontiguousarray(np.percentile(X64, q, axis=0).T)
        self.data_min_ = X64.min(axis=0)
        self.data_max_ = X64.max(axis=0)
        self.std_ = X64.std(axis=0).astype(np.float32)
        self.bucket_values_ = self._bucket_means(X64)
        self._n_features_out = (
            _packed_width(X.shape[1], self.bits) if self.pack else X.shape[1]
        )
        return self

    def _bucket_means(self, X64):
        n, d = X64.shape
        nb = 1 << self.bits
        codes = self._codes(X64)
        flat = (codes.astype(np.int64) + np.arange(d) * nb).ravel()
        counts = np.bincount(flat, minlength=d * nb).reshape(d, nb)
        sums = np.bincount(flat, weights=X64.ravel(), minlength=d * nb).reshape(d, nb)
        edges = np.column_stack([self.data_min_, self.thresholds_, self.data_max_])
        mid = 0.5 * (edges[:, :-1] + edges[:, 1:])
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), mid)
        return means.astype(np.float32)

    def _codes(self, X):
        """Unpacked codes of finite float rows ``X`` (compare-and-accumulate)."""
        return _percentile_codes(X, self.thresholds_)

    def transform(self, X):
        """Quantize rows into b-bit codes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite float rows with the fitted width.

        Returns
        -------
        codes : ndarray of dtype uint8
            Shape (n_samples, n_features) with one code in ``0 .. 2**bits - 1`` per
            dimension; with ``pack=True``, shape (n_samples, ceil(n_features * bits /
            8)) bit-packed rows.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if not self.pack:
            return self._codes(X)
        # Pack block by block so the codes are still in cache.
        out = np.empty((X.shape[0], self._n_features_out), dtype=np.uint8)
        step = max(1, (_BLOCK_VALUES * 4) // max(X.shape[1], 1))
        for s in range(0, X.shape[0], step):
            out[s : s + step] = _pack(self._codes(X[s : s + step]), self.bits)
        return out

    def inverse_transform(self, X):
        """Reconstruct float32 rows from codes (each code -> its bucket's value).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_) or (n_samples, \
ceil(n_features_in_ * bits / 8)), integer dtype
            Unpacked or packed codes, told apart by width; if both widths are equal
            (``bits=8``, where they are the same bytes, or a single feature) the
            ``pack`` parameter decides.

        Returns
        -------
        X_rec : ndarray of shape (n_samples, n_features_in_), dtype float32
            ``bucket_values_[j, code]`` per entry.
        """
        check_is_fitted(self)
        codes = self._as_codes(X)
        d = self.n_features_in_
        return self.bucket_values_[np.arange(d), codes]

    def _as_codes(self, X):
        """Validate codes (packed or not) and return them unpacked, uint8."""
        X = np.asarray(X)
        d = self.n_features_in_
        packed_width = _packed_width(d, self.bits)
        if X.ndim != 2:
            raise ValueError(f"codes must be a 2-D array, got shape {X.shape}.")
        if not np.issubdtype(X.dtype, np.integer):
            raise TypeError(
                f"codes must be integers (uint8 from transform), got dtype {X.dtype}; "
                "pass the output of PercentileQuantizer.transform."
            )
        width = X.shape[1]
        if width not in (d, packed_width):
            raise ValueError(
                f"codes have {width} columns; this quantizer expects {d} (unpacked) or "
                f"{packed_width} (packed, bits={self.bits})."
            )
        packed = width == packed_width and (width != d or self.pack)
        if packed:
            if X.dtype != np.uint8:
                raise TypeError(f"packed codes must be uint8, got {X.dtype}.")
            return unpack_codes(X, self.bits, d)
        if X.size and (X.min() < 0 or X.max() >= 1 << self.bits):
            raise ValueError(
                f"codes must lie in 0..{(1 << self.bits) - 1} for bits={self.bits}; "
                f"got values in {X.min()}..{X.max()}."
            )
        return X.astype(np.uint8, copy=False)
