"""Encode a large corpus with a fitted pipeline on a Dask cluster.

:func:`transform` takes texts as a ``dask.bag``, a ``dask.dataframe`` column or a list of
JSONL files, encodes them on the cluster's workers and returns the codes as a
``dask.array`` or writes them as ``.npy`` shards with their ids, in input order and
bitwise identical to one process calling ``pipeline.transform`` on all the texts (CPU,
same number of torch threads, no embedding cache).

The worker side is engine-agnostic: :func:`encode_partition` encodes one partition and
:func:`write_shard` writes one shard atomically, so Ray or a batch system can call them
directly. :func:`read_shards` reads a finished shard directory back.
"""

import collections
import contextlib
import hashlib
import json
import math
import os
import pickle
import sys
import threading
import uuid
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from ._compat import HasMethods, Interval, StrOptions, validate_params
from ._io import write_atomically
from ._text import check_texts
from .datasets import load_passage_ids, load_passages
from .embedder import CallPlan, ConcatEmbedder
from .evaluation import encode

__all__ = [
    "encode_on_cluster",
    "encode_partition",
    "read_shards",
    "transform",
    "write_shard",
]

_MANIFEST = "manifest.json"
# One lock per worker process: tasks on several threads of one worker share its copy of
# the pipeline, whose members load lazily on first use.
_LOAD_LOCK = threading.Lock()


def _first_step(pipeline):
    if isinstance(pipeline, Pipeline):
        return pipeline.steps[0][1]
    return pipeline


@validate_params(
    {
        "pipeline": [HasMethods(["transform"])],
        "texts": ["array-like"],
        "role": [StrOptions({"query", "document"}), None],
    },
    prefer_skip_nested_validation=True,
)
def encode_partition(pipeline, texts, *, role=None):
    """Encode one partition of texts with a fitted pipeline (the worker-side step).

    Engine-agnostic: a Dask, Ray or batch-system task that holds the fitted pipeline calls
    it on its share of the texts. The pipeline's members load on first use and stay
    loaded, so a worker process that keeps the pipeline object loads each member once.

    Parameters
    ----------
    pipeline : Pipeline or ConcatEmbedder
        Fitted; its first step embeds text.
    texts : list of str
        The partition's texts.
    role : {"query", "document"} or None, default=None
        ``None`` calls ``pipeline.transform`` (the embedder's own ``prompt_name``);
        ``"query"`` / ``"document"`` encode with that prompt, as
        :func:`skfusion.evaluation.encode` does.

    Returns
    -------
    codes : ndarray of shape (n_texts, n_features_out)
        The pipeline's output as a numpy array, one row per text, in order.

    See Also
    --------
    transform : Runs this function on a Dask cluster.
    write_shard : Writes its output atomically.

    Examples
    --------
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion import ConcatEmbedder
    >>> from skfusion.distributed import encode_partition
    >>> texts = ["apt installs packages", "vim edits text", "git tracks changes"]
    >>> embedder = ConcatEmbedder([("tfidf", TfidfVectorizer())]).fit(texts)
    >>> encode_partition(embedder, texts[:2]).shape
    (2, 9)
    """
    texts = list(texts)
    with _LOAD_LOCK:
        out = pipeline.transform(texts) if role is None else encode(pipeline, texts, role)
    return np.asarray(out)


def write_shard(path, codes, ids):
    """Write one shard, ``path`` (codes) and ``path + ".ids.json"``, atomically.

    Each file is written under a temporary name and renamed into place, ids first, so a
    task killed mid-write leaves no partial shard and a retried task overwrites the
    shard with identical content. The layout is the one ``skfusion encode`` writes.

    Parameters
    ----------
    path : str or path-like
        The ``.npy`` file to write.
    codes : ndarray of shape (n_rows, n_features)
        The shard's codes.
    ids : list of str or int
        One id per row.

    Returns
    -------
    n_rows : int
        ``len(codes)``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from skfusion.distributed import write_shard
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_shard(folder / "part-00000.npy", np.zeros((2, 4), np.uint8), ["a", "b"])
    2
    >>> sorted(p.name for p in folder.iterdir())
    ['part-00000.npy', 'part-00000.npy.ids.json']
    """
    path = Path(path)
    codes = np.asarray(codes)
    ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
    if len(ids) != len(codes):
        raise ValueError(f"ids has {len(ids)} entries for {len(codes)} rows of codes.")
    payload = json.dumps(ids).encode()
    write_atomically(path.with_name(path.name + ".ids.json"), lambda f: f.write(payload))
    write_atomically(path, lambda f: np.save(f, codes, allow_pickle=False))
    return len(codes)


