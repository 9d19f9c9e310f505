"""A static search page that runs a fitted skfusion pipeline in the browser.

:func:`export_web` writes one folder: each member as ONNX with its tokenizer
(:mod:`skfusion.onnx.members`), the head (decoder, quantizer) as ONNX
(:func:`skfusion.onnx.to_onnx`), the corpus's codes (packed) and ids, the page
(``index.html``, ``app.js``) and the JavaScript it needs, copied from local npm
packages: onnxruntime-web runs the models (wasm) and ``@huggingface/transformers``
tokenizes. Nothing is fetched from the network when the page runs; serve the folder
with any static server (``python -m http.server -d OUTDIR``) and open it.
"""

import contextlib
import functools
import http.server
import json
import os
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from .._compat import validate_params
from .._io import write_atomically
from ..allocation import AllocatedQuantizer
from ..evaluation import encode
from ..lsh import RandomProjectionLSH
from ..quantize import PercentileQuantizer

__all__ = [
    "CHROMIUM_FLAGS",
    "NPM_PACKAGES",
    "export_web",
    "find_node_modules",
    "pack_stream",
    "serve",
]

# npm packages the page needs, the versions it is tested with (transformers 4.3.2
# itself depends on this onnxruntime-web build): `npm install --ignore-scripts <these>`.
NPM_PACKAGES = (
    "onnxruntime-web@1.31.0-dev.20260914-8d85527a0",
    "@huggingface/transformers@4.3.2",
)
# (package, file in its dist/) copied to OUTDIR/vendor/.
_VENDOR = (
    ("onnxruntime-web", "ort.wasm.min.mjs"),
    ("onnxruntime-web", "ort-wasm-simd-threaded.mjs"),
    ("onnxruntime-web", "ort-wasm-simd-threaded.wasm"),
    ("@huggingface/transformers", "transformers.min.js"),
)
_SNIPPET_CHARS = 300
# Headless Chromium that talks to nothing but the page's server (tests, benchmarks).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class _Handler(http.server.SimpleHTTPRequestHandler):
    # ES modules and wasm need these types (wasm streaming compile checks it).
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def log_message(self, format, *args):  # quiet: one line per file is noise
        pass


@contextlib.contextmanager
def serve(folder, host="127.0.0.1", port=0):
    """Serve ``folder`` over HTTP in a background thread; stops when the block ends.

    Parameters
    ----------
    folder : str or path-like
        Written by :func:`export_web`.
    host : str, default="127.0.0.1"
    port : int, default=0
        0 picks a free port.

    Yields
    ------
    url : str
        The page's address (``http://host:port/index.html``).
    """
    handler = functools.partial(_Handler, directory=os.fspath(folder))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def find_node_modules(node_modules=None):
    """The ``node_modules`` folder holding :data:`NPM_PACKAGES`.

    Parameters
    ----------
    node_modules : str or path-like, default=None
        Where to look; ``None`` tries ``$SKFUSION_NODE_MODULES``, ``./node_modules``,
        then ``~/.cache/skfusion/npm/node_modules`` (where
        ``scripts/install-browser-deps.sh`` installs them).

    Returns
    -------
    folder : Path

    Raises
    ------
    FileNotFoundError
        Saying which file is missing and the npm command that installs it.
    """
    candidates = (
        [node_modules]
        if node_modules is not None
        else [
            os.environ.get("SKFUSION_NODE_MODULES"),
            "node_modules",
            Path.home() / ".cache" / "skfusion" / "npm" / "node_modules",
        ]
    )
    tried = []
    for folder in candidates:
        if not folder:
            continue
        folder = Path(folder)
        missing = [
            f"{p}/dist/{f}" for p, f in _VENDOR if not (folder / p / "dist" / f).is_file()
        ]
        if not missing:
            return folder
        tried.append(f"{folder} (missing {missing[0]})")
    raise FileNotFoundError(
        "the page's JavaScript was not found in "
        + ("; ".join(tried) or "./node_modules")
        + ". Install it with `npm install --ignore-scripts "
        + " ".join(NPM_PACKAGES)
        + "` and pass that node_modules folder (--node-modules or $SKFUSION_NODE_MODULES)."
    )


