"""Matryoshka decoder: a linear layer that compresses a concatenation of embeddings.

:class:`MatryoshkaDecoder` trains one linear layer (weight and bias) with the paper's
Matryoshka pairwise-cosine loss so that every prefix of its output (the "stops")
preserves the input's cosine similarities. Training uses torch; the fitted weights are
numpy arrays, so ``transform`` is a numpy matmul and a fitted decoder loads and runs
without torch.
"""

import contextlib
import mmap
import os
import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, StrOptions, _fit_context, validate_data
from ._numeric import normalize_rows
from ._progress import progress_bar

__all__ = ["MatryoshkaDecoder"]

# Rows per block when streaming statistics over (possibly memory-mapped) inputs.
_BLOCK = 8192

# Bytes gathered per dask computation during training (several batches at once).
_GATHER_BYTES = 128 * 2**20

# Largest magnitudes of the inputs that fit accepts: training and the statistics run
# in float32, whose squares (norms, covariances) overflow near 1.8e19 and lose
# precision below about 1e-19; these bounds keep a wide margin. Embeddings are ~1.
_MIN_PEAK, _MAX_PEAK = 1e-8, 1e8

# The paper's Matryoshka stops; ``stops="auto"`` keeps those below ``n_components``.
_PAPER_STOPS = (32, 64, 128, 200, 256, 300, 384, 512, 768)


def _batches(indices, batch_size):
    """Split ``indices`` into batches; a trailing batch of one row joins the previous."""
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = np.concatenate([batches[-2], batches.pop()])
    return [b for b in batches if len(b) >= 2]


def _is_dask_array(X):
    return hasattr(X, "__dask_graph__") and hasattr(X, "chunks")


def _file_layout(X):
    """``(path, file offset of row 0)`` of a memmap whose rows can be read from its file.

    ``None`` when they cannot: not a memmap, no file name, a copy-on-write memmap
    (``mode="c"``, whose private changes are not in the file), rows that are not
    contiguous, or no ``os.preadv`` on this OS.
    """
    if not isinstance(X, np.memmap) or not hasattr(os, "preadv"):
        return None
    if X.mode == "c" or X.filename is None or X.strides[1] != X.itemsize:
        return None
    top = X
    while isinstance(top.base, np.memmap):
        top = top.base
    if not isinstance(top.base, mmap.mmap):
        return None
    return X.filename, top.offset + (X.ctypes.data - top.ctypes.data)