def read_shards(directory):
    """Read the shards written by :func:`transform`, in input order.

    Parameters
    ----------
    directory : str or path-like
        The ``out_dir`` given to :func:`transform`; it holds ``manifest.json``.

    Returns
    -------
    ids : list
        One id per row.
    codes : ndarray of shape (n_rows, n_features)
        All shards' codes, concatenated in input order.

    Examples
    --------
    >>> import tempfile
    >>> from skfusion.distributed import read_shards
    >>> read_shards(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    FileNotFoundError: ...manifest.json not found: ...
    """
    directory = Path(directory)
    manifest = directory / _MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} not found: the directory holds no finished "
            "skfusion.distributed.transform output (the manifest is written last)."
        )
    meta = json.loads(manifest.read_text())
    ids, blocks = [], []
    for shard in meta["shards"]:
        ids.extend(json.loads((directory / shard["ids"]).read_text()))
        blocks.append(np.load(directory / shard["codes"], allow_pickle=False))
    width = meta["n_features"]
    codes = (
        np.concatenate(blocks)
        if blocks
        else np.zeros((0, width), dtype=np.dtype(meta["dtype"]))
    )
    return ids, codes


# -- worker side: module-level functions, so tasks pickle them by reference ------------

# Per worker process: the unpickled pipeline of each running job, so that each worker
# loads the pipeline and its members once, however many tasks it runs. The driver drops
# a job's entry on every worker when the job ends (_forget); _FORGOTTEN remembers ended
# jobs, so a task of one that was still running does not put its pipeline back.
_PIPELINES = {}
_FORGOTTEN = collections.deque(maxlen=1024)


def _read_file(path):
    """(ids or None, texts) of one passage file, read as ``skfusion encode`` reads it."""
    return load_passage_ids(path), load_passages(path)


def _read_bag(items):
    items = list(items)
    pairs = [isinstance(x, tuple) for x in items]
    if not any(pairs):
        return None, items
    if not all(pairs) or any(len(x) != 2 for x in items):
        raise ValueError(
            "texts: a dask.bag must hold either str (ids are positions) or (id, text) "
            "pairs, not a mix."
        )
    return [x[0] for x in items], [x[1] for x in items]


def _read_series(series):
    return series.index.tolist(), series.tolist()


def _sketch(partition, number):
    """Text lengths and 16-byte digests of one partition: all that planning needs."""
    texts = check_texts(partition[1], input_name=f"input partition {number}: texts")
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    digests = b"".join(
        hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        for t in texts
    )
    return lengths, np.frombuffer(digests, dtype="S16")


def _texts_array(partition):
    out = np.empty(len(partition[1]), dtype=object)
    out[:] = partition[1]
    return out


def _ids(partition, offset):
    ids, texts = partition
    return list(range(offset, offset + len(texts))) if ids is None else list(ids)


