"""The protocol shared by every skfusion estimator that emits compact codes.

:class:`BaseCodeTransformer` is to :class:`~skfusion.quantize.PercentileQuantizer`,
:class:`~skfusion.allocation.AllocatedQuantizer` and
:class:`~skfusion.lsh.RandomProjectionLSH` what scikit-learn's ``BaseRandomProjection``
is to its projections: it owns what they have in common, so that search, evaluation,
scoring and MTEB ask the estimator instead of guessing from its attributes.

A fitted code transformer describes its output with

- ``bits_`` (bits of every code) and ``n_bits_`` (their sum, bits per vector);
- ``bytes_per_vector_``: the packed storage size, ``ceil(n_bits_ / 8)``;
- ``code_values_``: the float each code value stands for, so that the inner product of
  two :meth:`~BaseCodeTransformer.code_vectors` rows is the symmetric code similarity;
- ``symmetric_metric`` and ``code_metrics``: the :func:`skfusion.search.search` metrics
  its output supports (``"codes"``, ``"asymmetric"``, ``"reconstruct"``, ``"hamming"``);
- :meth:`~BaseCodeTransformer.to_codes` / :meth:`~BaseCodeTransformer.to_packed`:
  validated unpacked codes or packed rows from either form of its output.

Packed rows are one bit stream per row: code ``j`` contributes its ``bits_[j]`` low
bits, most significant first, and the stream is zero-padded to whole bytes.
:func:`pack_codes` / :func:`unpack_codes` do the same for codes of one width.
"""

from numbers import Integral

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, validate_data, validate_params

__all__ = ["BaseCodeTransformer", "BaseQuantizer", "pack_codes", "unpack_codes"]

# About 256K input values per block: the block and its uint8 codes stay in L2 cache
# while the compare-and-accumulate passes run over it.
_BLOCK_VALUES = 1 << 18
# Rows per block of the generic bit-stream packing.
_BLOCK_ROWS = 1 << 14