class _Rows:
    """Float32 row blocks and batches of ``X``, read without loading it whole.

    ``X`` is an ndarray, an ``np.memmap`` or a dask array. A memmap's rows are read
    from its file with positioned reads (``os.preadv``), not through the mapping: a
    page fault maps whole folios (up to megabytes) into this process, so random rows
    read through a mapping of a large file soon count its whole size as resident
    memory. A dask array is read with one ``compute`` per block and per group of
    batches.
    """

    def __init__(self, X):
        self.X = X
        self.shape = X.shape
        self._dask = _is_dask_array(X)
        self._file = _file_layout(X) if X.ndim == 2 else None

    def _read(self, f, idx):
        """Rows ``idx`` (sorted) in ``X``'s dtype, read from the memmap's file ``f``."""
        out = np.empty((len(idx), self.shape[1]), dtype=self.X.dtype)
        flat = out.view(np.uint8).reshape(-1)
        row_bytes = out.strides[0]
        # Consecutive rows are one read when the rows are adjacent in the file.
        adjacent = self.X.strides[0] == row_bytes
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1 if adjacent else np.arange(1, len(idx))
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(idx)], strict=True):
            offset = self._file[1] + int(idx[a]) * self.X.strides[0]
            view = memoryview(flat[a * row_bytes : b * row_bytes])
            while len(view):
                n = os.preadv(f.fileno(), [view], offset)
                if n == 0:
                    raise OSError(f"{self._file[0]} is shorter than its memmap.")
                view, offset = view[n:], offset + n
        return out

    def blocks(self):
        """``(start, block)`` for consecutive blocks of ``_BLOCK`` rows.

        Each block is a new float32 array (the caller may change it in place) that no
        one else references, so only one block is held at a time.
        """
        with open(self._file[0], "rb") if self._file else contextlib.nullcontext() as f:
            for start in range(0, self.shape[0], _BLOCK):
                yield start, self._block(f, start)

    def _block(self, f, start):
        stop = min(start + _BLOCK, self.shape[0])
        if f is not None:
            return np.asarray(self._read(f, np.arange(start, stop)), dtype=np.float32)
        part = self.X[start:stop]
        return np.array(part.compute() if self._dask else part, dtype=np.float32)

    def batches(self, index_batches):
        """The rows of each batch of indices, in sorted order (sequential reads)."""
        if self._dask:
            yield from self._dask_batches(index_batches)
            return
        with open(self._file[0], "rb") if self._file else contextlib.nullcontext() as f:
            for idx in index_batches:
                idx = np.sort(idx)
                part = self.X[idx] if f is None else self._read(f, idx)
                yield np.ascontiguousarray(part, dtype=np.float32)

    def _dask_batches(self, index_batches):
        # One computation per group of batches: every batch draws rows from every
        # chunk, so gathering batches one by one would read each chunk once per batch.
        # A group holds at most _GATHER_BYTES and an eighth of the rows.
        row_bytes = self.shape[1] * max(self.X.dtype.itemsize, 4)
        group_rows = max(1, min(_GATHER_BYTES // row_bytes, self.shape[0] // 8))
        group, count = [], 0
        for i, idx in enumerate(index_batches):
            group.append(np.sort(idx))
            count += len(idx)
            if count >= group_rows or i == len(index_batches) - 1:
                union = np.sort(np.concatenate(group))
                rows = np.ascontiguousarray(self.X[union].compute(), dtype=np.float32)
                for b in group:
                    yield rows[np.searchsorted(union, b)]
                group, count, rows = [], 0, None


class _Moments:
    """Streaming mean and covariance of the inputs (float64 accumulators).

    Sums are taken around a fixed shift (the first block's mean) so the float64
    second-moment matrix does not lose precision to a large mean.
    """

    peak = 0.0  # largest magnitude seen (a class default for older pickles)

    def __init__(self, n_features):
        self.n = 0
        self.shift = None
        self.s1 = np.zeros(n_features)
        self.s2 = np.zeros((n_features, n_features))

    def update(self, rows):
        """Add the rows of a :class:`_Rows`; nothing changes if one is not finite.

        Also raises, before anything overflows, if a value's magnitude exceeds
        ``_MAX_PEAK``, or if all values seen are non-zero but below ``_MIN_PEAK``.
        """
        n, shift, s1, s2 = self.n, self.shift, self.s1.copy(), self.s2.copy()
        peak = self.peak
        for start, block in rows.blocks():
            stop = start + len(block) - 1
            # Two reductions, no copy of the block (NaN if one is NaN).
            block_peak = float(max(block.max(initial=0.0), -block.min(initial=0.0)))
            if np.isfinite(block_peak) and block_peak > _MAX_PEAK:
                raise _scale_error(block_peak, f" in rows {start} to {stop}")
            if shift is None:
                shift = block.mean(axis=0)
            block -= shift
            n += block.shape[0]
            block_sum = block.sum(axis=0, dtype=np.float64)
            if not np.all(np.isfinite(block_sum)):  # float64 sums of float32 can't overflow
                raise ValueError(
                    f"Input X contains NaN or infinity in rows {start} to {stop} (or "
                    "values beyond float32's range, about 3.4e38); remove or impute the "
                    "non-finite values before fitting."
                )
            peak = max(peak, block_peak)
            s1 += block_sum
            s2 += (block.T @ block).astype(np.float64)
            del block  # before the next block is read: one block in memory at a time
        if 0 < peak < _MIN_PEAK:
            raise _scale_error(peak, "")
        self.n, self.shift, self.peak, self.s1, self.s2 = n, shift, peak, s1, s2

    @property
    def mean(self):
        return self.shift + self.s1 / self.n

    @property
    def covariance(self):
        m = self.s1 / self.n
        return self.s2 / self.n - np.outer(m, m)


def _scale_error(peak, where):
    return ValueError(
        f"X has values of magnitude up to {peak:.3g}{where}; MatryoshkaDecoder "
        f"trains in float32 and needs inputs whose largest magnitude is between "
        f"{_MIN_PEAK:g} and {_MAX_PEAK:g} (embeddings are about 1). L2-normalise the "
        "rows of X first, e.g. X = sklearn.preprocessing.normalize(X), as "
        "ConcatEmbedder(normalize=True) does."
    )


def _principal_axes(cov):
    """Eigenvalues (descending, >= 0) and unit eigenvectors (rows) with fixed signs."""
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals = np.clip(vals[order], 0.0, None)
    vecs = vecs[:, order].T
    # Deterministic signs: the largest-magnitude entry of each axis is positive.
    signs = np.sign(vecs[np.arange(len(vecs)), np.abs(vecs).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return vals, vecs * signs[:, None]


def _power(values, exponent):
    """``values ** -exponent`` with tiny values floored (relative to the largest)."""
    # Relative to the largest value (inputs as small as _MIN_PEAK have variances
    # near 1e-16), an absolute floor only when every value is zero.
    floor = float(np.max(values, initial=0.0)) * 1e-6 or 1e-12
    return np.maximum(values, floor) ** (-exponent)


class MatryoshkaDecoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Linear decoder trained with a Matryoshka cosine-similarity loss.

    Maps each (L2-normalised, concatenated) input row ``z`` to ``h = W z + b`` with
    ``n_components`` outputs, trained so that every prefix ``h[:s]`` at a stop ``s``
    is a good embedding by itself; ``output_dim`` picks one. For each batch of ``B``
    rows the loss is averaged over the stops. With ``loss="pairwise_mse"`` it is the
    paper's ``sum_{i != j} w_ij (cos(h_i[:s], h_j[:s]) - t_ij) ** 2 / sum w_ij`` with
    ``t_ij`` the cosine of the inputs (the paper exactly when ``init="random"``,
    ``neighbor_weight=0`` and ``target_whiten=0``). The default, ``"listwise_kl"``,
    distils each row's ranking of its in-batch neighbours instead (see ``loss``); with
    ``init="pca"`` and ``target_whiten=0.15`` it beat PCA and whitened PCA at every
    width on debian-packages (see Notes).

    Parameters
    ----------
    n_components : int, default=768
        Width of the linear layer's output.
    stops : "auto", array-like of int or None, default="auto"
        Strictly increasing prefix widths the loss is averaged over (the Matryoshka
        stops); each must be ``<= n_components``. ``"auto"`` uses the paper's stops
        (32, 64, 128, 200, 256, 300, 384, 512, 768) below ``n_components``, plus
        ``n_components`` itself, so it suits every width (at 768 it is exactly the
        paper's). ``None`` uses one stop at ``n_components`` (the plain pairwise loss,
        no Matryoshka prefixes).
    output_dim : int, default=None
        Width returned by ``transform`` (the first ``output_dim`` outputs); ``None``
        returns all ``n_components``. Used at transform time only: change it with
        ``set_params`` after fitting, no refit needed.
    init : {"pca", "random"}, default="pca"
        Starting weights. ``"pca"``: the top principal axes of the inputs (bias from
        their mean), so training starts from PCA. ``"random"``: torch's default uniform
        initialisation of a linear layer, as in the paper.
    loss : {"listwise_kl", "pairwise_mse"}, default="listwise_kl"
        The training objective. ``"pairwise_mse"``: the formula above (the paper's
        loss, optionally neighbour-weighted). ``"listwise_kl"``: listwise distillation,
        the mean over rows and stops of ``KL(p_i || q_i)`` where
        ``p_ij = softmax_{j != i}(t_ij / temperature)`` and ``q_ij`` is the same
        softmax of the output cosines at the stop; only each row's nearest in-batch
        neighbours matter, as in retrieval.
    neighbor_weight : float, default=0.0
        Extra weight on each row's nearest neighbours in the batch (``"pairwise_mse"``):
        ``w_ij = 1 + neighbor_weight * (B - 1) * softmax_{j != i}(t_ij / temperature)``,
        so a row's neighbours carry ``neighbor_weight`` times the weight of all its
        pairs. Retrieval quality lives at the top of the ranking. 0 gives uniform
        weights.
    temperature : float, default=0.02
        Softmax temperature on cosines for ``neighbor_weight`` and ``"listwise_kl"``;
        smaller focuses on fewer neighbours.
    target_whiten : float, default=0.15
        Exponent of the partial whitening applied to the targets: ``t_ij`` is the
        cosine of ``(z - mean)`` projected on the inputs' principal axes, each scaled by
        ``variance ** -target_whiten`` (statistics of the training inputs). ``0`` uses
        the raw input cosines (the paper). With ``init="pca"`` the starting weights are
        scaled the same way, so training starts from whitened PCA.
    whiten : float, default=0.0
        Exponent of a post-hoc output scaling: output ``k`` is multiplied by
        ``explained_variance_[k] ** -whiten`` before normalisation (0.5 is full
        whitening). Used at transform time only (no refit), so it is cheap to tune.
    max_epochs : int, default=20
        Passes over the training rows in ``fit``; 0 keeps the initial weights (with
        ``init="pca"`` the decoder is then plain PCA).
    batch_size : int, default=1024
        Rows per batch (the loss compares all pairs in a batch).
    learning_rate : float, default=3e-4
        AdamW step size.
    weight_decay : float, default=0.0
        AdamW decoupled weight decay.
    validation_fraction : float, default=0.1
        Share of the rows held out for early stopping (at least 2 rows); used only when
        ``early_stopping=True``.
    early_stopping : bool, default=True
        Stop when the held-out loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs and keep the weights of the best epoch.
    n_iter_no_change : int, default=3
        Patience of early stopping, in epochs.
    tol : float, default=1e-6
        Minimum decrease of the held-out loss that counts as an improvement.
    normalize : bool, default=True
        L2-normalise the rows returned by ``transform`` (transform time only).
    device : str, default=None
        Torch device for training (``"cpu"``, ``"cuda"``, ...). ``None`` uses CUDA when
        available, else the CPU; resolved in ``fit`` and never written back. The fitted
        weights are numpy arrays, so the decoder always loads and transforms on a
        CPU-only machine.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation, the validation split and the batch order
        (through a local ``torch.Generator``; nothing is seeded globally). Training is
        deterministic on the CPU for a fixed value.
    verbose : bool, default=False
        Print the training and validation loss after every epoch.

    Attributes
    ----------
    stops_ : list of int
        The stops used in training (``stops`` resolved).
    components_ : ndarray of shape (n_components, n_features_in_), dtype float32
        Weight of the linear layer.
    bias_ : ndarray of shape (n_components,), dtype float32
        Bias of the linear layer.
    explained_variance_ : ndarray of shape (n_components,), dtype float32
        Variance of each output on the training inputs (exact, from their covariance);
        used by ``whiten``.
    mean_ : ndarray of shape (n_features_in_,), dtype float32
        Mean of the training inputs.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    validation_loss_curve_ : list of float or None
        Held-out loss after each epoch; ``None`` without early stopping.
    best_validation_loss_ : float or None
        Lowest held-out loss (the kept weights); ``None`` without early stopping.
    n_iter_ : int
        Epochs run (``fit``) or batches seen (``partial_fit``).
    n_samples_seen_ : int
        Rows used for the input statistics (all rows given to ``fit`` or to every
        ``partial_fit`` call so far).
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``; only when ``X`` has string feature names.

    See Also
    --------
    sklearn.decomposition.PCA : The linear baseline; ``init="pca", max_epochs=0`` gives
        the same subspace, and ``whiten`` its partially whitened variant.

    Notes
    -----
    The losses are computed efficiently: target cosines once per batch, prefix norms
    from a cumulative sum of squares, prefix Gram matrices built incrementally and a
    closed-form gradient, so all stops together cost about two
    ``B x B x n_components`` matmuls. On a CPU a training step is about 3.6x faster
    than the direct version for ``"pairwise_mse"`` and 2.2x for ``"listwise_kl"``
    (whose softmaxes dominate); ``benchmarks/decoder_speed.py``.

    Defaults were chosen on the debian-packages dev queries
    (``benchmarks/decoder_quality.py``: 1,024-d concatenation of three models, fitted
    on 10,000 passages): the listwise loss with whitened targets lifts nDCG@10 at 32
    and 64 dimensions by 3-5 points of the concatenation's score over the better of
    PCA and whitened PCA, and stays above both at every width to 768. The paper's
    squared error (``init="random"``) was below PCA at every width there; with
    ``init="pca"`` it stayed within about a point of PCA.

    ``whiten``, ``output_dim`` and ``normalize`` act at transform time, so they can be
    tuned (e.g. per output width) without refitting, and are validated there; every
    other parameter needs a refit (``transform`` keeps the fitted ``n_components``).
    Out of core: ``fit`` and ``partial_fit`` take an ``np.memmap`` or a ``dask.array``
    larger than memory and never load it whole. The input statistics (mean,
    covariance, the PCA start) stream over row blocks, each batch is gathered
    separately, and validation reads the first rows for dtype and width and checks
    finiteness block by block. A memmap's rows are read from its file with positioned
    reads rather than through the mapping, so resident memory stays bounded; a dask
    array is computed one block, and one group of batches, at a time. The result
    equals the fit on the same rows in memory (``benchmarks/decoder_out_of_core.py``).
    ``partial_fit`` runs one pass over each
    chunk (no early stopping): the first call initialises the weights (``init="pca"``
    and ``target_whiten`` use the first chunk's statistics) and the input statistics
    behind ``explained_variance_`` accumulate over chunks. So that training can
    continue, a fitted decoder also pickles its input second-moment matrix
    (``n_features_in_ ** 2`` float64), the target whitening map (float32, same
    shape, when ``target_whiten > 0``) and, after ``partial_fit``, the optimizer
    state: about 15 MB for a 1,024-d input, next to 3 MB of weights.

    Training is single-process (no DataLoader workers), so ``GridSearchCV(n_jobs>1)``
    is safe. The paper trains on the outputs of frozen models for 500,000 Wikipedia
    passages; ``init="pca"``, ``"listwise_kl"``, ``neighbor_weight``,
    ``target_whiten`` and ``whiten`` are this library's additions.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.decoder import MatryoshkaDecoder
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.normal(size=(200, 24)).astype(np.float32)
    >>> Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    >>> dec = MatryoshkaDecoder(n_components=8, stops=(4, 8), max_epochs=2,
    ...                         random_state=0).fit(Z)
    >>> dec.transform(Z).shape
    (200, 8)
    >>> dec.set_params(output_dim=4).transform(Z).shape
    (200, 4)
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "stops": [StrOptions({"auto"}), "array-like", None],
        "output_dim": [Interval(Integral, 1, None, closed="left"), None],
        "init": [StrOptions({"pca", "random"})],
        "loss": [StrOptions({"pairwise_mse", "listwise_kl"})],
        "neighbor_weight": [Interval(Real, 0, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "target_whiten": [Interval(Real, 0, 1, closed="both")],
        "whiten": [Interval(Real, 0, 1, closed="both")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "normalize": ["boolean"],
        "device": [str, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_components=768,
        stops="auto",
        *,
        output_dim=None,
        init="pca",
        loss="listwise_kl",
        neighbor_weight=0.0,
        temperature=0.02,
        target_whiten=0.15,
        whiten=0.0,
        max_epochs=20,
        batch_size=1024,
        learning_rate=3e-4,
        weight_decay=0.0,
        validation_fraction=0.1,
        early_stopping=True,
        n_iter_no_change=3,
        tol=1e-6,
        normalize=True,
        device=None,
        random_state=None,
        verbose=False,
        show_progress_bar=None,
    ):
        self.n_components = n_components
        self.stops = stops
        self.output_dim = output_dim
        self.init = init
        self.loss = loss
        self.neighbor_weight = neighbor_weight
        self.temperature = temperature
        self.target_whiten = target_whiten
        self.whiten = whiten
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.normalize = normalize
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.show_progress_bar = show_progress_bar

    # ------------------------------------------------------------------ checks
    def _check_stops(self):
        if self.stops is None:
            return [self.n_components]
        if isinstance(self.stops, str):  # "auto" (the only string the constraints allow)
            return [s for s in _PAPER_STOPS if s < self.n_components] + [self.n_components]
        stops = np.asarray(self.stops)
        if stops.ndim != 1 or stops.size == 0 or not np.issubdtype(stops.dtype, np.integer):
            raise ValueError(
                "stops must be a non-empty 1-d sequence of int, got "
                f"{self.stops!r}; e.g. stops=(32, 64, 128)."
            )
        if np.any(np.diff(stops) <= 0) or stops[0] < 1:
            raise ValueError(
                f"stops must be positive and strictly increasing, got {self.stops!r}."
            )
        if stops[-1] > self.n_components:
            raise ValueError(
                f"stops must not exceed n_components={self.n_components}, got a stop "
                f"of {int(stops[-1])}; lower the stop or raise n_components."
            )
        return [int(s) for s in stops]

    def _check_loss(self):
        if self.neighbor_weight > 0 and self.loss != "pairwise_mse":
            raise ValueError(
                f"neighbor_weight={self.neighbor_weight} only applies to "
                f"loss='pairwise_mse', got loss={self.loss!r}; set neighbor_weight=0 "
                "or loss='pairwise_mse'."
            )

    def _check_output_dim(self, n_components):
        """``output_dim`` resolved to a width in ``[1, n_components]``."""
        dim = self.output_dim
        if dim is None:
            return n_components
        if not isinstance(dim, Integral) or isinstance(dim, bool) or dim < 1:
            raise ValueError(
                f"output_dim must be None or an int >= 1, got {dim!r}; use "
                f"set_params(output_dim=None) for all {n_components} outputs or a "
                f"width between 1 and {n_components}."
            )
        if dim > n_components:
            raise ValueError(
                f"output_dim={dim} exceeds n_components={n_components}; use "
                "output_dim <= n_components or None."
            )
        return int(dim)

    def _check_transform_params(self):
        """Validate what ``transform`` reads, which ``set_params`` may change after fit.

        Returns the output width; ``n_components`` is the fitted one (changing it needs
        a refit).
        """
        whiten = self.whiten
        if not isinstance(whiten, Real) or isinstance(whiten, bool) or not 0 <= whiten <= 1:
            raise ValueError(
                f"whiten must be a float in [0, 1], got {whiten!r}; use 0 for no "
                "whitening and 0.5 for full whitening."
            )
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise ValueError(
                f"normalize must be a bool, got {self.normalize!r}; use True or False."
            )
        return self._check_output_dim(self.components_.shape[0])

    @property
    def _n_features_out(self):
        return self._check_transform_params()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------------ training
    def _initialize(self, rows, rng, *, early_stopping):
        """Input statistics, target whitening, initial weights and empty curves.

        The one initialisation of ``fit`` and of the first ``partial_fit``, from the
        :class:`_Rows` ``rows``.
        """
        from ._training import initial_weights

        d = rows.shape[1]
        moments = _Moments(d)
        moments.update(rows)
        self._moments = moments
        mean = moments.mean
        self.mean_ = mean.astype(np.float32)
        need_axes = self.init == "pca" or self.target_whiten > 0
        if need_axes:
            variances, axes = _principal_axes(moments.covariance)
        if self.target_whiten > 0:
            scale = _power(variances, self.target_whiten)
            self._target_map = (axes.T * scale).astype(np.float32)
        else:
            self._target_map = None

        # torch.nn.Linear's default initialisation (the paper's starting point).
        seed = int(rng.randint(np.iinfo(np.int32).max))
        W, b = initial_weights(self.n_components, d, seed)
        if self.init == "pca":
            k = min(self.n_components, d)
            top = axes[:k]
            if self.target_whiten > 0:
                top = top * _power(variances[:k], self.target_whiten)[:, None]
            W[:k] = top
            b[:k] = -(top @ mean)
        self.components_, self.bias_ = W, b
        self._optimizer_state = None
        self.loss_curve_ = []
        self.validation_loss_curve_ = [] if early_stopping else None
        self.best_validation_loss_ = None
        self.n_iter_ = 0

    def _trainer(self, stops):
        """A training session from the current weights (and saved optimizer state)."""
        from ._training import Trainer

        return Trainer(
            self.components_,
            self.bias_,
            stops=stops,
            loss=self.loss,
            temperature=self.temperature,
            neighbor_weight=self.neighbor_weight,
            mean=self.mean_,
            target_map=self._target_map,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            device=self.device,
            optimizer_state=self._optimizer_state,
        )

    def _finish(self, trainer=None):
        """Keep the trainer's weights; variance of each output on the inputs seen."""
        if trainer is not None:
            self.components_, self.bias_ = trainer.weights()
        cov = self._moments.covariance
        W = self.components_.astype(np.float64)
        var = np.einsum("kd,de,ke->k", W, cov, W)
        self.explained_variance_ = np.clip(var, 0.0, None).astype(np.float32)
        self.n_samples_seen_ = int(self._moments.n)

    def _validate_fit_input(self, X, *, reset):
        """Validated ``X`` as :class:`_Rows`, and the stops.

        A memmap or dask array is validated without loading it: dtype and width on its
        first rows here, finiteness block by block in :meth:`_Moments.update`, which
        every row goes through before training.
        """
        params = dict(dtype=[np.float64, np.float32], ensure_min_samples=2, reset=reset)
        if isinstance(X, np.memmap) or _is_dask_array(X):
            if any(np.isnan(n) for n in X.shape):
                raise ValueError(
                    f"X is a dask array of unknown shape {X.shape}; call "
                    "X.compute_chunk_sizes() before fit."
                )
            head = X[:2].compute() if _is_dask_array(X) else np.array(X[:2])
            validate_data(self, head, **params)
            rows = _Rows(X)
        else:
            rows = _Rows(validate_data(self, X, copy=False, **params))
        stops = self.stops_ = self._check_stops()
        self._check_loss()
        self._check_output_dim(self.n_components)
        return rows, stops

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the decoder on the rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Concatenated embeddings (typically L2-normalised rows); an ``np.memmap``
            or a ``dask.array`` is streamed, never loaded whole.
        y : None
            Ignored. Present for API consistency by convention.

        Returns
        -------
        self : MatryoshkaDecoder
            The fitted decoder.
        """
        rows, stops = self._validate_fit_input(X, reset=True)
        n = rows.shape[0]
        rng = check_random_state(self.random_state)
        order = rng.permutation(n)
        if self.early_stopping:
            n_val = max(2, int(round(self.validation_fraction * n)))
            if n - n_val < 2:
                raise ValueError(
                    f"early_stopping with validation_fraction={self.validation_fraction}"
                    f" leaves fewer than 2 training rows out of n_samples={n}; pass "
                    "more rows or early_stopping=False."
                )
            val_idx, train_idx = order[:n_val], order[n_val:]
        else:
            val_idx, train_idx = None, order
        self._rng = rng  # continues the stream for later partial_fit calls
        self._initialize(rows, rng, early_stopping=self.early_stopping)
        trainer = None
        if self.max_epochs > 0:
            trainer = self._trainer(stops)
            self._train(trainer, rows, train_idx, val_idx, rng)
        self._finish(trainer)
        return self

    def _train(self, trainer, rows, train_idx, val_idx, rng):
        """Epochs of ``fit`` with early stopping on the held-out rows."""
        val_batches = None if val_idx is None else _batches(val_idx, self.batch_size)
        best, best_state, stale = np.inf, None, 0
        show = self.show_progress_bar
        with progress_bar(self.max_epochs, show, "MatryoshkaDecoder", "epoch") as bar:
            for epoch in range(self.max_epochs):
                start = time.perf_counter()
                batches = _batches(rng.permutation(train_idx), self.batch_size)
                self.loss_curve_.append(trainer.run_epoch(rows.batches(batches)))
                self.n_iter_ = epoch + 1
                loss = self.loss_curve_[-1]
                msg = f"Epoch {epoch + 1}/{self.max_epochs}: loss={loss:.6g}"
                if val_batches is not None:
                    val = trainer.run_epoch(rows.batches(val_batches), train=False)
                    self.validation_loss_curve_.append(val)
                    msg += f", validation loss={val:.6g}"
                    if val < best - self.tol:
                        stale = 0
                    else:
                        stale += 1
                    if val < best:
                        best = val
                        best_state = trainer.snapshot()
                bar.update()
                if self.verbose:
                    print(f"{msg} ({time.perf_counter() - start:.1f}s)", flush=True)
                if val_batches is not None and stale >= self.n_iter_no_change:
                    if self.verbose:
                        print(f"Early stopping after epoch {epoch + 1}.", flush=True)
                    break
        if best_state is not None:
            trainer.restore(best_state)
            self.best_validation_loss_ = float(best)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Train on one chunk of rows (one pass), for streams larger than memory.

        The first call initialises the weights from this chunk (``init``); later calls
        continue training (the optimizer state is kept) and add the chunk to the input
        statistics behind ``explained_variance_``. No early stopping.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A chunk of concatenated embeddings (at least 2 rows); an ``np.memmap``
            or a ``dask.array`` is streamed, never loaded whole.
        y : None
            Ignored. Present for API consistency by convention.

        Returns
        -------
        self : MatryoshkaDecoder
            The updated decoder.
        """
        first = not hasattr(self, "components_")
        rows, stops = self._validate_fit_input(X, reset=first)
        if not first and self.components_.shape[0] != self.n_components:
            raise ValueError(
                f"n_components changed from {self.components_.shape[0]} to "
                f"{self.n_components} since the first partial_fit; call fit to restart."
            )
        if first:
            self._rng = check_random_state(self.random_state)
            self._initialize(rows, self._rng, early_stopping=False)
        else:
            self._moments.update(rows)
        trainer = self._trainer(stops)
        batches = _batches(self._rng.permutation(rows.shape[0]), self.batch_size)
        loss = trainer.run_epoch(rows.batches(batches))
        self.loss_curve_.append(loss)
        self.n_iter_ += len(batches)
        if self.verbose:
            print(f"partial_fit on {rows.shape[0]} rows: loss={loss:.6g}", flush=True)
        self._optimizer_state = trainer.optimizer_state()
        self._finish(trainer)
        return self

    # ------------------------------------------------------------------ inference
    def transform(self, X):
        """Project ``X`` and return the first ``output_dim`` outputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Concatenated embeddings.

        Returns
        -------
        X_new : ndarray of shape (n_samples, output_dim or n_components)
            Same float dtype as ``X`` (float32 or float64); rows L2-normalised when
            ``normalize=True``; outputs scaled by ``explained_variance_ ** -whiten``.
        """
        check_is_fitted(self, "components_")
        k = self._check_transform_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        W = self.components_[:k].astype(X.dtype, copy=False)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            H = X @ W.T
            H += self.bias_[:k].astype(X.dtype, copy=False)
            if self.whiten:
                H *= _power(self.explained_variance_[:k].astype(np.float64), self.whiten)
        if not np.isfinite(H).all():
            row = int(np.flatnonzero(~np.isfinite(H).all(axis=1))[0])
            raise ValueError(
                f"X row {row} (largest magnitude {float(np.abs(X[row]).max()):.3g}) "
                f"overflows {X.dtype} in the decoder's projection; L2-normalise the rows "
                "of X first, e.g. X = sklearn.preprocessing.normalize(X), or pass "
                "float64."
            )
        if self.normalize:
            normalize_rows(H)  # at any scale: a plain norm over- or underflows
        return H.astype(X.dtype, copy=False)