def _worker_name():
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        name = f"pid{os.getpid()}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# glibc's mallopt parameter for the mmap threshold (malloc.h) and the value set: the
# largest the dynamic threshold itself would reach on 64-bit.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def _raise_mmap_threshold():
    """Let torch's activation buffers come from the heap again on a Dask worker.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, and setting it
    makes glibc freeze its mmap threshold at 128 KiB: every buffer above that is then
    mapped, page-faulted and unmapped on each forward pass, which made MiniLM 23%
    slower per core here (benchmarks/results/distributed_speed.md). Raising the mmap
    threshold alone restores the speed and leaves the trim threshold, Dask's way of
    returning freed memory to the OS, as it is. A no-op off glibc.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def _worker_pipeline(blob, token, cache_dir, device):
    with _LOAD_LOCK:
        pipeline = _PIPELINES.get(token)
        if pipeline is None:
            _raise_mmap_threshold()
            pipeline = pickle.loads(blob)
            embedder = _first_step(pipeline)
            if isinstance(embedder, ConcatEmbedder):
                params = {"show_progress_bar": False}
                if cache_dir is not None:
                    params["cache_dir"] = os.path.join(cache_dir, _worker_name())
                if device is not None:
                    params["device"] = device
                embedder.set_params(**params)
            _PIPELINES[token] = pipeline
            if token in _FORGOTTEN:  # the job ended meanwhile (see _forget)
                _PIPELINES.pop(token, None)
    return pipeline


def _encode_task(blob, token, texts, role, cache_dir, device):
    pipeline = _worker_pipeline(blob, token, cache_dir, device)
    return encode_partition(pipeline, list(texts), role=role)


def _forget(token):
    # Runs on the worker's event loop: no lock (a task may hold _LOAD_LOCK for a
    # while). Recorded first, dropped second: with _worker_pipeline's store-then-check,
    # the pipeline ends up dropped whichever order the two threads run in.
    _FORGOTTEN.append(token)
    _PIPELINES.pop(token, None)


# -- driver side -----------------------------------------------------------------------


def _input_partitions(texts):
    """One ``Delayed`` per input partition, each computing ``(ids or None, texts)``."""
    import dask.bag as db
    from dask import delayed

    if isinstance(texts, db.Bag):
        return [delayed(_read_bag)(d) for d in texts.to_delayed()]
    with contextlib.suppress(ImportError):
        import dask.dataframe as dd

        if isinstance(texts, dd.Series):
            return [delayed(_read_series)(d) for d in texts.to_delayed()]
        if isinstance(texts, dd.DataFrame):
            raise ValueError(
                "texts is a dask DataFrame; pass its text column, e.g. df['text'] "
                "(its index gives the ids)."
            )
    if isinstance(texts, (list, tuple)) and texts:
        for i, p in enumerate(texts):
            if not isinstance(p, (str, os.PathLike)) or not Path(p).is_file():
                raise ValueError(
                    f"texts[{i}] = {p!r:.80} is not an existing file; a list is read as "
                    "passage files (.jsonl[.gz] or .txt[.gz]). Pass texts themselves as "
                    "dask.bag.from_sequence(texts, npartitions=...)."
                )
        return [delayed(_read_file)(os.fspath(p)) for p in texts]
    raise ValueError(
        "texts must be a dask.bag of str or (id, text) pairs, a dask.dataframe column "
        f"of str, or a non-empty list of passage files; got {type(texts).__name__}."
    )


def _tasks(plan, texts_per_task, threads=1):
    """Cut the embedder's call plan into encoding tasks.

    Returns the global positions of the distinct texts in encoding order, the sizes of
    the encoding tasks (consecutive runs of that order), and for every input row the
    position of its text in the concatenated task outputs. Each task is whole model
    calls of every member: a worker's ``transform`` of a task's texts (already distinct
    and in order) then plans exactly the calls the one-process plan has there, so the
    codes are bitwise equal. ``texts_per_task=None`` gives up to 4,096 texts per task,
    fewer where that leaves ``threads`` worker threads without about four tasks each.
    """
    n = len(plan.order)
    if texts_per_task is None:
        texts_per_task = max(1, min(4096, -(-n // (4 * max(threads, 1)))))
    unit = math.lcm(*plan.call_sizes)  # a call boundary of every member
    per_task = -(-texts_per_task // unit) * unit
    sizes = tuple(min(per_task, n - s) for s in range(0, n, per_task))
    rank = np.empty(n, dtype=np.int64)
    rank[plan.order] = np.arange(n)
    return plan.unique[plan.order], sizes, rank[plan.inverse]


def _output_shape(pipeline, worker, client):
    """(width, dtype) of the pipeline's output, loading no model where possible."""
    embedder = _first_step(pipeline)
    if isinstance(embedder, ConcatEmbedder):
        x = np.zeros((1, embedder.n_features_out_), dtype=np.float32)
        if isinstance(pipeline, Pipeline):
            for _, step in pipeline.steps[1:]:
                if step not in (None, "passthrough"):
                    x = np.asarray(step.transform(x))
        return x.shape[1], x.dtype
    probe = np.array([""], dtype=object)
    w = worker
    out = client.submit(
        _encode_task, w.blob, w.token, probe, w.role, w.cache_dir, w.device, pure=False
    ).result()
    return out.shape[1], out.dtype