def _packed_width(n_features, bits):
    return -(-n_features * bits // 8)


def _pack_uniform(codes, bits):
    """Pack validated uint8 codes of one width ``bits`` (no checks)."""
    n, d = codes.shape
    if bits == 8:
        return np.ascontiguousarray(codes)
    if bits == 1:
        return np.packbits(codes, axis=1)
    if 8 % bits == 0:
        # 2 or 4 bits: whole codes per byte, combined with shifts (no bit planes).
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


def _unpack_uniform(packed, bits, n_features):
    """Inverse of :func:`_pack_uniform` for validated rows."""
    if bits == 8:
        return np.ascontiguousarray(packed)
    n = packed.shape[0]
    if bits in (2, 4):
        # Whole codes per byte, the first in the high bits: shift and mask (much
        # faster than repacking bit planes, whose packbits runs per code).
        per, mask = 8 // bits, np.uint8((1 << bits) - 1)
        out = np.empty((n, packed.shape[1] * per), dtype=np.uint8)
        for t in range(per):
            out[:, t::per] = (packed >> np.uint8(8 - bits * (t + 1))) & mask
        return np.ascontiguousarray(out[:, :n_features])
    stream = np.unpackbits(packed, axis=1, count=n_features * bits)
    if bits == 1:
        return stream
    planes = np.zeros((n, n_features, 8), dtype=np.uint8)
    planes[:, :, 8 - bits :] = stream.reshape(n, n_features, bits)
    return np.packbits(planes, axis=2)[:, :, 0]


def _bit_layout(bits):
    """Source column and right shift of every bit of the stream of mixed widths."""
    cols = np.repeat(np.arange(bits.size), bits)
    starts = np.cumsum(bits) - bits
    pos = np.arange(int(bits.sum())) - starts[cols]
    return cols, (bits[cols] - 1 - pos).astype(np.uint8)


def _pack_stream(codes, bits):
    """Pack codes whose column ``j`` has ``bits[j]`` bits (any widths, 0 included)."""
    n = codes.shape[0]
    n_bits = int(bits.sum())
    out = np.empty((n, -(-n_bits // 8)), dtype=np.uint8)
    cols, shifts = _bit_layout(bits)
    for s in range(0, n, _BLOCK_ROWS):
        stream = (codes[s : s + _BLOCK_ROWS, cols] >> shifts) & np.uint8(1)
        out[s : s + _BLOCK_ROWS] = np.packbits(stream, axis=1)
    return out


def _unpack_stream(packed, bits):
    n = packed.shape[0]
    n_bits = int(bits.sum())
    cols, shifts = _bit_layout(bits)
    codes = np.zeros((n, bits.size), dtype=np.uint8)
    for s in range(0, n, _BLOCK_ROWS):
        stream = np.unpackbits(packed[s : s + _BLOCK_ROWS], axis=1, count=n_bits)
        block = codes[s : s + _BLOCK_ROWS]
        vals = stream << shifts
        # Within one shift every column appears once, so fancy-index OR is safe.
        for b in range(int(bits.max())):
            sel = shifts == b
            block[:, cols[sel]] |= vals[:, sel]
    return codes


@validate_params(
    {"codes": ["array-like"], "bits": [Interval(Integral, 1, 8, closed="both")]},
    prefer_skip_nested_validation=True,
)
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
    return _pack_uniform(codes.astype(np.uint8, copy=False), int(bits))


@validate_params(
    {
        "packed": ["array-like"],
        "bits": [Interval(Integral, 1, 8, closed="both")],
        "n_features": [Interval(Integral, 0, None, closed="left")],
    },
    prefer_skip_nested_validation=True,
)
def unpack_codes(packed, bits, n_features):
    """Unpack rows written by :func:`pack_codes` back into uint8 codes.

    Parameters
    ----------
    packed : array-like of shape (n_samples, ceil(n_features * bits / 8)), dtype uint8
        Packed rows.
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

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.quantize import unpack_codes
    >>> unpack_codes(np.array([[27, 192]], dtype=np.uint8), 2, 5)
    array([[0, 1, 2, 3, 3]], dtype=uint8)
    """
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
    return _unpack_uniform(packed, int(bits), int(n_features))


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


def _is_out_of_core(X):
    """A memmap or a dask array (not a dask DataFrame): read only the rows needed."""
    is_dask_array = hasattr(X, "__dask_graph__") and hasattr(X, "chunks")
    return isinstance(X, np.memmap) or (is_dask_array and not hasattr(X, "columns"))


def _take_rows(X, rows):
    rows = X[rows]
    compute = getattr(rows, "compute", None)  # dask: materialise the sampled rows only
    return compute() if callable(compute) else rows


class BaseCodeTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base class of the estimators whose ``transform`` emits compact codes.

    Subclasses set ``bits_`` and ``code_values_`` in ``fit`` with
    :meth:`_set_code_layout` and implement ``_encode`` (unpacked codes of validated
    float rows); the base class owns ``transform`` (validation, blocking, packing),
    the output width (so ``get_feature_names_out`` and ``set_output`` follow ``pack``
    even when it is changed after ``fit``), the tags, and the conversions that search,
    evaluation and MTEB use.

    Attributes
    ----------
    symmetric_metric : str
        The :func:`skfusion.search.search` metric for codes against codes
        (class attribute).
    code_metrics : tuple of str
        Every search metric the output supports (class attribute).

    See Also
    --------
    BaseQuantizer : Percentile codes with a bucket reconstruction.
    skfusion.search.search : Searches the codes with the metric they imply.

    Notes
    -----
    Only ``pack`` is read at ``transform``; the other parameters take effect at the
    next ``fit`` (what the codes are is fixed by the fitted attributes).

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion import AllocatedQuantizer, RandomProjectionLSH
    >>> X = np.random.default_rng(0).standard_normal((500, 8)) * np.arange(8, 0, -1)
    >>> for est in (AllocatedQuantizer(bit_budget=12), RandomProjectionLSH(12)):
    ...     est = est.fit(X)
    ...     print(type(est).__name__, est.symmetric_metric, est.n_bits_,
    ...           est.bytes_per_vector_, est.code_vectors(est.transform(X[:2])).shape)
    AllocatedQuantizer codes 12 2 (2, 8)
    RandomProjectionLSH hamming 12 2 (2, 12)
    """

    symmetric_metric = "codes"
    code_metrics = ("codes",)
    # dtype of unpacked output.
    _unpacked_dtype = np.uint8

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Output is uint8 codes whatever the input float dtype.
        tags.transformer_tags.preserves_dtype = []
        return tags

    def __setstate__(self, state):
        super().__setstate__(state)
        # Pickles from before this protocol stored the output width and no layout.
        self.__dict__.pop("_n_features_out", None)
        if "bits_" not in state and "n_features_in_" in state:
            self._set_code_layout(*self._fitted_layout())

    def _fitted_layout(self):  # pragma: no cover - overridden where needed
        """``(bits, code_values)`` derived from the other fitted attributes."""
        raise NotImplementedError

    def _set_code_layout(self, bits, code_values):
        self.bits_ = np.asarray(bits, dtype=np.int64)
        self.n_bits_ = int(self.bits_.sum())
        self.code_values_ = np.ascontiguousarray(code_values, dtype=np.float32)

    @property
    def bytes_per_vector_(self):
        """Bytes of one packed output row, ``ceil(n_bits_ / 8)``."""
        return -(-self.n_bits_ // 8)

    @property
    def _n_features_out(self):
        # Follows `pack` as it is now, so it stays right when pack changes after fit.
        return self.bytes_per_vector_ if self.pack else self.bits_.size

    def _uniform_bits(self):
        """The common width of every code, or None when widths differ."""
        b = self.bits_
        return int(b[0]) if b.size and (b == b[0]).all() else None

    def _pack_rows(self, codes):
        b = self._uniform_bits()
        if b is not None and b > 0:
            return _pack_uniform(codes, b)
        return _pack_stream(codes, self.bits_)

    def _unpack_rows(self, packed):
        b = self._uniform_bits()
        if b is not None and b > 0:
            return _unpack_uniform(packed, b, self.bits_.size)
        return _unpack_stream(packed, self.bits_)

    def _encode(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _block_rows(self, n_features):
        return max(1, (_BLOCK_VALUES * 4) // max(n_features, self.bits_.size, 1))

    def transform(self, X):
        """Encode rows into codes (packed when ``pack=True``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Finite float rows with the fitted width.

        Returns
        -------
        codes : ndarray
            Unpacked: shape (n_samples, n_codes), one code per column. Packed
            (``pack=True``): shape (n_samples, bytes_per_vector_), dtype uint8.
        """
        check_is_fitted(self)
        self._validate_params()  # pack may have been changed since fit
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        n = X.shape[0]
        dtype = np.uint8 if self.pack else self._unpacked_dtype
        out = np.empty((n, self._n_features_out), dtype=dtype)
        step = self._block_rows(X.shape[1])
        for s in range(0, n, step):
            codes = self._encode(X[s : s + step])
            out[s : s + step] = self._pack_rows(codes) if self.pack else codes
        return out

    def to_codes(self, X):
        """Validate this estimator's output (packed or not) and return it unpacked.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_codes) or (n_samples, \
bytes_per_vector_)
            Unpacked codes (integer or bool) or packed uint8 rows, told apart by
            width; if both widths are equal the ``pack`` parameter decides.

        Returns
        -------
        codes : ndarray of shape (n_samples, n_codes), dtype uint8
        """
        check_is_fitted(self)
        name = type(self).__name__
        if sparse.issparse(X):
            raise TypeError(
                f"codes must be a dense array, got a sparse {type(X).__name__}; pass "
                f"the output of {name}.transform."
            )
        X = np.asarray(X)
        d = self.bits_.size
        packed_width = self.bytes_per_vector_
        if X.ndim != 2:
            raise ValueError(f"codes must be a 2-D array, got shape {X.shape}.")
        if not (np.issubdtype(X.dtype, np.integer) or X.dtype == np.bool_):
            raise TypeError(
                f"codes must be integers (uint8 from transform), got dtype {X.dtype}; "
                f"pass the output of {name}.transform."
            )
        width = X.shape[1]
        if width not in (d, packed_width):
            raise ValueError(
                f"codes have {width} columns; this {name} expects {d} (unpacked) or "
                f"{packed_width} (packed, {self.n_bits_} bits)."
            )
        if width == packed_width and (width != d or self.pack):
            if X.dtype != np.uint8:
                raise TypeError(f"packed codes must be uint8, got {X.dtype}.")
            return self._unpack_rows(X)
        b = self._uniform_bits()
        if b is not None:
            bad = X.size and (X.min() < 0 or X.max() >= 1 << b)
        else:
            bad = X.size and ((X < 0).any() or (X >= (1 << self.bits_)).any())
        if bad:
            allowed = (
                f"0..{(1 << b) - 1}" if b is not None else "0..2**bits_[j] - 1 in column j"
            )
            raise ValueError(
                f"codes must lie in {allowed} (bits_ from fit); got values in "
                f"{X.min()}..{X.max()}: pass the output of this {name}'s transform."
            )
        return X.astype(np.uint8, copy=False)

    def to_packed(self, X):
        """Validate this estimator's output (packed or not) and return it packed.

        Parameters
        ----------
        X : array-like
            Unpacked codes or packed rows, as for :meth:`to_codes`.

        Returns
        -------
        packed : ndarray of shape (n_samples, bytes_per_vector_), dtype uint8
        """
        return self._pack_rows(self.to_codes(X))

    def code_vectors(self, X):
        """Float32 vectors whose inner products are the symmetric code similarity.

        Each code is replaced by its ``code_values_`` entry.

        Parameters
        ----------
        X : array-like
            Unpacked codes or packed rows, as for :meth:`to_codes`.

        Returns
        -------
        vectors : ndarray of shape (n_samples, n_codes), dtype float32
        """
        codes = self.to_codes(X)
        table = self.code_values_
        row = table[0] if table.shape[0] else table.ravel()
        if row.size > 1 and (table == row).all():
            # One evenly spaced table for every code (percentile codes, LSH): the value
            # is code * step + first, much faster than a lookup and exactly equal.
            step = row[1] - row[0]
            if np.array_equal(row, row[0] + step * np.arange(row.size, dtype=np.float32)):
                out = codes.astype(np.float32)
                out *= step
                out += row[0]
                return out
        return table[np.arange(codes.shape[1]), codes]


class BaseQuantizer(BaseCodeTransformer):
    """Base class of the per-dimension percentile quantizers.

    Adds to :class:`BaseCodeTransformer` the seeded calibration sample, percentile
    codes from ``thresholds_``, the per-dimension spread ``std_``, the bucket means
    ``bucket_values_`` and ``inverse_transform``; its codes support symmetric
    (``"codes"``), asymmetric (float queries against code values) and
    ``"reconstruct"`` (bucket means) search.

    See Also
    --------
    skfusion.quantize.PercentileQuantizer : One width for every dimension.
    skfusion.allocation.AllocatedQuantizer : Widths allocated by variance.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion import AllocatedQuantizer, PercentileQuantizer
    >>> from skfusion.codes import BaseQuantizer
    >>> X = np.random.default_rng(0).standard_normal((200, 4))
    >>> q = PercentileQuantizer(bits=2).fit(X)
    >>> isinstance(q, BaseQuantizer), issubclass(AllocatedQuantizer, BaseQuantizer)
    (True, True)
    >>> q.code_metrics
    ('codes', 'asymmetric', 'reconstruct')
    >>> q.inverse_transform(q.transform(X[:1])).shape
    (1, 4)
    """

    code_metrics = ("codes", "asymmetric", "reconstruct")

    def _calibration_rows(self, X, n_buckets, setting, param):
        """Validate ``X`` and return its float64 calibration rows (seeded subsample).

        At least ``n_buckets`` rows are needed. A memmap or dask array is subsampled
        before validation, so only the sampled rows are ever read; an in-memory array
        gives the same rows for the same ``random_state``.
        """
        subsample = self.subsample
        if subsample is not None and subsample < n_buckets:
            raise ValueError(
                f"{setting} calibrates 2**{param} = {n_buckets} buckets per dimension, "
                f"which needs at least {n_buckets} rows, but subsample={subsample}. "
                f"Raise subsample to at least {n_buckets} or lower {param}."
            )
        if _is_out_of_core(X) and getattr(X, "ndim", None) == 2:
            if subsample is not None and X.shape[0] > subsample:
                X = _take_rows(X, self._subsample_rows(X.shape[0]))
            else:
                X = _take_rows(X, slice(None))
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        else:
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
            if subsample is not None and X.shape[0] > subsample:
                X = X[self._subsample_rows(X.shape[0])]
        n = X.shape[0]
        if n < n_buckets:
            raise ValueError(
                f"{setting} needs at least 2**{param} = {n_buckets} calibration rows, "
                f"got n_samples={n}. Pass more rows or lower {param}."
            )
        X = np.asarray(X, dtype=np.float64)
        # std_, bucket_values_ and code_values_ are float32: a scale float32 cannot
        # hold would store them as inf, or all as zero.
        peak = float(np.abs(X).max(initial=0.0))
        f32 = np.finfo(np.float32)
        if peak > float(f32.max) or 0 < peak < float(f32.smallest_subnormal) / 2:
            raise ValueError(
                f"{setting}: X has values of magnitude up to {peak:.3g}, which "
                "float32 cannot hold (range about 1.4e-45 to 3.4e38), and the fitted "
                "std_ and bucket values are float32; rescale X (e.g. L2-normalise "
                "its rows with sklearn.preprocessing.normalize) first."
            )
        return X

    def _subsample_rows(self, n):
        rng = check_random_state(self.random_state)
        return np.sort(rng.choice(n, size=self.subsample, replace=False))

    def _encode(self, X):
        return _percentile_codes(X, self.thresholds_)

    def _bucket_means(self, X64, empty):
        """Mean calibration value of every bucket; ``empty`` where a bucket has none."""
        d = X64.shape[1]
        nb = empty.shape[1]
        codes = _percentile_codes(X64, self.thresholds_)
        flat = (codes.astype(np.int64) + np.arange(d) * nb).ravel()
        counts = np.bincount(flat, minlength=d * nb).reshape(d, nb)
        sums = np.bincount(flat, weights=X64.ravel(), minlength=d * nb).reshape(d, nb)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), empty)
        return means.astype(np.float32)

    def inverse_transform(self, X):
        """Reconstruct float32 rows: each code becomes its bucket's mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_) or (n_samples, \
bytes_per_vector_), integer dtype
            Unpacked or packed codes (told apart by width; ``pack`` decides a tie).

        Returns
        -------
        X_rec : ndarray of shape (n_samples, n_features_in_), dtype float32
            ``bucket_values_[j, code]`` per entry.
        """
        codes = self.to_codes(X)
        return self.bucket_values_[np.arange(codes.shape[1]), codes]