def pack_stream(codes, widths):
    """Pack codes into one bit stream per row, ``widths[j]`` bits for column ``j``.

    Parameters
    ----------
    codes : ndarray of shape (n_samples, n_features), dtype uint8
    widths : array-like of shape (n_features,)
        Bits per column (0 skips the column); codes must fit them.

    Returns
    -------
    packed : ndarray of shape (n_samples, ceil(sum(widths) / 8)), dtype uint8
        Most significant bit first, as ``pack_codes`` and ``pack=True`` write them.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.web import pack_stream
    >>> pack_stream(np.array([[3, 0, 1]], dtype=np.uint8), [2, 1, 3])
    array([[196]], dtype=uint8)
    """
    codes = np.asarray(codes, dtype=np.uint8)
    widths = np.asarray(widths, dtype=np.int64)
    cols = np.repeat(np.arange(widths.size), widths)
    pos = np.arange(cols.size) - (np.cumsum(widths) - widths)[cols]
    shifts = (widths[cols] - 1 - pos).astype(np.uint8)
    out = np.empty((codes.shape[0], -(-cols.size // 8)), dtype=np.uint8)
    for s in range(0, codes.shape[0], 4096):
        bits = (codes[s : s + 4096, cols] >> shifts) & 1
        out[s : s + 4096] = np.packbits(bits, axis=1)
    return out


def _write(path, data):
    """Write ``data`` (bytes) to ``path`` through a temporary file renamed over it.

    The rename replaces whatever ``path`` is (an older file, or a symlink itself) and
    never writes through a symlink to a file outside the folder.
    """

    def write(f):
        f.write(data)
        os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600: a web server must read it

    write_atomically(path, write)


def _real_dir(path):
    """``path`` as a real folder: a symlink (or file) there is removed, not followed."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(exist_ok=True)
    return path


def _is_export(folder):
    """Whether ``folder`` holds a ``skfusion.json`` written by :func:`export_web`."""
    config = Path(folder) / "skfusion.json"
    if config.is_symlink() or not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"members", "head", "corpus"} <= data.keys()


def _check_outdir(outdir, force):
    """Refuse a file, or a non-empty folder that is no earlier export unless ``force``."""
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"outdir {outdir} exists and is not a folder.")
    if force or not outdir.is_dir() or not any(outdir.iterdir()) or _is_export(outdir):
        return
    raise FileExistsError(
        f"outdir {outdir} is not empty and holds no earlier export (no skfusion.json "
        "written by export_web): writing the page there would replace files such as "
        "index.html. Give a new or empty folder, or pass force=True (--force) to "
        "replace the files of the same names in it."
    )


def _member_prompt(embedder, name, model):
    """The prompt a member prepends to queries (as ``encode_queries`` resolves it)."""
    own = (embedder.prompts or {}).get(name, {})
    if "query" in own:
        return own["query"]
    return (getattr(model, "prompts", None) or {}).get("query", "")


def _head_spec(model, corpus_out):
    """How the page reads the head's output and the corpus rows, and the corpus bytes."""
    last = model.steps[-1][1] if isinstance(model, Pipeline) else model
    if isinstance(last, (PercentileQuantizer, AllocatedQuantizer)):
        from ..onnx import code_layout

        # Fitted attributes only: `bits` may have been changed by set_params since fit.
        widths = code_layout(last)
        table = np.asarray(last.code_values_, dtype=np.float32)
        if isinstance(last, PercentileQuantizer):
            what = f"{int(widths[0])}-bit percentile codes"
        else:
            what = f"{last.n_bits_}-bit allocated codes"
        rows = corpus_out if last.pack else pack_stream(corpus_out, widths)
        spec = {
            "output": "codes",
            "packed": bool(last.pack),
            "widths": widths.tolist(),
            "table_file": "code_values.bin",
            "table_stride": int(table.shape[1]),
            "description": what,
        }
        return spec, rows, np.ascontiguousarray(table, dtype="<f4")
    if isinstance(last, RandomProjectionLSH):
        rows = corpus_out if last.pack else np.packbits(corpus_out, axis=1)
        spec = {
            "output": "hamming",
            "packed": bool(last.pack),
            "n_bits": int(last.n_bits_),
            "description": f"{last.n_bits_} LSH bits",
        }
        return spec, rows, None
    rows = np.ascontiguousarray(corpus_out, dtype="<f4")
    spec = {
        "output": "cosine",
        "width": int(rows.shape[1]),
        "description": f"{rows.shape[1]} float32 dimensions",
    }
    return spec, rows.view(np.uint8).reshape(len(rows), -1), None


@validate_params(
    {
        "model": [Pipeline],
        "outdir": [str, os.PathLike],
        "texts": ["array-like"],
        "ids": ["array-like", None],
        "node_modules": [str, os.PathLike, None],
        "title": [str],
        "force": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def export_web(
    model,
    outdir,
    texts,
    *,
    ids=None,
    node_modules=None,
    title="skfusion search",
    force=False,
):
    """Write a static search page for ``texts`` that runs ``model`` in the browser.

    Parameters
    ----------
    model : Pipeline
        A fitted skfusion pipeline: a ``ConcatEmbedder`` whose members are all
        sentence-transformers models (transformer or static), then numeric steps
        (decoder, quantizer or LSH) that :func:`skfusion.onnx.to_onnx` converts.
    outdir : str or path-like
        Output folder: new, empty, or an earlier export (whose files are replaced).
        Files are written to temporary names and renamed into place, so a symlink in
        the folder is replaced, never written through.
    texts : list of str
        The documents to search; encoded here as documents.
    ids : list of str, default=None
        One id per text; ``None`` numbers them from 0.
    node_modules : str or path-like, default=None
        Folder with the npm packages (see :func:`find_node_modules`).
    title : str, default="skfusion search"
    force : bool, default=False
        Also write into a non-empty folder that holds no earlier export, replacing
        its files of the same names (``index.html``, ``skfusion.json``, ...).

    Returns
    -------
    config : dict
        What ``OUTDIR/skfusion.json`` holds.

    Raises
    ------
    FileExistsError
        When ``outdir`` is a non-empty folder that holds no earlier export and
        ``force=False``; nothing is written.
    skfusion.onnx.members.UnsupportedMemberError
        Naming a member that cannot run in a browser (TF-IDF or other scikit-learn
        members, remote or compiled engines).
    """
    from ..onnx import head_steps, to_onnx
    from ..onnx.members import export_member, load_member, member_folder

    if not isinstance(model, Pipeline) or not hasattr(model[0], "member_names_"):
        raise TypeError(
            f"model must be a fitted skfusion Pipeline starting with a ConcatEmbedder, "
            f"got {type(model).__name__}."
        )
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; give at least one document to search.")
    ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(texts):
        raise ValueError(f"ids has {len(ids)} entries for {len(texts)} texts.")
    outdir = Path(outdir)
    _check_outdir(outdir, force)
    embedder = model[0]
    head_steps(model)  # a clear error before any work when there is no head
    # Load (and so check) every member before writing anything.
    loaded = [load_member(embedder, i) for i in range(len(embedder.models))]
    assets = find_node_modules(node_modules)

    outdir.mkdir(parents=True, exist_ok=True)
    members_dir = _real_dir(outdir / "members")
    weights = (
        np.ones(len(loaded)) if embedder.weights is None else np.asarray(embedder.weights)
    )
    members = []
    for i, (name, st_model) in enumerate(zip(embedder.member_names_, loaded, strict=True)):
        path = member_folder(i, name)
        # Written into a new folder, then renamed over the old one (or a symlink).
        tmp = Path(tempfile.mkdtemp(dir=members_dir, prefix=f".{path}."))
        try:
            tmp.chmod(0o755)
            spec = export_member(
                st_model, tmp, name=name, max_length=embedder.max_seq_length
            )
            dest = members_dir / path
            if dest.is_symlink() or dest.is_file():
                dest.unlink()
            elif dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        spec.update(
            path=path,
            prompt=_member_prompt(embedder, name, st_model),
            weight=float(weights[i]),
        )
        members.append(spec)
    _write(outdir / "head.onnx", to_onnx(model).SerializeToString())

    corpus_out = encode(model, texts, "document")
    head, rows, table = _head_spec(model, corpus_out)
    head["file"] = "head.onnx"
    if table is not None:
        _write(outdir / head["table_file"], table.tobytes())
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    _write(outdir / "corpus.bin", rows.tobytes())
    _write(outdir / "ids.json", json.dumps(ids).encode())
    snippets = [t if len(t) <= _SNIPPET_CHARS else t[:_SNIPPET_CHARS] + "…" for t in texts]
    _write(outdir / "docs.json", json.dumps(snippets, ensure_ascii=False).encode())

    config = {
        "title": title,
        "members": members,
        "normalize": bool(embedder.normalize),
        "n_features": int(embedder.n_features_out_),
        "head": head,
        "corpus": {
            "file": "corpus.bin",
            "n": len(texts),
            "row_bytes": int(rows.shape[1]),
            "ids_file": "ids.json",
            "texts_file": "docs.json",
        },
    }
    static = resources.files("skfusion.web") / "static"
    for name in ("index.html", "app.js"):
        text = (static / name).read_text(encoding="utf-8")
        if name == "index.html":
            text = text.replace("skfusion search", _escape(title))
        _write(outdir / name, text.encode("utf-8"))
    vendor = _real_dir(outdir / "vendor")
    for package, file in _VENDOR:
        _write(vendor / file, (assets / package / "dist" / file).read_bytes())
    # Last: its presence marks the folder as a complete export (see _is_export).
    config_text = json.dumps(config, indent=1, ensure_ascii=False)
    _write(outdir / "skfusion.json", config_text.encode("utf-8"))
    return config


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
