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

from ._compat import Interval, StrOptions, _fit_context, validate_params
from .codes import BaseQuantizer

__all__ = ["AllocatedQuantizer", "allocate_bits"]


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


@validate_params(
    {
        "variances": ["array-like"],
        "bit_budget": [Interval(Integral, 1, None, closed="left")],
        "max_bits": [Interval(Integral, 1, 8, closed="both")],
        "allocation_power": [Interval(Real, 0, None, closed="neither")],
    },
    prefer_skip_nested_validation=True,
)
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
        dimension with the larger variance, then to the lower index.

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
    capacity = var.size * int(max_bits)
    if bit_budget > capacity:
        raise ValueError(
            f"bit_budget={bit_budget} must lie in 1..n_features * max_bits = {capacity} "
            f"(n_features={var.size}, max_bits={max_bits}); lower bit_budget, raise "
            "max_bits or keep more dimensions."
        )
    if not np.isfinite(allocation_power):
        raise ValueError(f"allocation_power must be finite, got {allocation_power!r}.")
    gains = np.power(var, allocation_power)[:, None] * 4.0 ** -np.arange(max_bits)
    # Order on (-gain), equal gains to the larger variance, then to the lower index
    # (lexsort is stable over the dimension-major order). The variance key keeps the
    # allocation monotone where tiny variances' gains underflow to equal zeros.
    top = np.lexsort((np.repeat(-var, max_bits), -gains.ravel()))[: int(bit_budget)]
    return np.bincount(top // max_bits, minlength=var.size).astype(np.int64)


class AllocatedQuantizer(BaseQuantizer):
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
    bit_budget : int or None, default=None
        Bits per vector, at most ``max_bits`` times the coded features (341 bits =
        42.6 bytes, 96x smaller than 1,024 float32). ``None`` spends two bits per coded
        feature on average, ``min(2, max_bits) * n_coded`` where ``n_coded`` is
        ``min(n_features_in_, max_features)``: the bytes of
        :class:`~skfusion.quantize.PercentileQuantizer` ``(bits=2)``, whatever the
        input width. A budget no input width can hold is an error, not clipped.
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
        uses every row. A ``numpy.memmap`` or a dask array is sampled before it is
        validated, so only the drawn rows are ever read.
    pack : bool, default=False
        If True, ``transform`` returns packed rows of ``ceil(n_bits_ / 8)`` bytes.
    random_state : int, RandomState instance or None, default=None
        Draws the calibration subsample.

    Attributes
    ----------
    bits_ : ndarray of shape (n_features_in_,), dtype int64
        Bits of every dimension (0 to ``max_bits``), summing to ``n_bits_``.
    n_bits_ : int
        Bits per vector: ``bit_budget``, or the ``None`` rule's resolved budget.
    bytes_per_vector_ : int
        Bytes of one packed row, ``ceil(n_bits_ / 8)``.
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

    The settings that reach the compression targets on debian-packages, and their
    nDCG@10, are in ``benchmarks/results/quality.md`` (measured numbers live there).

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
        "bit_budget": [Interval(Integral, 1, None, closed="left"), None],
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
        bit_budget=None,
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
        n_buckets = 1 << self.max_bits
        X64 = self._calibration_rows(
            X, n_buckets, f"AllocatedQuantizer(max_bits={self.max_bits})", "max_bits"
        )
        d = X64.shape[1]
        d_coded = d if self.max_features is None else min(d, self.max_features)
        capacity = d_coded * self.max_bits
        # A scale-free default: the same two bits a feature whatever the input width.
        budget = (
            min(2, self.max_bits) * d_coded if self.bit_budget is None else self.bit_budget
        )
        if budget > capacity:
            raise ValueError(
                f"bit_budget={self.bit_budget} exceeds the coded features times max_bits "
                f"= {capacity} (n_features={d}, max_features={self.max_features}, "
                f"max_bits={self.max_bits}); lower bit_budget, raise max_bits or "
                "max_features."
            )
        std = X64.std(axis=0)
        bits = np.zeros(d, dtype=np.int64)
        bits[:d_coded] = allocate_bits(
            std[:d_coded] ** 2,
            int(budget),
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
        self.thresholds_ = thr
        self.std_ = std.astype(np.float32)
        self._set_code_layout(bits, values * self._spread_scale(std, bits > 0)[:, None])
        # Unused codes never occur; a dimension without bits reconstructs as its mean.
        self.bucket_values_ = self._bucket_means(X64, np.zeros((d, n_buckets)))
        return self

    def _spread_scale(self, std, coded):
        """``std ** spread`` over the coded dimensions, mean 1, 0 elsewhere.

        Computed in the log domain (shifted so the largest is 1) so that no ``spread``
        overflows to inf (``std ** 300``) and turns the code values into NaN.
        """
        log_std = np.log(np.maximum(std[coded], np.finfo(np.float64).tiny))
        log_scale = self.spread * log_std
        scale = np.zeros(std.shape)
        scale[coded] = np.exp(log_scale - log_scale.max())
        return scale / scale[coded].mean()
