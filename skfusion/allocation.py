"""Percentile codes with a per-dimension bit width chosen by variance under a bit budget.

:class:`AllocatedQuantizer` spends a fixed number of bits per vector (``bit_budget``)
where they buy the most: a dimension with more variance gets more buckets, a dimension
with little gets one bit or none. The allocation is greedy reverse water-filling on the
high-resolution distortion model: the ``(b + 1)``-th bit on dimension ``j`` lowers its
squared error by about ``var_j * 4**-b * 3/4``, so the budget goes to the largest
``var_j ** allocation_power * 4**-b``. Each dimension is then quantized like
:class:`~skfusion.quantize.PercentileQuantizer` with its own ``2**bits_[j]`` equal-mass
buckets, and the codes are packed into exactly ``ceil(bit_budget / 8)`` bytes per row.
"""

from numbers import Integral, Real

import numpy as np
from scipy.stats import norm
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, StrOptions, _fit_context, validate_data
from .quantize import _calibration_rows, _percentile_codes

__all__ = ["AllocatedQuantizer", "allocate_bits"]

_BLOCK_ROWS = 1 << 14


def _gaussian_lloyd_max(bits, n_iter=300):
    """Thresholds and levels of the MSE-optimal ``bits``-bit quantizer of N(0, 1)."""
    nb = 1 << bits
    levels = norm.ppf((np.arange(nb) + 0.5) / nb)
    for _ in range(n_iter):
        thr = 0.5 * (levels[:-1] + levels[1:])
        edges = np.concatenate([[-np.inf], thr, [np.inf]])
        mass = np.diff(norm.cdf(edges))
        levels = (norm.pdf(edges[:-1]) - norm.pdf(edges[1:])) / mass
    return 0.5 * (levels[:-1] + levels[1:]), levels