def _show_progress(client, futures):
    """Dask's text progress bar on stderr (stdout is the caller's, e.g. the CLI's)."""
    from distributed import futures_of
    from distributed.diagnostics.progressbar import TextProgressBar

    class _StderrProgressBar(TextProgressBar):
        # TextProgressBar draws on sys.stdout; these two methods are its drawing.
        def _draw_bar(self, remaining, all, **kwargs):
            frac = (1 - remaining / all) if all else 1.0
            bar = "#" * int(self.width * frac)
            msg = f"\r[{bar:<{self.width}}] | {int(100 * frac)}% Completed"
            with contextlib.suppress(ValueError):
                sys.stderr.write(msg)
                sys.stderr.flush()

        def _draw_stop(self, **kwargs):
            with contextlib.suppress(ValueError):
                sys.stderr.write("\33[2K\r")
                sys.stderr.flush()

    # The client's own scheduler: the bar would otherwise look for a default client,
    # which encode_on_cluster's (set_as_default=False) is not.
    _StderrProgressBar(futures_of(futures), scheduler=client.scheduler.address)


def _run(client, futures, progress):
    if progress:
        _show_progress(client, futures)
    return client.gather(futures)


def _forget_everywhere(client, token):
    with contextlib.suppress(Exception):  # a closed client has no workers left to clean
        client.run(_forget, token)


def _forget_when_done(client, futures, token):
    """Drop the job's pipeline on the workers once all ``futures`` ended, any way."""
    pending = {f.key for f in futures}
    lock = threading.Lock()

    def done(future):
        with lock:
            pending.discard(future.key)
            last = not pending
        if last:
            _forget_everywhere(client, token)

    if not futures:
        _forget_everywhere(client, token)
    for f in futures:
        f.add_done_callback(done)


