"""Search at scale: a two-stage code index and faiss indexes built from skfusion output.

:class:`CodeIndex` keeps a compact code of every vector in RAM (1-2-bit percentile codes,
allocated codes or LSH bits, made by a :class:`~skfusion.codes.BaseCodeTransformer`) and
a finer representation on disk (float16 / float32 vectors or 4-8-bit codes, read through
``np.memmap``). A search shortlists ``k * oversample`` rows on the compact code with
:func:`skfusion.search.search`, then reads only those rows from disk and rescores them
against the float query. It asks the code transformers what their codes support and
stand for (``code_metrics``, ``code_vectors``, ``inverse_transform``,
``bytes_per_vector_``); it never guesses from their attributes.

:func:`build_faiss_index` turns skfusion output into a faiss index in one call: packed
bits (LSH bits, 1-bit codes) into ``IndexBinaryFlat`` / ``IndexBinaryHNSW`` /
``IndexBinaryIVF`` (Hamming), float rows (decoder output) into ``IndexFlatIP`` /
``IndexHNSWFlat`` / ``IndexIVFFlat`` (inner product). :func:`save_faiss_index` /
:func:`load_faiss_index` persist either kind. Multi-bit percentile codes have no faiss
equivalent: keep them as the rescoring stage of :class:`CodeIndex`, whose shortlist can
run in a faiss ``IndexBinaryHNSW`` over 1-bit codes or LSH bits
(``shortlist_index="hnsw"``), or score only the codes of the inverted lists nearest to
each query in faiss (``shortlist_index="ivf"``, any per-column codes). Candidates,
exact rescoring, ties and padding come from the scoring engine
:func:`skfusion.search.search` runs on.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
import weakref
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _engine
from ._compat import HasMethods, Interval, StrOptions, _fit_context, validate_params
from ._io import write_atomically
from .codes import BaseCodeTransformer
from .persistence import dump, load
from .search import search

__all__ = ["CodeIndex", "build_faiss_index", "load_faiss_index", "save_faiss_index"]

_FORMAT = "skfusion-code-index-2"
# Version 1 folders (fixed file names, no "files" in meta.json) still load.
_FORMAT_1 = "skfusion-code-index-1"
_FILES_1 = {
    "shortlist": "shortlist.skops",
    "rescore": "rescore.skops",
    "encoder": "encoder.skops",
    "arrays": "arrays.npz",
    "rows": "rescore.bin",
}
# Files of some saved version: swept by the next save once meta.json names others.
_VERSIONED = re.compile(r"(shortlist|rescore|encoder|arrays)-[0-9a-f]{16}\.(skops|npz|bin)")
_LOCK_NAME = ".skfusion-index.lock"
# Bytes copied per step when the on-disk rows are copied (save, copy-on-write).
_COPY_BYTES = 1 << 24
_FLOAT_STORES = {"float16": np.float16, "float32": np.float32}


@contextlib.contextmanager
def _folder_lock(folder, exclusive):
    """Hold ``folder/.skfusion-index.lock``: exclusive to save, shared to load.

    A save that finds the lock held fails with a clear error instead of mixing its
    files with another writer's; a load waits for a save in progress. Without
    ``fcntl`` (Windows), or in a folder the process cannot write (a read-only copy
    nobody saves to), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = Path(folder) / _LOCK_NAME
    try:
        f = open(lock, "a+b")
    except OSError:
        if exclusive:
            raise
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            raise RuntimeError(
                f"{os.fspath(folder)} is being saved or loaded by another process or "
                f"CodeIndex (it holds {lock}); save to another folder, or retry when "
                "that is done."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_private(path, folder):
    """Finalizer of an index's private working file (and of its temporary folder)."""
    Path(path).unlink(missing_ok=True)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _is_fitted(est):
    try:
        check_is_fitted(est)
    except Exception:  # NotFittedError, or a step sklearn cannot inspect
        return False
    return True


class CodeIndex(BaseEstimator):
    """Two-stage search: compact codes in RAM shortlist, a finer representation rescores.

    The shortlist step's codes (``shortlist``, e.g. 1-2-bit
    :class:`~skfusion.quantize.PercentileQuantizer` codes or
    :class:`~skfusion.lsh.RandomProjectionLSH` bits) of every added vector are held in
    RAM. The rescoring representation (``rescore``: float16 / float32 vectors or the
    packed codes of a finer quantizer) is appended to a file and read back through
    ``np.memmap``, so only the ``k * oversample`` shortlisted rows of each query are
    read from disk. Queries stay float in both stages when the codes allow it.

    Parameters
    ----------
    shortlist : BaseCodeTransformer
        Makes the in-RAM codes. Cloned and fitted in :meth:`fit` unless ``prefit``.
    rescore : {"float16", "float32"} or BaseQuantizer, default="float16"
        The on-disk representation: the vectors themselves in that float dtype, or the
        packed codes of a quantizer (e.g. 4- or 8-bit ``PercentileQuantizer``).
    encoder : estimator, default=None
        A fitted transformer (e.g. ``ConcatEmbedder`` + ``MatryoshkaDecoder`` pipeline)
        applied to what :meth:`fit`, :meth:`add` and :meth:`search` receive (texts);
        None: they receive float vectors. Never refitted here.
    shortlist_metric : {"auto", "asymmetric", "codes", "hamming", "reconstruct"}, \
default="auto"
        How the shortlist compares queries with the codes (see
        :func:`skfusion.search.search`): "auto" is "asymmetric" (float queries) when
        the codes support it, else the codes' ``symmetric_metric`` (queries encoded).
    rescore_metric : {"auto", "cosine", "ip", "asymmetric", "reconstruct"}, \
default="auto"
        How the rescoring compares float queries with the on-disk rows: "auto" is
        "cosine" for float rows, "asymmetric" for codes.
    shortlist_weights, rescore_weights : array-like of shape (width,), default=None
        Per-dimension weights of each stage (e.g. :func:`skfusion.search.spread_weights`),
        applied as :func:`skfusion.search.search` applies ``weights``.
    shortlist_index : {"exact", "hnsw", "ivf"}, default="exact"
        "exact": the shortlist scores every code (ties by lower index); "hnsw": a faiss
        ``IndexBinaryHNSW`` over the packed codes (Hamming; only for 1-bit codes and
        LSH bits), approximate and faster on millions of rows; "ivf": an inverted file
        (approximate): :meth:`fit` trains ``nlist`` centroids on its float rows
        (spherical k-means, faiss), :meth:`add` files every row in the list of its
        nearest centroid (inner product, from the float vector), and a query scores
        only the codes of its ``nprobe`` nearest lists, by the shortlist metric, in
        faiss: codes of at most 4 bits a column (LSH bits, 1- to 4-bit codes, the
        default ``AllocatedQuantizer``) in an ``IndexIVFPQFastScan`` whose 4-bit
        sub-quantizers are groups of code columns (SIMD scanning, scores rounded by its
        8-bit look-up tables), wider codes in an ``IndexIVFPQ`` with byte groups
        (exact float32 code scores); no residuals, and codes whose values mix columns
        are refused. With ``nprobe == nlist_`` the byte groups score what "exact"
        scores (only which of the rows tied at the shortlist's last place it keeps
        may differ); the 4-bit groups may swap rows whose scores nearly tie.
    nlist : int, default=None
        Lists of ``shortlist_index="ivf"``; None: ``4 * sqrt(n)`` of the ``n`` rows
        :meth:`fit` trains on, at most ``n // 39`` (at least 1). At most ``n``.
    nprobe : int, default=8
        Lists a query of ``shortlist_index="ivf"`` visits (at most ``nlist_``); read at
        search time, so ``set_params(nprobe=...)`` after :meth:`fit` applies at once.
    oversample : int, default=10
        Candidates per result: the shortlist keeps ``k * oversample`` rows.
    directory : str or path-like, default=None
        Folder of the on-disk working file, created if missing; None: a new temporary
        folder. Each :meth:`fit` starts a new private file there
        (``.rescore-*.bin.tmp``, deleted with the index), so several indexes can share
        a folder; a folder written by :meth:`save` changes only when :meth:`save`
        writes to it.
    prefit : bool, default=False
        The code steps are fitted already (as in :meth:`from_pipeline`); :meth:`fit`
        then needs no data.
    batch_size : int, default=16384
        Database block size of the shortlist search.
    random_state : int, RandomState instance or None, default=None
        Seeds the k-means of ``shortlist_index="ivf"``.

    Attributes
    ----------
    shortlist_ : BaseCodeTransformer
        The fitted shortlist step.
    rescore_ : BaseQuantizer or None
        The fitted rescoring quantizer (None for float rows).
    n_features_in_ : int
        Width of the vectors the code steps were fitted on.
    codes_ : ndarray of shape (n_vectors, shortlist_.bytes_per_vector_), dtype uint8
        The packed in-RAM codes, in insertion order (for ``shortlist_index="ivf"``
        a copy rebuilt from the lists, which hold the only copy).
    n_vectors_ : int
        Number of vectors added.
    directory_ : pathlib.Path
        Folder of the working file (for a loaded index, the saved folder, whose rows
        are copied to a private working file on the first :meth:`add`).
    ram_bytes_per_vector_ : int
        Bytes per vector held in RAM: the shortlist's ``bytes_per_vector_``; for
        ``shortlist_index="ivf"`` the lists' bytes per row (one per 4-bit or byte
        group of code columns; fast-scan lists round each list up to a block of 32
        rows) plus faiss's 8-byte id.
    disk_bytes_per_vector_ : int
        Bytes per vector on disk.
    nlist_ : int
        Number of inverted lists (``shortlist_index="ivf"`` only).
    centroids_ : ndarray of shape (nlist_, n_features_in_), dtype float32
        The unit-norm list centroids (``shortlist_index="ivf"`` only).

    See Also
    --------
    skfusion.search.search : The one-stage exact search both stages use.
    build_faiss_index : A faiss index of the same codes or vectors.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.index import CodeIndex
    >>> from skfusion.quantize import PercentileQuantizer
    >>> X = np.random.default_rng(0).standard_normal((1000, 32)).astype(np.float32)
    >>> index = CodeIndex(PercentileQuantizer(bits=1, pack=True), oversample=20)
    >>> index = index.fit(X).add(X)
    >>> index.ram_bytes_per_vector_, index.disk_bytes_per_vector_
    (4, 64)
    >>> scores, ids = index.search(X[:3], k=2)
    >>> ids[:, 0]
    array([0, 1, 2])
    """

    _parameter_constraints = {
        "shortlist": [BaseCodeTransformer],
        "rescore": [StrOptions(set(_FLOAT_STORES)), BaseCodeTransformer],
        "encoder": [HasMethods(["transform"]), None],
        "shortlist_metric": [
            StrOptions({"auto", "asymmetric", "codes", "hamming", "reconstruct"})
        ],
        "rescore_metric": [
            StrOptions({"auto", "cosine", "ip", "asymmetric", "reconstruct"})
        ],
        "shortlist_weights": ["array-like", None],
        "rescore_weights": ["array-like", None],
        "shortlist_index": [StrOptions({"exact", "hnsw", "ivf"})],
        "nlist": [Interval(Integral, 1, None, closed="left"), None],
        "nprobe": [Interval(Integral, 1, None, closed="left")],
        "oversample": [Interval(Integral, 1, None, closed="left")],
        "directory": [str, os.PathLike, None],
        "prefit": ["boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        shortlist,
        rescore="float16",
        *,
        encoder=None,
        shortlist_metric="auto",
        rescore_metric="auto",
        shortlist_weights=None,
        rescore_weights=None,
        shortlist_index="exact",
        nlist=None,
        nprobe=8,
        oversample=10,
        directory=None,
        prefit=False,
        batch_size=16384,
        random_state=None,
    ):
        self.shortlist = shortlist
        self.rescore = rescore
        self.encoder = encoder
        self.shortlist_metric = shortlist_metric
        self.rescore_metric = rescore_metric
        self.shortlist_weights = shortlist_weights
        self.rescore_weights = rescore_weights
        self.shortlist_index = shortlist_index
        self.nlist = nlist
        self.nprobe = nprobe
        self.oversample = oversample
        self.directory = directory
        self.prefit = prefit
        self.batch_size = batch_size
        self.random_state = random_state

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipeline, rescore="float16", *, X=None, **params):
        """An index whose shortlist is the pipeline's last step (a fitted code step).

        Parameters
        ----------
        pipeline : sklearn.pipeline.Pipeline
            Fitted; its last step is a :class:`~skfusion.codes.BaseCodeTransformer`,
            the steps before it (if any) are the ``encoder``.
        rescore : {"float16", "float32"} or fitted BaseQuantizer, default="float16"
            The on-disk representation of the encoder's output.
        X : array-like or texts, default=None
            Rows the lists of ``shortlist_index="ivf"`` are trained on (passed through
            the encoder; not added). Needed for "ivf" only.
        **params
            Other :class:`CodeIndex` parameters.

        Returns
        -------
        index : CodeIndex
            Fitted (``prefit=True``), empty; call :meth:`add`.
        """
        steps = getattr(pipeline, "steps", None)
        if not steps or not isinstance(steps[-1][1], BaseCodeTransformer):
            raise TypeError(
                "pipeline must be a fitted sklearn Pipeline whose last step is a code "
                f"transformer (PercentileQuantizer, AllocatedQuantizer, "
                f"RandomProjectionLSH); got {type(pipeline).__name__}."
            )
        encoder = pipeline[:-1] if len(steps) > 1 else None
        return cls(steps[-1][1], rescore, encoder=encoder, prefit=True, **params).fit(X)

    def _vectors(self, X, name, check_width=True):
        """Encoder output (or the validated float rows) as a float32 2-D array."""
        if self.encoder is not None:
            X = self.encoder.transform(X)
        X = np.asarray(X)
        if X.ndim != 2 or not np.issubdtype(X.dtype, np.floating):
            raise ValueError(
                f"{name} must be a 2-D float array (or texts, with an encoder), got "
                f"shape {X.shape} and dtype {X.dtype}."
            )
        if check_width and X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{name} has {X.shape[1]} columns but the index was fitted on "
                f"{self.n_features_in_}."
            )
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinity.")
        return np.asarray(X, dtype=np.float32)

    def _resolve_metrics(self):
        codes = self.shortlist_.code_metrics
        metric = self.shortlist_metric
        if metric == "auto":
            metric = (
                "asymmetric" if "asymmetric" in codes else self.shortlist_.symmetric_metric
            )
        if metric not in codes and metric != self.shortlist_.symmetric_metric:
            raise ValueError(
                f"shortlist_metric={metric!r} does not apply to "
                f"{type(self.shortlist_).__name__}, whose codes support {codes}."
            )
        if self.shortlist_index == "hnsw" and (
            metric not in ("hamming", "codes") or self.shortlist_.bits_.max() != 1
        ):
            raise ValueError(
                "shortlist_index='hnsw' searches packed bits by Hamming distance: it "
                "needs 1-bit codes or LSH bits with shortlist_metric 'codes' or "
                f"'hamming', got {type(self.shortlist_).__name__} with "
                f"shortlist_metric={metric!r}. Use shortlist_index='exact'."
            )
        self.shortlist_metric_ = metric
        rmetric = self.rescore_metric
        if self.rescore_ is None:
            rmetric = "cosine" if rmetric == "auto" else rmetric
            if rmetric not in ("cosine", "ip"):
                raise ValueError(
                    f"rescore_metric={rmetric!r} needs a quantizer as rescore; float "
                    "rows are rescored with 'cosine' or 'ip'."
                )
        else:
            rmetric = "asymmetric" if rmetric == "auto" else rmetric
            if rmetric not in ("asymmetric", "reconstruct") or (
                rmetric not in self.rescore_.code_metrics
            ):
                raise ValueError(
                    f"rescore_metric={rmetric!r} does not apply to the codes of "
                    f"{type(self.rescore_).__name__} (float queries against codes: "
                    f"{[m for m in self.rescore_.code_metrics if m != 'codes']})."
                )
        self.rescore_metric_ = rmetric

    def _check_weights(self, weights, name):
        if weights is None:
            return None
        w = np.asarray(weights, dtype=np.float32)
        if w.shape != (self.n_features_in_,) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(
                f"{name} must be finite non-negative weights of shape "
                f"({self.n_features_in_},), got shape {w.shape}."
            )
        return w

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Fit the code steps (unless ``prefit``) and start an empty index.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or texts, default=None
            Calibration rows (encoded by ``encoder`` first); not added to the index.
            Needed unless ``prefit=True``; with ``shortlist_index="ivf"`` they also
            train the lists (then needed with ``prefit=True`` too).
        y : None
            Ignored. Present for API consistency by convention.

        Returns
        -------
        self : CodeIndex
        """
        V = None
        if X is not None and (not self.prefit or self.shortlist_index == "ivf"):
            V = self._vectors(X, "X", check_width=False)
        self._fit_steps(V)
        self._train_lists(V)
        self._start(np.zeros((0, self.shortlist_.bytes_per_vector_), dtype=np.uint8))
        return self

    def _fit_steps(self, V):
        """Fitted (or prefit) code steps, resolved metrics and weights.

        ``V``: the float rows (encoder output) to fit the steps on, unless ``prefit``.
        """
        store = isinstance(self.rescore, str)
        if self.prefit:
            for name, est in (("shortlist", self.shortlist), ("rescore", self.rescore)):
                if not isinstance(est, str) and not _is_fitted(est):
                    raise ValueError(
                        f"prefit=True but {name} ({type(est).__name__}) is not fitted; "
                        "fit it first or set prefit=False and pass X to fit."
                    )
            self.shortlist_ = self.shortlist
            self.rescore_ = None if store else self.rescore
        else:
            if V is None:
                raise ValueError(
                    "fit needs calibration rows X unless prefit=True (fitted steps)."
                )
            self.shortlist_ = clone(self.shortlist).fit(V)
            self.rescore_ = None if store else clone(self.rescore).fit(V)
        self.n_features_in_ = int(self.shortlist_.n_features_in_)
        if (
            self.rescore_ is not None
            and self.rescore_.n_features_in_ != self.n_features_in_
        ):
            raise ValueError(
                f"shortlist was fitted on {self.n_features_in_} features but rescore on "
                f"{self.rescore_.n_features_in_}; both must encode the same vectors."
            )
        self._resolve_metrics()
        self.shortlist_weights_ = self._check_weights(
            self.shortlist_weights, "shortlist_weights"
        )
        self.rescore_weights_ = self._check_weights(self.rescore_weights, "rescore_weights")

    def _train_lists(self, V):
        """The IVF centroids (``shortlist_index="ivf"``), trained on the float rows V."""
        for name in ("nlist_", "centroids_"):
            self.__dict__.pop(name, None)  # (a previous fit's lists)
        self._lists = None
        if self.shortlist_index != "ivf":
            return
        if V is None:
            raise ValueError(
                "shortlist_index='ivf' trains its lists on the rows passed to fit: pass "
                "X to fit (with prefit=True X only trains the lists; with from_pipeline "
                "pass X=...)."
            )
        if V.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {V.shape[1]} columns but the code steps were fitted on "
                f"{self.n_features_in_}."
            )
        n = V.shape[0]
        nlist = self.nlist
        if nlist is None:
            nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        if nlist > n:
            raise ValueError(
                f"nlist={nlist} exceeds the {n} rows fit trains the lists on: pass more "
                "rows to fit or a smaller nlist."
            )
        faiss = _engine.require_faiss("shortlist_index='ivf'")
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        self.centroids_ = _engine.train_centroids(V, nlist, seed, faiss)
        self.nlist_ = int(nlist)
        self._check_nprobe()
        self._lists = self._new_lists()

    def _new_lists(self):
        """Empty faiss lists scoring the codes by the shortlist metric."""
        # Hamming of sign bits ranks as the inner product of their +-1 code vectors.
        metric = "codes" if self.shortlist_metric_ == "hamming" else self.shortlist_metric_
        table = _engine.column_values(metric, self.shortlist_)
        faiss = _engine.require_faiss("shortlist_index='ivf'")
        return _engine.CodeLists(table, self.shortlist_.bits_, self.nlist_, faiss)

    def _check_started(self):
        """Raise NotFittedError unless :meth:`fit` (or :meth:`load`) started the index."""
        check_is_fitted(self, "directory_")

    @property
    def _has_lists(self):
        """Whether the last fit trained IVF lists (kept up to date by every add)."""
        return "nlist_" in self.__dict__

    def _check_nprobe(self):
        """``nprobe`` (read at search time, so it may have been set after fit)."""
        if not self._has_lists:
            raise ValueError(
                "shortlist_index='ivf' was set after fit, which trains the lists: "
                "call fit again."
            )
        nprobe = self.nprobe
        if isinstance(nprobe, bool) or not isinstance(nprobe, Integral) or nprobe < 1:
            raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}.")
        if nprobe > self.nlist_:
            raise ValueError(
                f"nprobe={nprobe} exceeds the nlist_={self.nlist_} lists of this index: "
                f"a query visits at most every list; set nprobe to at most {self.nlist_}."
            )
        return int(nprobe)

    def _load_lists(self, path, codes, ivf_centroids, ivf_order, ivf_offsets):
        """Attach saved IVF lists after checking that they fit the codes."""
        n, nlist = codes.shape[0], ivf_centroids.shape[0]
        ok = (
            ivf_centroids.shape == (nlist, self.n_features_in_)
            and ivf_offsets.shape == (nlist + 1,)
            and ivf_order.shape == (n,)
            and ivf_offsets[0] == 0
            and ivf_offsets[-1] == n
            and bool(np.all(np.diff(ivf_offsets) >= 0))
            and np.issubdtype(ivf_order.dtype, np.integer)
            and (n == 0 or (ivf_order.min() >= 0 and ivf_order.max() < n))
            and (n == 0 or bool(np.all(np.bincount(ivf_order, minlength=n) == 1)))
        )
        if not ok:
            raise ValueError(
                f"{os.fspath(path)}: the IVF lists do not match the codes (was a file "
                "of the folder changed or replaced outside CodeIndex.save?)."
            )
        self.centroids_ = np.ascontiguousarray(ivf_centroids, dtype=np.float32)
        self.nlist_ = int(nlist)
        assignment = np.empty(n, dtype=np.int32)
        counts = np.diff(ivf_offsets)
        assignment[ivf_order] = np.repeat(np.arange(nlist, dtype=np.int32), counts)
        self._lists = self._new_lists()
        self._lists.add(self.shortlist_.to_codes(codes), assignment)

    def _start(self, codes):
        """Attach the in-RAM codes and a new, empty private working file."""
        folder = None if self.directory is None else Path(self.directory)
        if folder is None:
            self.directory_ = Path(tempfile.mkdtemp(prefix="skfusion-index-"))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self.directory_ = folder
        self._new_working_file(temporary_folder=folder is None)
        # With IVF lists the codes live in them only (one copy in RAM).
        self._codes = None if self._has_lists else codes
        self._faiss_index = None
        self._open()

    def _new_working_file(self, temporary_folder=False):
        """A new private file in ``directory_``; the previous one is released.

        Only this index writes to it, so no other index (in this process or another)
        can truncate the file this one has mapped, nor can this one touch theirs.
        """
        self._release()
        fd, name = tempfile.mkstemp(
            dir=self.directory_, prefix=".rescore-", suffix=".bin.tmp"
        )
        os.close(fd)
        self._rows_path = Path(name)
        self._owned = True
        folder = self.directory_ if temporary_folder else None
        self._cleanup = weakref.finalize(self, _remove_private, name, folder)

    def _release(self):
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()
        self._cleanup = None

    def __getstate__(self):
        state = dict(super().__getstate__())  # (may be the live __dict__)
        # A copy shares no working file: it copies the rows on its first add.
        state.pop("_cleanup", None)
        if "_owned" in state:
            state["_owned"] = False
        return state

    @property
    def _disk_dtype(self):
        return np.uint8 if self.rescore_ is not None else _FLOAT_STORES[self.rescore]

    @property
    def _disk_width(self):
        if self.rescore_ is not None:
            return self.rescore_.bytes_per_vector_
        return self.n_features_in_

    @property
    def codes_(self):
        """The packed in-RAM codes, in insertion order (IVF: rebuilt, a copy)."""
        if "_codes" not in self.__dict__:
            raise AttributeError("codes_")  # (not fitted)
        if self._codes is None:
            return self.shortlist_.to_packed(self._lists.codes()[0])
        return self._codes

    @property
    def n_vectors_(self):
        """Number of vectors in the index."""
        return self._codes.shape[0] if self._codes is not None else self._lists.ntotal

    @property
    def ram_bytes_per_vector_(self):
        """Bytes per vector held in RAM: the shortlist's codes (IVF: and faiss's id)."""
        if self._codes is None:
            return self._lists.code_size + 8
        return self.shortlist_.bytes_per_vector_

    @property
    def disk_bytes_per_vector_(self):
        """Bytes per vector in the on-disk file."""
        return self._disk_width * np.dtype(self._disk_dtype).itemsize

    def _open(self):
        """Map the on-disk file (read-only); None while it is empty."""
        n = self.n_vectors_
        path = self._rows_path
        size = path.stat().st_size
        expected = n * self.disk_bytes_per_vector_
        if size != expected:
            raise ValueError(
                f"{path} holds {size} bytes but {n} vectors of "
                f"{self.disk_bytes_per_vector_} bytes need {expected}: the index files "
                "do not belong together (was a file of the folder changed or replaced "
                "outside CodeIndex.save?)."
            )
        self.rescore_rows_ = (
            np.memmap(path, dtype=self._disk_dtype, mode="r", shape=(n, self._disk_width))
            if n
            else None
        )

    def _write_rows(self, f):
        """Copy the mapped on-disk rows (not the path, which a save may have replaced)."""
        if self.rescore_rows_ is None:
            return
        flat = self.rescore_rows_.reshape(-1).view(np.uint8)
        for s in range(0, flat.size, _COPY_BYTES):
            f.write(flat[s : s + _COPY_BYTES].tobytes())

    # -- adding and searching -----------------------------------------------------
    def add(self, X):
        """Encode rows and append them (codes to RAM, the rescoring rows to disk).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_) or texts
            Float vectors, or texts when the index has an ``encoder``.

        Returns
        -------
        self : CodeIndex
            Row ``i`` of the ``j``-th added batch has index ``n_vectors_`` (before the
            call) + ``i``.
        """
        self._check_started()
        V = self._vectors(X, "X")
        codes = self.shortlist_.to_packed(self.shortlist_.transform(V))
        if self._codes is None:
            # Filed by the float vector, before anything is written.
            assignment = _engine.assign_lists(V, self.centroids_)
        if self.rescore_ is not None:
            fine = self.rescore_.to_packed(self.rescore_.transform(V))
        else:
            fine = V.astype(self._disk_dtype)
        if not self._owned:
            # A loaded (or copied) index maps files it does not own: copy on write.
            self._new_working_file()
            with open(self._rows_path, "wb") as f:
                self._write_rows(f)
        with open(self._rows_path, "ab") as f:
            f.write(np.ascontiguousarray(fine).tobytes())
        if self._codes is None:
            self._lists.add(self.shortlist_.to_codes(codes), assignment)
        else:
            self._codes = np.concatenate([self._codes, codes])
        self._faiss_index = None
        self._open()
        return self

    def _shortlist_queries(self, Q):
        if self.shortlist_metric_ in ("asymmetric", "reconstruct"):
            return Q
        return self.shortlist_.to_packed(self.shortlist_.transform(Q))

    def _shortlist(self, Q, k2):
        """Best ``k2`` rows of every query by the in-RAM codes, best first (PAD: -1)."""
        queries = self._shortlist_queries(Q)
        if self.shortlist_index == "hnsw":
            if self._faiss_index is None:
                self._faiss_index = build_faiss_index(self.codes_, kind="hnsw")
            _, idx = self._faiss_index.search(np.ascontiguousarray(queries), k2)
            return idx.astype(np.int64)
        if self.shortlist_metric_ == "hamming" and self.shortlist_index == "exact":
            _, idx = search(
                queries,
                self.codes_,
                k2,
                metric="hamming",
                quantizer=self.shortlist_,
                batch_size=self.batch_size,
            )
            return idx
        # Float32 code similarity: the rescoring orders the candidates exactly, so no
        # float64 pass is needed here. Hamming of sign bits ranks as the inner
        # product of their +-1 code vectors ("codes"), ties included.
        metric = "codes" if self.shortlist_metric_ == "hamming" else self.shortlist_metric_
        if self.shortlist_index == "ivf":
            nprobe = self._check_nprobe()
            space = _engine.VectorSpace(
                metric, queries, None, self.shortlist_, self.shortlist_weights_
            )
            lists = _engine.probe_lists(Q, self.centroids_, nprobe)
            return self._lists.search(space.Q, lists, k2)
        space = _engine.VectorSpace(
            metric, queries, self.codes_, self.shortlist_, self.shortlist_weights_
        )
        m, n = space.Q.shape[0], self.n_vectors_
        out = np.empty((m, k2), dtype=np.int64)
        q_step = max(1, _engine.BLOCK_SCORES // self.batch_size)
        for s in range(0, m, q_step):
            Qb = space.Q[s : s + q_step]
            out[s : s + q_step] = _engine.candidates(space, Qb, n, k2, self.batch_size)[1]
        return out

    def shortlist_search(self, queries, k=10):
        """The first stage alone: the ``k`` best rows by the in-RAM codes.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_features_in_) or texts
            Float vectors, or texts when the index has an ``encoder``.
        k : int, default=10
            Candidates per query (at most ``n_vectors_``).

        Returns
        -------
        indices : ndarray of shape (n_queries, k), dtype int64
            Best first by ``shortlist_metric_`` (IVF lists of codes of at most 4 bits
            a column: by faiss fast-scan's rounded scores), ties by lower index for
            the exact and IVF shortlists, though IVF may keep any of the rows tied at
            the ``k``-th place; -1 pads rows an HNSW or IVF search could not fill.
        """
        self._check_started()
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if self.n_vectors_ == 0:
            raise ValueError("The index is empty: add vectors before searching.")
        return self._shortlist(self._vectors(queries, "queries"), min(k, self.n_vectors_))

    def search(self, queries, k=10, *, oversample=None):
        """The best ``k`` rows for every query: shortlist on codes, rescore from disk.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_features_in_) or texts
            Float vectors, or texts when the index has an ``encoder``.
        k : int, default=10
            Results per query (at most ``n_vectors_``).
        oversample : int, default=None
            Overrides the ``oversample`` parameter for this call.

        Returns
        -------
        scores : ndarray of shape (n_queries, k), dtype float64
            Rescoring similarities (exact float64 dot products of the float32 vectors
            :func:`skfusion.search.search` compares for ``rescore_metric_``).
        indices : ndarray of shape (n_queries, k), dtype int64
            Rows in insertion order, best first; equal scores by lower index. -1 (score
            ``-inf``) pads a query whose approximate shortlist ("hnsw", "ivf") found
            fewer than ``k`` rows.
        """
        self._check_started()
        oversample = self.oversample if oversample is None else oversample
        for name, value in (("k", k), ("oversample", oversample)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.n_vectors_ == 0:
            raise ValueError("The index is empty: add vectors before searching.")
        Q = self._vectors(queries, "queries")
        k = min(int(k), self.n_vectors_)
        k2 = min(self.n_vectors_, k * int(oversample))
        cand = self._shortlist(Q, k2)
        space = _engine.VectorSpace(
            self.rescore_metric_,
            Q,
            self.rescore_rows_,
            self.rescore_,
            self.rescore_weights_,
        )
        return _engine.score_candidates(space, space.Q, cand, k)

    # -- persistence --------------------------------------------------------------
    def save(self, path):
        """Write the index to a folder as a new version, atomically.

        The files of the version (skops steps, npz codes, the raw on-disk rows) get
        new names and ``meta.json``, written last by an atomic rename, switches to
        them; the previous version's files are then deleted. An interrupted save
        leaves the previous version loadable, and indexes loaded from the folder keep
        working (their rows stay mapped). A save holds the folder's lock file
        (``.skfusion-index.lock``): a concurrent save to the same folder fails with a
        clear error instead of mixing files.

        Parameters
        ----------
        path : str or path-like
            Folder (created); an index saved there before is replaced.
        """
        self._check_started()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with _folder_lock(path, exclusive=True):
            old = _saved_files(path)
            version = uuid.uuid4().hex[:16]
            files = {}
            try:
                rows_name = old.get("rows") if old else None
                if (
                    self._owned
                    or rows_name is None
                    or not (path / rows_name).is_file()
                    or not (path / rows_name).samefile(self._rows_path)
                ):
                    # (A loaded, unchanged index saved back in place keeps its rows.)
                    rows_name = f"rescore-{version}.bin"
                    files["rows"] = rows_name
                    write_atomically(path / rows_name, self._write_rows)
                steps = {
                    "shortlist": self.shortlist_,
                    "rescore": self.rescore_,
                    "encoder": self.encoder,
                }
                for name, est in steps.items():
                    if est is not None:
                        files[name] = f"{name}-{version}.skops"
                        dump(est, path / files[name])
                arrays = {"codes": self._codes}
                for name in ("shortlist_weights", "rescore_weights"):
                    if getattr(self, name + "_") is not None:
                        arrays[name] = getattr(self, name + "_")
                if self._codes is None:
                    codes, assignment = self._lists.codes()
                    arrays["codes"] = self.shortlist_.to_packed(codes)
                    order, offsets = _engine.inverted_lists(assignment, self.nlist_)
                    arrays["ivf_centroids"] = self.centroids_
                    arrays["ivf_order"] = order
                    arrays["ivf_offsets"] = offsets
                files["arrays"] = f"arrays-{version}.npz"
                write_atomically(path / files["arrays"], lambda f: np.savez(f, **arrays))
                files["rows"] = rows_name
                meta = {
                    "format": _FORMAT,
                    "files": files,
                    "rescore": self.rescore if isinstance(self.rescore, str) else None,
                    "n_vectors": self.n_vectors_,
                    **{
                        p: getattr(self, p)
                        for p in (
                            "shortlist_metric",
                            "rescore_metric",
                            "shortlist_index",
                            "oversample",
                            "batch_size",
                        )
                    },
                }
                if self.shortlist_index == "ivf" or self._has_lists:
                    # (Only then, so that other indexes stay readable by older
                    # versions.) random_state only matters to a refit; a RandomState
                    # instance cannot be written as JSON and is saved as None.
                    rs = self.random_state
                    meta.update(
                        nlist=self.nlist,
                        nprobe=self.nprobe,
                        random_state=rs if rs is None or isinstance(rs, int) else None,
                    )
                payload = json.dumps(meta, indent=1).encode()
                write_atomically(path / "meta.json", lambda f: f.write(payload))
            except BaseException:
                for name in files.values():
                    if name != (old or {}).get("rows"):
                        (path / name).unlink(missing_ok=True)
                raise
            # The new version is in place; files of older ones (and of saves that were
            # interrupted) go. Loaders hold the shared lock, so none is reading them.
            keep = set(files.values())
            stale = set((old or {}).values()) | {
                p.name for p in path.iterdir() if _VERSIONED.fullmatch(p.name)
            }
            for name in stale - keep:
                (path / name).unlink(missing_ok=True)

    @classmethod
    def load(cls, path, *, trusted_members=None):
        """Read an index written by :meth:`save`; its on-disk rows stay in that folder.

        Only skfusion's own classes and the scikit-learn / numpy types skops trusts
        are built (:func:`skfusion.persistence.load`); arrays load without pickle.

        Parameters
        ----------
        path : str or path-like
            Folder written by :meth:`save`.
        trusted_members : list of str, default=None
            Member references of the encoder you trust (import references, remote
            endpoints), as for :func:`skfusion.persistence.load`.

        Returns
        -------
        index : CodeIndex
            Maps the folder's rows read-only: the folder changes only when
            :meth:`save` writes to it. The first :meth:`add` copies the rows to a
            private working file in the folder, and :meth:`fit` starts a new one.
        """
        path = Path(path)
        if not (path / "meta.json").is_file():
            raise FileNotFoundError(f"{os.fspath(path)} holds no CodeIndex (no meta.json).")
        with _folder_lock(path, exclusive=False):
            meta = json.loads((path / "meta.json").read_text())
            files = _saved_files(path, meta)
            with np.load(path / files["arrays"], allow_pickle=False) as arrays:
                codes = arrays["codes"]
                weights = {
                    n: arrays[n]
                    for n in ("shortlist_weights", "rescore_weights")
                    if n in arrays
                }
                lists = {
                    n: arrays[n]
                    for n in ("ivf_centroids", "ivf_order", "ivf_offsets")
                    if n in arrays
                }
            steps = {
                name: (
                    load(path / files[name], trusted_members=trusted_members)
                    if name in files
                    else None
                )
                for name in ("shortlist", "rescore", "encoder")
            }
            rescore = meta.pop("rescore") or steps["rescore"]
            n = meta.pop("n_vectors")
            for key in ("format", "files"):
                meta.pop(key, None)
            index = cls(
                steps["shortlist"],
                rescore,
                encoder=steps["encoder"],
                directory=path,
                prefit=True,
                **weights,
                **meta,
            )
            if codes.shape[0] != n:
                raise ValueError(
                    f"{os.fspath(path)}: codes and meta.json disagree on rows."
                )
            index._validate_params()
            index._fit_steps(None)
            index.directory_ = path
            index._cleanup = None
            index._rows_path = path / files["rows"]
            index._owned = False
            index._faiss_index = None
            index._lists = None
            if lists:
                index._load_lists(path, codes, **lists)
            index._codes = None if lists else codes
            index._open()  # checks the file size against the codes; maps it read-only
        return index


def _saved_files(path, meta=None):
    """The file names of the version ``meta.json`` names (None: no index there)."""
    if meta is None:
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == _FORMAT_1:
        return {k: v for k, v in _FILES_1.items() if (path / v).exists()}
    if fmt != _FORMAT or not isinstance(meta.get("files"), dict):
        if isinstance(fmt, str) and fmt.startswith("skfusion-code-index"):
            raise ValueError(
                f"{os.fspath(path)} holds a {fmt} folder, which this skfusion cannot "
                f"read (it reads {_FORMAT_1} and {_FORMAT})."
            )
        raise ValueError(f"{os.fspath(path)} is not a {_FORMAT} folder.")
    return dict(meta["files"])


# -- faiss --------------------------------------------------------------------------
@validate_params(
    {
        "X": ["array-like"],
        "kind": [StrOptions({"flat", "hnsw", "ivf"})],
        "M": [Interval(Integral, 2, None, closed="left")],
        "ef_construction": [Interval(Integral, 1, None, closed="left")],
        "ef_search": [Interval(Integral, 1, None, closed="left")],
        "nlist": [Interval(Integral, 1, None, closed="left"), None],
        "nprobe": [Interval(Integral, 1, None, closed="left")],
        "quantizer": [BaseCodeTransformer, None],
    },
    prefer_skip_nested_validation=True,
)
def build_faiss_index(
    X,
    kind="hnsw",
    *,
    M=32,
    ef_construction=40,
    ef_search=64,
    nlist=None,
    nprobe=8,
    quantizer=None,
):
    """A faiss index over skfusion output, built and filled in one call.

    uint8 rows are packed bits (LSH bits, 1-bit codes): a binary index, Hamming
    distance (smaller is closer). Float rows: an inner-product index (L2-normalise the
    rows first for cosine).

    Parameters
    ----------
    X : array-like of shape (n_rows, width)
        Packed uint8 bits or float rows to index.
    kind : {"flat", "hnsw", "ivf"}, default="hnsw"
        Exact flat index, HNSW graph or inverted file (k-means trained on ``X``).
    M : int, default=32
        HNSW neighbours per node.
    ef_construction, ef_search : int, default=40, 64
        HNSW build / search beam widths (``ef_search`` can be changed later on
        ``index.hnsw.efSearch``).
    nlist : int, default=None
        IVF lists; None: ``4 * sqrt(n_rows)``, at most ``n_rows // 39``.
    nprobe : int, default=8
        IVF lists visited per query (``index.nprobe``).
    quantizer : BaseCodeTransformer, default=None
        The estimator that made uint8 rows: checked to make packed bits whose symmetric
        similarity is Hamming (``RandomProjectionLSH``, 1-bit percentile codes).
        Multi-bit codes have no faiss equivalent: use :class:`CodeIndex`.

    Returns
    -------
    index : faiss.Index or faiss.IndexBinary

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion import RandomProjectionLSH
    >>> from skfusion.index import build_faiss_index
    >>> X = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    >>> lsh = RandomProjectionLSH(n_bits=64, random_state=0).fit(X)
    >>> bits = lsh.transform(X)
    >>> index = build_faiss_index(bits, "hnsw", quantizer=lsh)
    >>> distances, ids = index.search(bits[:2], 1)
    >>> ids.ravel()
    array([0, 1])
    """
    faiss = _engine.require_faiss("build_faiss_index")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}.")
    n, width = X.shape
    if nlist is None:
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    if kind == "ivf" and nlist > n:
        raise ValueError(f"nlist={nlist} exceeds the {n} rows to train the IVF on.")
    if X.dtype == np.uint8:
        if quantizer is not None:
            check_is_fitted(quantizer)
            if quantizer.bits_.max() != 1 or X.shape[1] != quantizer.bytes_per_vector_:
                raise ValueError(
                    f"faiss binary indexes compare packed bits by Hamming distance; the "
                    f"{type(quantizer).__name__} codes ({quantizer.n_bits_} codes of up "
                    f"to {int(quantizer.bits_.max())} bits) are not packed bits of "
                    f"{X.shape[1]} bytes. Use CodeIndex for multi-bit codes."
                )
        d = 8 * width
        if kind == "flat":
            index = faiss.IndexBinaryFlat(d)
        elif kind == "hnsw":
            index = faiss.IndexBinaryHNSW(d, M)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        else:
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, nlist)
            index.nprobe = nprobe
        X = np.ascontiguousarray(X)
    elif np.issubdtype(X.dtype, np.floating):
        if quantizer is not None:
            raise ValueError("quantizer applies to uint8 codes; X holds float rows.")
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            index = faiss.IndexFlatIP(width)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(width, M, ip)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, nlist, ip)
            index.nprobe = nprobe
        X = np.ascontiguousarray(X, dtype=np.float32)
    else:
        raise TypeError(
            f"X must hold packed uint8 bits or float rows, got dtype {X.dtype}."
        )
    if not index.is_trained:
        index.train(X)
    index.add(X)
    return index


def save_faiss_index(index, path):
    """Write a faiss index (binary or float) to ``path``.

    Parameters
    ----------
    index : faiss.Index or faiss.IndexBinary
    path : str or path-like

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from skfusion import RandomProjectionLSH
    >>> from skfusion.index import build_faiss_index, load_faiss_index, save_faiss_index
    >>> X = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    >>> lsh = RandomProjectionLSH(64, random_state=0).fit(X)
    >>> index = build_faiss_index(lsh.transform(X), "flat", quantizer=lsh)
    >>> path = tempfile.mkdtemp() + "/bits.faiss"
    >>> save_faiss_index(index, path)
    >>> load_faiss_index(path).ntotal
    500
    """
    faiss = _engine.require_faiss("save_faiss_index")
    write = (
        faiss.write_index_binary
        if isinstance(index, faiss.IndexBinary)
        else faiss.write_index
    )
    write(index, os.fspath(path))


def load_faiss_index(path):
    """Read an index written by :func:`save_faiss_index` (binary or float).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    index : faiss.Index or faiss.IndexBinary

    Examples
    --------
    Float rows give a float index (inner product), read back with its rows:

    >>> import tempfile
    >>> import numpy as np
    >>> from skfusion import index as skindex
    >>> rows = np.eye(4, dtype=np.float32)
    >>> path = tempfile.mkdtemp() + "/rows.faiss"
    >>> skindex.save_faiss_index(skindex.build_faiss_index(rows, "flat"), path)
    >>> scores, ids = skindex.load_faiss_index(path).search(rows[2:3], 1)
    >>> ids.tolist()
    [[2]]
    """
    faiss = _engine.require_faiss("load_faiss_index")
    path = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"No such faiss index file: {path!r}.")
    try:
        return faiss.read_index(path)
    except RuntimeError:
        return faiss.read_index_binary(path)