def allocate_bits(variances, bit_budget, *, max_bits=3, allocation_power=1.0):
    """Bits per dimension by greedy reverse water-filling on the variances.

    Every bit goes to the dimension whose next bit has the largest gain
    ``variances[j] ** allocation_power * 4 ** -bits[j]``; since each dimension's gains
    shrink with every bit it gets, this equals taking the ``bit_budget`` largest gains
    over all ``(j, b)`` pairs with ``b < max_bits``.

    Parameters
    ----------
    variances : array-like of shape (n_features,)
        Non-negative per-dimension variances.
    bit_budget : int
        Total bits to spend, at most ``n_features * max_bits``.
    max_bits : int, default=3
        Most bits any dimension gets, 1..8.
    allocation_power : float, default=1.0
        Exponent on the variances (1 is the distortion model; smaller spreads the bits
        over more dimensions).

    Returns
    -------
    bits : ndarray of shape (n_features,), dtype int64
        Sums to ``bit_budget``; non-increasing in the variance. Equal gains go to the
        lower dimension index.

    Examples
    --------
    >>> from skfusion.allocation import allocate_bits
    >>> allocate_bits([16.0, 4.0, 1.0, 0.1], 5)
    array([3, 2, 0, 0])
    >>> allocate_bits([16.0, 4.0, 1.0, 0.1], 5, max_bits=2)
    array([2, 2, 1, 0])
    """
    var = np.asarray(variances, dtype=np.float64)
    if var.ndim != 1 or not np.isfinite(var).all() or (var < 0).any():
        raise ValueError("variances must be a 1-D array of finite non-negative numbers.")
    if isinstance(max_bits, bool) or not isinstance(max_bits, Integral):
        raise ValueError(f"max_bits must be an integer in 1..8, got {max_bits!r}.")
    if not 1 <= max_bits <= 8:
        raise ValueError(f"max_bits must be an integer in 1..8, got {max_bits!r}.")
    capacity = var.size * int(max_bits)
    if isinstance(bit_budget, bool) or not isinstance(bit_budget, Integral):
        raise ValueError(f"bit_budget must be a positive integer, got {bit_budget!r}.")
    if not 1 <= bit_budget <= capacity:
        raise ValueError(
            f"bit_budget={bit_budget} must lie in 1..n_features * max_bits = {capacity} "
            f"(n_features={var.size}, max_bits={max_bits}); lower bit_budget, raise "
            "max_bits or keep more dimensions."
        )
    if not np.isfinite(allocation_power) or allocation_power <= 0:
        raise ValueError(f"allocation_power must be positive, got {allocation_power!r}.")
    gains = np.power(var, allocation_power)[:, None] * 4.0 ** -np.arange(max_bits)
    # Stable order on (-gain) with dimension-major ties: lower index first.
    top = np.argsort(-gains, axis=None, kind="stable")[: int(bit_budget)]
    return np.bincount(top // max_bits, minlength=var.size).astype(np.int64)


class AllocatedQuantizer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Percentile codes with per-dimension bit widths allocated by variance.

    ``fit`` measures each dimension's variance on the calibration rows, splits
    ``bit_budget`` bits over the dimensions with :func:`allocate_bits`, and learns
    ``2**bits_[j] - 1`` percentile break-points per dimension; ``transform`` gives one
    uint8 code per dimension (0 for dimensions that got no bits), or with ``pack=True``
    a bit stream of exactly ``ceil(bit_budget / 8)`` bytes per row.

    Search the codes with :func:`skfusion.search.search` (``metric="codes"`` or
    ``"asymmetric"``; ``normalize=True`` ranks by cosine): each code stands for
    ``code_values_[j, code]``, the centre of its bucket on the uniform (rank) scale,
    times ``std_[j] ** spread``.

    Parameters
    ----------
    bit_budget : int, default=341
        Bits per vector (341 bits = 42.6 bytes, 96x smaller than 1,024 float32).
    max_bits : int, default=3
        Most bits one dimension gets, 1..8.
    allocation_power : float, default=1.0
        Exponent on the variances in the allocation; lower spreads bits thinner.
    buckets : {"equal", "gaussian"}, default="equal"
        Bucket masses and code values. ``"equal"``: ``2**b`` equal-mass buckets (the
        paper's percentiles), a code stands for its bucket's centre on the rank scale.
        ``"gaussian"``: the masses of the MSE-optimal (Lloyd-Max) quantizer of a
        Gaussian (2 bits: 16% / 34% / 34% / 16%), still placed at the data's own
        percentiles, and a code stands for that quantizer's level (in standard
        deviations). Thinner outer buckets keep the large values that decide inner
        products apart.
    max_features : int or None, default=None
        Only the first ``max_features`` columns get bits (decoder and PCA outputs come
        ordered by importance); ``None`` lets every column compete.
    spread : float, default=0.5
        Each dimension's code values are scaled by ``std_ ** spread`` (normalised to
        mean 1 over the coded dimensions): 0 treats every coded dimension alike (what
        percentile codes do), 1 restores its spread. A hyper-parameter for grid search.
    subsample : int or None, default=100_000
        Calibrate on at most this many rows (drawn with ``random_state``); ``None``
        uses every row.
    pack : bool, default=False
        If True, ``transform`` returns packed rows of ``ceil(n_bits_ / 8)`` bytes.
    random_state : int, RandomState instance or None, default=None
        Draws the calibration subsample.

    Attributes
    ----------
    bits_ : ndarray of shape (n_features_in_,), dtype int64
        Bits of every dimension (0 to ``max_bits``), summing to ``n_bits_``.
    n_bits_ : int
        Bits per vector, ``bit_budget``.
    thresholds_ : ndarray of shape (n_features_in_, 2**max_bits - 1), dtype float64
        Percentile break-points of every dimension, padded with ``+inf`` (never
        exceeded) past its ``2**bits_[j] - 1`` used ones.
    code_values_ : ndarray of shape (n_features_in_, 2**max_bits), dtype float32
        Value of each code used by search: its level (``(c + 0.5) / 2**b - 0.5`` for
        ``buckets="equal"``, the Gaussian Lloyd-Max level for ``"gaussian"``) times
        ``std ** spread`` (normalised); 0 for unused codes and dimensions without bits.
    bucket_values_ : ndarray of shape (n_features_in_, 2**max_bits), dtype float32
        Mean calibration value of each bucket (used by :meth:`inverse_transform`);
        a dimension without bits reconstructs as its mean.
    std_ : ndarray of shape (n_features_in_,), dtype float32
        Per-dimension standard deviation of the calibration rows.
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :meth:`fit`, when ``X`` has string column names.

    See Also
    --------
    allocate_bits : The allocation rule.
    skfusion.quantize.PercentileQuantizer : The same codes with one width for all.
    skfusion.search.search : Symmetric and asymmetric search over the codes.

    Notes
    -----
    Inputs should be decorrelated and ordered by importance, as PCA or
    :class:`~skfusion.decoder.MatryoshkaDecoder` outputs are; the allocation then puts
    several bits on the leading dimensions and one or none on the tail.
    ``max_features`` with ``max_bits=2`` gives plain two-bit codes of the leading
    dimensions, so one grid covers both.

    Measured on debian-packages (``benchmarks/results/quality.md``; nDCG@10 on test
    as a fraction of the float32 1,024-d concatenation, settings chosen on dev), on
    the default :class:`~skfusion.decoder.MatryoshkaDecoder` output: at 341 bits
    (96x) symmetric search reaches 96.1% with ``buckets="gaussian", max_bits=2,
    max_features=171, spread=0.25`` (equal-mass percentile codes of the same shape:
    95.0%), asymmetric 98.1% (variance allocation, ``buckets="gaussian"``); at 682
    bits (48x) 99.7% symmetric and 100.8% asymmetric. ``normalize=True`` in search
    (cosine over code values) is part of these numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.allocation import AllocatedQuantizer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((1000, 6)) * [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    >>> q = AllocatedQuantizer(bit_budget=8).fit(X)
    >>> q.bits_
    array([3, 2, 2, 1, 0, 0])
    >>> q.transform(X[:2]).shape, q.set_params(pack=True).transform(X[:2]).shape
    ((2, 6), (2, 1))
    """

    _parameter_constraints = {
        "bit_budget": [Interval(Integral, 1, None, closed="left")],
        "max_bits": [Interval(Integral, 1, 8, closed="both")],
        "allocation_power": [Interval(Real, 0, None, closed="neither")],
        "buckets": [StrOptions({"equal", "gaussian"})],
        "max_features": [Interval(Integral, 1, None, closed="left"), None],
        "spread": [Interval(Real, None, None, closed="neither")],
        "subsample": [Interval(Integral, 1, None, closed="left"), None],
        "pack": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        bit_budget=341,
        *,
        max_bits=3,
        allocation_power=1.0,
        buckets="equal",
        max_features=None,
        spread=0.5,
        subsample=100_000,
        pack=False,
        random_state=None,
    ):
        self.bit_budget = bit_budget
        self.max_bits = max_bits
        self.allocation_power = allocation_power
        self.buckets = buckets
        self.max_features = max_features
        self.spread = spread
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
        """Allocate the bits and learn each dimension's percentile break-points.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Calibration rows (e.g. PCA or decoder outputs of reference passages).
        y : None
            Ignored. Present for API consistency by convention.

        Returns
        -------
        self : AllocatedQuantizer
            The fitted quantizer.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        n, d = X.shape
        d_coded = d if self.max_features is None else min(d, self.max_features)
        capacity = d_coded * self.max_bits
        if self.bit_budget > capacity:
            raise ValueError(
                f"bit_budget={self.bit_budget} exceeds the coded features times max_bits "
                f"= {capacity} (n_features={d}, max_features={self.max_features}, "
                f"max_bits={self.max_bits}); lower bit_budget, raise max_bits or "
                "max_features."
            )
        n_buckets = 1 << self.max_bits
        X64 = _calibration_rows(
            X,
            n_buckets,
            self.subsample,
            self.random_state,
            f"AllocatedQuantizer(max_bits={self.max_bits})",
            "max_bits",
        )
        std = X64.std(axis=0)
        bits = np.zeros(d, dtype=np.int64)
        bits[:d_coded] = allocate_bits(
            std[:d_coded] ** 2,
            int(self.bit_budget),
            max_bits=int(self.max_bits),
            allocation_power=float(self.allocation_power),
        )
        thr = np.full((d, n_buckets - 1), np.inf)
        values = np.zeros((d, n_buckets))
        for b in range(1, int(self.max_bits) + 1):
            cols = np.flatnonzero(bits == b)
            if cols.size == 0:
                continue
            nb = 1 << b
            if self.buckets == "equal":
                mass = np.arange(1, nb) / nb
                levels = (np.arange(nb) + 0.5) / nb - 0.5
            else:
                t, levels = _gaussian_lloyd_max(b)
                mass = norm.cdf(t)
            thr[cols, : nb - 1] = np.percentile(X64[:, cols], 100.0 * mass, axis=0).T
            values[cols, :nb] = levels
        coded = bits > 0
        scale = np.where(coded, np.power(np.maximum(std, 1e-300), self.spread), 0.0)
        scale /= scale[coded].mean()
        self.bits_ = bits
        self.n_bits_ = int(bits.sum())
        self.thresholds_ = thr
        self.code_values_ = (values * scale[:, None]).astype(np.float32)
        self.std_ = std.astype(np.float32)
        self.bucket_values_ = self._bucket_means(X64)
        self._n_features_out = -(-self.n_bits_ // 8) if self.pack else d
        return self

    def _bucket_means(self, X64):
        n, d = X64.shape
        nb = 1 << self.max_bits
        codes = _percentile_codes(X64, self.thresholds_)
        flat = (codes.astype(np.int64) + np.arange(d) * nb).ravel()
        counts = np.bincount(flat, minlength=d * nb).reshape(d, nb)
        sums = np.bincount(flat, weights=X64.ravel(), minlength=d * nb).reshape(d, nb)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        return means.astype(np.float32)

    def transform(self, X):
        """Quantize rows into codes with the allocated widths.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Finite float rows.

        Returns
        -------
        codes : ndarray of dtype uint8
            Shape (n_samples, n_features_in_), code ``< 2**bits_[j]`` in column ``j``;
            with ``pack=True``, shape (n_samples, ceil(n_bits_ / 8)).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        codes = _percentile_codes(X, self.thresholds_)
        return self._pack(codes) if self.pack else codes

    def _pack(self, codes):
        """Bit stream: dimension by dimension, ``bits_[j]`` bits each, MSB first."""
        n = codes.shape[0]
        out = np.empty((n, -(-self.n_bits_ // 8)), dtype=np.uint8)
        cols, shifts = self._bit_layout()
        for s in range(0, n, _BLOCK_ROWS):
            stream = (codes[s : s + _BLOCK_ROWS, cols] >> shifts) & np.uint8(1)
            out[s : s + _BLOCK_ROWS] = np.packbits(stream, axis=1)
        return out

    def _bit_layout(self):
        """Source column and right shift of every bit in the stream."""
        cols = np.repeat(np.arange(self.bits_.size), self.bits_)
        starts = np.cumsum(self.bits_) - self.bits_
        pos = np.arange(self.n_bits_) - starts[cols]
        return cols, (self.bits_[cols] - 1 - pos).astype(np.uint8)

    def _unpack(self, packed):
        n = packed.shape[0]
        cols, shifts = self._bit_layout()
        codes = np.zeros((n, self.bits_.size), dtype=np.uint8)
        for s in range(0, n, _BLOCK_ROWS):
            stream = np.unpackbits(packed[s : s + _BLOCK_ROWS], axis=1, count=self.n_bits_)
            block = codes[s : s + _BLOCK_ROWS]
            vals = stream << shifts
            # Within one shift every column appears once, so fancy-index OR is safe.
            for b in range(int(self.bits_.max())):
                sel = shifts == b
                block[:, cols[sel]] |= vals[:, sel]
        return codes

    def _as_codes(self, X):
        """Validate codes (packed or not) and return them unpacked, uint8."""
        X = np.asarray(X)
        d = self.n_features_in_
        packed_width = -(-self.n_bits_ // 8)
        if X.ndim != 2:
            raise ValueError(f"codes must be a 2-D array, got shape {X.shape}.")
        if not np.issubdtype(X.dtype, np.integer):
            raise TypeError(
                f"codes must be integers (uint8 from transform), got dtype {X.dtype}; "
                "pass the output of AllocatedQuantizer.transform."
            )
        if X.shape[1] not in (d, packed_width):
            raise ValueError(
                f"codes have {X.shape[1]} columns; this quantizer expects {d} "
                f"(unpacked) or {packed_width} (packed, {self.n_bits_} bits)."
            )
        if X.shape[1] == packed_width and (packed_width != d or self.pack):
            if X.dtype != np.uint8:
                raise TypeError(f"packed codes must be uint8, got {X.dtype}.")
            return self._unpack(X)
        if X.size and ((X < 0).any() or (X >= (1 << self.bits_)).any()):
            raise ValueError(
                "codes must lie in 0..2**bits_[j] - 1 in every column j; pass the "
                "output of this quantizer's transform."
            )
        return X.astype(np.uint8, copy=False)

    def inverse_transform(self, X):
        """Reconstruct float32 rows: each code becomes its bucket's mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_) or (n_samples, \
ceil(n_bits_ / 8)), integer dtype
            Unpacked or packed codes (told apart by width; ``pack`` decides a tie).

        Returns
        -------
        X_rec : ndarray of shape (n_samples, n_features_in_), dtype float32
        """
        check_is_fitted(self)
        codes = self._as_codes(X)
        return self.bucket_values_[np.arange(self.n_features_in_), codes]