def _check_out_dir(out_dir):
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(
            f"out_dir {str(out_dir)!r} exists and is not an empty directory; give a new "
            "directory (shards of another job would mix with this one's)."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


@validate_params(
    {
        "pipeline": [HasMethods(["transform"])],
        "texts": "no_validation",
        "out_dir": [str, os.PathLike, None],
        "role": [StrOptions({"query", "document"}), None],
        "client": "no_validation",
        "texts_per_task": [Interval(Integral, 1, None, closed="left"), None],
        "cache_dir": [str, os.PathLike, None],
        "device": [str, None],
        "progress": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def transform(
    pipeline,
    texts,
    *,
    out_dir=None,
    role=None,
    client=None,
    texts_per_task=None,
    cache_dir=None,
    device=None,
    progress=True,
):
    """Encode a large corpus with a fitted pipeline on a Dask cluster.

    The pipeline is pickled once and sent once to each worker, which unpickles it once
    and keeps it for all its tasks of this call, and drops it when the call's job ends
    (done or failed); members given by name or path load lazily there, once per
    worker and call. Texts are read on the workers, de-duplicated and cut into encoding
    tasks from the embedder's call plan (:meth:`ConcatEmbedder.call_plan
    <skfusion.ConcatEmbedder.call_plan>`: distinct texts, longest first, in whole model
    calls of every member), so the codes are bitwise identical to
    ``pipeline.transform(all_texts)`` in one process on the same kind of device with the
    same number of torch threads. Lost tasks (a worker that dies) are recomputed by Dask;
    shards are written atomically, so a retried task neither duplicates nor truncates
    one.

    Parameters
    ----------
    pipeline : Pipeline or ConcatEmbedder
        Fitted; its first step embeds text (a :class:`~skfusion.ConcatEmbedder` or any
        transformer of a list of str).
    texts : dask.bag.Bag, dask.dataframe.Series or list of path-like
        The corpus: a bag of ``str`` (ids are positions ``0, 1, ...``) or of
        ``(id, text)`` pairs; a dask dataframe column of ``str`` (ids are its index);
        or a list of passage files (``.jsonl[.gz]``, title and text joined as
        :func:`skfusion.datasets.load_passages` does, ids from ``_id``; or ``.txt[.gz]``
        with one passage per line, ids are positions), one input partition per file.
    out_dir : str or path-like, default=None
        A new (or empty) directory for the shards: ``part-00000.npy`` (codes) and
        ``part-00000.npy.ids.json`` (ids) per input partition, in input order, and
        ``manifest.json``, written last. ``None`` returns a ``dask.array`` instead.
    role : {"query", "document"} or None, default=None
        ``None`` calls ``pipeline.transform``; ``"query"`` / ``"document"`` encode with
        that prompt (see :func:`encode_partition`).
    client : distributed.Client, default=None
        The cluster to use; ``None`` uses the current client (``distributed.Client``
        created last in this process).
    texts_per_task : int, default=None
        Distinct texts per encoding task, rounded up to whole model calls of every
        member (:meth:`ConcatEmbedder.call_plan <skfusion.ConcatEmbedder.call_plan>`;
        ``batch_size * 32`` texts for most members). ``None``: 4,096, or
        fewer so that every worker thread gets about four tasks. The codes are the same
        whatever the task size.
    cache_dir : str or path-like, default=None
        Give each worker its own embedding cache in ``cache_dir/<worker name>``
        (``ConcatEmbedder``'s ``cache_dir``). ``None`` keeps the pipeline's setting.
        Cached vectors are those of the run that computed them.
    device : str, default=None
        Torch device of the members on the workers (e.g. ``"cuda"`` with one GPU per
        worker). ``None`` keeps the pipeline's setting.
    progress : bool, default=True
        Show Dask's progress bar on stderr while the job runs (this call then waits
        for the job); tasks appear in the dashboard as ``skfusion-encode`` either
        way.

    Returns
    -------
    codes : dask.array.Array or pathlib.Path
        With ``out_dir=None``, the codes as a ``dask.array`` of shape
        ``(n_texts, n_features_out)`` chunked like the input partitions, persisted:
        computing in the background and then held in the workers' memory (for
        corpora larger than that, give ``out_dir``). Otherwise the shard directory,
        read back with :func:`read_shards`.

    See Also
    --------
    encode_partition : The worker-side step, for other engines.
    read_shards : Read the shards back.

    Notes
    -----
    Planning gathers each text's length and 128-bit hash on the client (about 40 bytes
    per text with the order it derives, in the task graph) and keeps the input
    partitions in the cluster's memory while the job runs. Give each
    worker one thread (``threads_per_worker=1`` / ``dask worker --nthreads 1``): tasks
    on the threads of one worker share its models and take turns.

    Each worker raises glibc's mmap threshold (``mallopt``) before its first task:
    Dask's ``MALLOC_TRIM_THRESHOLD_`` otherwise freezes it at 128 KiB and torch then
    maps and unmaps its activation buffers on every call (23% slower per core with
    MiniLM here). The trim threshold, which returns freed memory to the OS, is kept.

    Examples
    --------
    >>> import dask.bag as db
    >>> from distributed import Client, LocalCluster
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion import ConcatEmbedder
    >>> from skfusion.distributed import transform
    >>> texts = ["apt installs packages", "vim edits text", "git tracks changes"]
    >>> embedder = ConcatEmbedder([("tfidf", TfidfVectorizer())]).fit(texts)
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
    ...     with Client(cluster) as client:
    ...         bag = db.from_sequence(texts, npartitions=2)
    ...         codes = transform(embedder, bag, progress=False)
    ...         codes.compute().shape
    (3, 9)
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(pipeline)
    if client is None:
        from distributed import get_client

        try:
            client = get_client()
        except ValueError as exc:
            raise ValueError(
                "no Dask client: pass client=Client(...) or create one first, e.g. "
                "Client(LocalCluster(n_workers=2, threads_per_worker=1))."
            ) from exc
    parts = _input_partitions(texts)
    if out_dir is not None:
        out_dir = _check_out_dir(out_dir)
    cache_dir = None if cache_dir is None else os.path.expanduser(os.fspath(cache_dir))

    blob_bytes = pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL)
    job = uuid.uuid4().hex  # task names of this call
    # The workers keep the pipeline under this name while the job runs, and drop it
    # when it ends, successfully or not.
    token = f"{job}-{hashlib.blake2b(blob_bytes, digest_size=8).hexdigest()}"
    # One copy per worker; tasks receive a reference, not the bytes per task.
    blob = client.scatter(blob_bytes, broadcast=True, hash=False)
    worker = _WorkerArgs(blob, token, role, cache_dir, device)
    try:
        parts = client.persist(parts)
        plan = _plan_job(client, pipeline, parts, worker, texts_per_task, progress)
        codes, futures = _submit(client, plan, parts, worker, job)
        if out_dir is None:
            # Persist while this call still holds the futures the graph depends on.
            codes = client.persist(codes)
            _forget_when_done(client, futures, token)
            if progress:
                _show_progress(client, codes)
            return codes
        _write(client, plan, codes, parts, out_dir, job, progress)
        _forget_everywhere(client, token)
        return out_dir
    except BaseException:
        _forget_everywhere(client, token)
        raise


@dataclass(frozen=True)
class _WorkerArgs:
    """What every encoding task of a job passes to :func:`_encode_task`."""

    blob: object  # the scattered pickle of the pipeline
    token: str
    role: str | None
    cache_dir: str | None
    device: str | None


@dataclass(frozen=True)
class _JobPlan:
    """Stage 1's result: the job's shape and its encoding tasks."""

    rows: list  # rows per input partition
    width: int
    dtype: np.dtype
    positions: np.ndarray | None  # global positions of the distinct texts, in order
    task_sizes: tuple  # distinct texts per encoding task
    row_rank: np.ndarray | None  # per input row, its row in the tasks' outputs


def _plan_job(client, pipeline, parts, worker, texts_per_task, progress):
    """Stage 1, plan: sketch the partitions on the cluster and cut the tasks from the
    embedder's call plan (:meth:`ConcatEmbedder.call_plan`)."""
    from dask import delayed

    sketches = client.compute([delayed(_sketch)(p, i) for i, p in enumerate(parts)])
    sketches = _run(client, sketches, progress)
    rows = [len(s[0]) for s in sketches]
    width, dtype = _output_shape(pipeline, worker, client)
    if sum(rows) == 0:
        return _JobPlan(rows, width, dtype, None, (), None)
    lengths = np.concatenate([s[0] for s in sketches])
    digests = np.concatenate([s[1] for s in sketches])
    embedder = _first_step(pipeline)
    if isinstance(embedder, ConcatEmbedder):
        plan = embedder.call_plan(digests, lengths=lengths)
    else:
        # Another text transformer: its calls are unknown; de-duplicate and go longest
        # first all the same.
        plan = CallPlan.from_lengths(lengths, digests)
    threads = sum(client.nthreads().values())
    positions, task_sizes, row_rank = _tasks(plan, texts_per_task, threads)
    return _JobPlan(rows, width, dtype, positions, task_sizes, row_rank)


def _submit(client, plan, parts, worker, job):
    """Stage 2, submit: one encoding task per run of the plan, and the codes as a
    ``dask.array`` in input order (not yet computed) with the tasks' futures."""
    import dask.array as da
    from dask import delayed

    if not plan.task_sizes:
        return da.zeros((0, plan.width), dtype=plan.dtype), []
    all_texts = da.concatenate(
        [
            da.from_delayed(delayed(_texts_array)(p), (n,), dtype=object)
            for p, n in zip(parts, plan.rows, strict=True)
        ]
    )
    ordered = all_texts[plan.positions].rechunk((plan.task_sizes,))
    blocks = client.compute(list(ordered.to_delayed()))
    # Submitted with decreasing priority: task 0 holds the longest texts and costs
    # the most, and running the costliest first keeps workers busy to the end.
    n_tasks = len(plan.task_sizes)
    w = worker
    futures = [
        client.submit(
            _encode_task, w.blob, w.token, block, w.role, w.cache_dir, w.device,
            key=f"skfusion-encode-{job}-{i}", priority=n_tasks - i,
        )
        for i, block in enumerate(blocks)
    ]  # fmt: skip
    encoded = [
        da.from_delayed(f, (n, plan.width), dtype=plan.dtype)
        for f, n in zip(futures, plan.task_sizes, strict=True)
    ]
    codes = da.concatenate(encoded)[plan.row_rank]
    return codes.rechunk((tuple(plan.rows), (plan.width,))), futures


def _write(client, plan, codes, parts, out_dir, job, progress):
    """Stage 3, write: one shard per input partition with its ids, then the manifest."""
    from dask import delayed

    offsets = np.concatenate([[0], np.cumsum(plan.rows)]).astype(int).tolist()
    names = [f"part-{i:05d}.npy" for i in range(len(parts))]
    blocks = [np.zeros((0, plan.width), plan.dtype)] * len(parts)
    if plan.task_sizes:
        blocks = codes.to_delayed()[:, 0]
    writes = [
        delayed(write_shard)(
            os.fspath(out_dir / name),
            block,
            delayed(_ids)(p, off),
            dask_key_name=f"skfusion-write-{job}-{i}",
        )
        for i, (name, block, p, off) in enumerate(
            zip(names, blocks, parts, offsets[:-1], strict=True)
        )
    ]
    _run(client, client.compute(writes), progress)
    manifest = {
        "n_rows": int(sum(plan.rows)),
        "n_features": int(plan.width),
        "dtype": np.dtype(plan.dtype).str,
        "shards": [
            {"codes": name, "ids": name + ".ids.json", "rows": n}
            for name, n in zip(names, plan.rows, strict=True)
        ],
    }
    payload = json.dumps(manifest, indent=1).encode()
    write_atomically(out_dir / _MANIFEST, lambda f: f.write(payload))


def encode_on_cluster(
    pipeline, files, out_dir, *, role=None, scheduler=None, n_workers=None, progress=True
):
    """Encode passage files into shards on a Dask scheduler or a new local cluster.

    What ``skfusion encode --scheduler ADDRESS | --workers N`` runs: connects to
    ``scheduler``, or starts ``LocalCluster(n_workers, threads_per_worker=1)`` for the
    duration of the call, and runs :func:`transform` with ``out_dir``.

    Parameters
    ----------
    pipeline : Pipeline or ConcatEmbedder
        Fitted.
    files : list of path-like
        Passage files (see :func:`transform`).
    out_dir : str or path-like
        New or empty shard directory.
    role : {"query", "document"} or None, default=None
        See :func:`transform`.
    scheduler : str, default=None
        Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
    n_workers : int, default=None
        Size of the local cluster to start when ``scheduler`` is None.
    progress : bool, default=True
        Show Dask's progress bar (on stderr).

    Returns
    -------
    n_rows : int
        Rows written.

    Examples
    --------
    >>> from skfusion.distributed import encode_on_cluster
    >>> encode_on_cluster(None, [], "out", n_workers=0)
    Traceback (most recent call last):
    ...
    ValueError: n_workers must be an integer >= 1 when no scheduler is given, got 0.
    """
    from distributed import Client, LocalCluster

    if scheduler is None and (
        not isinstance(n_workers, Integral) or isinstance(n_workers, bool) or n_workers < 1
    ):
        raise ValueError(
            "n_workers must be an integer >= 1 when no scheduler is given, got "
            f"{n_workers!r}."
        )
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=n_workers, threads_per_worker=1, dashboard_address=None
                )
            )
            scheduler = cluster.scheduler_address
        client = stack.enter_context(Client(scheduler, set_as_default=False))
        out_dir = transform(
            pipeline,
            list(files),
            out_dir=out_dir,
            role=role,
            client=client,
            progress=progress,
        )
    return json.loads((Path(out_dir) / _MANIFEST).read_text())["n_rows"]
