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
import threading
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from .._compat import validate_params
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

        widths = code_layout(last)
        if isinstance(last, PercentileQuantizer):
            levels = (
                np.arange(1 << last.bits, dtype=np.float32) - ((1 << last.bits) - 1) / 2
            )
            table = np.tile(levels, (widths.size, 1))
            what = f"{last.bits}-bit percentile codes"
        else:
            table = np.asarray(last.code_values_, dtype=np.float32)
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
            "n_bits": int(last.n_bits),
            "description": f"{last.n_bits} LSH bits",
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
    },
    prefer_skip_nested_validation=True,
)
def export_web(
    model, outdir, texts, *, ids=None, node_modules=None, title="skfusion search"
):
    """Write a static search page for ``texts`` that runs ``model`` in the browser.

    Parameters
    ----------
    model : Pipeline
        A fitted skfusion pipeline: a ``ConcatEmbedder`` whose members are all
        sentence-transformers models (transformer or static), then numeric steps
        (decoder, quantizer or LSH) that :func:`skfusion.onnx.to_onnx` converts.
    outdir : str or path-like
        Output folder (created; files of an earlier export are overwritten).
    texts : list of str
        The documents to search; encoded here as documents.
    ids : list of str, default=None
        One id per text; ``None`` numbers them from 0.
    node_modules : str or path-like, default=None
        Folder with the npm packages (see :func:`find_node_modules`).
    title : str, default="skfusion search"

    Returns
    -------
    config : dict
        What ``OUTDIR/skfusion.json`` holds.

    Raises
    ------
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
    embedder = model[0]
    head_steps(model)  # a clear error before any work when there is no head
    # Load (and so check) every member before writing anything.
    loaded = [load_member(embedder, i) for i in range(len(embedder.models))]
    assets = find_node_modules(node_modules)

    outdir = Path(outdir)
    (outdir / "members").mkdir(parents=True, exist_ok=True)
    weights = (
        np.ones(len(loaded)) if embedder.weights is None else np.asarray(embedder.weights)
    )
    members = []
    for i, (name, st_model) in enumerate(zip(embedder.member_names_, loaded, strict=True)):
        path = member_folder(i, name)
        spec = export_member(
            st_model,
            outdir / "members" / path,
            name=name,
            max_length=embedder.max_seq_length,
        )
        spec.update(
            path=path,
            prompt=_member_prompt(embedder, name, st_model),
            weight=float(weights[i]),
        )
        members.append(spec)
    (outdir / "head.onnx").write_bytes(to_onnx(model).SerializeToString())

    corpus_out = encode(model, texts, "document")
    head, rows, table = _head_spec(model, corpus_out)
    head["file"] = "head.onnx"
    if table is not None:
        (outdir / head["table_file"]).write_bytes(table.tobytes())
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    (outdir / "corpus.bin").write_bytes(rows.tobytes())
    (outdir / "ids.json").write_text(json.dumps(ids))
    snippets = [t if len(t) <= _SNIPPET_CHARS else t[:_SNIPPET_CHARS] + "…" for t in texts]
    (outdir / "docs.json").write_text(json.dumps(snippets, ensure_ascii=False))

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
    (outdir / "skfusion.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    static = resources.files("skfusion.web") / "static"
    for name in ("index.html", "app.js"):
        text = (static / name).read_text(encoding="utf-8")
        if name == "index.html":
            text = text.replace("skfusion search", _escape(title))
        (outdir / name).write_text(text, encoding="utf-8")
    (outdir / "vendor").mkdir(exist_ok=True)
    for package, file in _VENDOR:
        shutil.copyfile(assets / package / "dist" / file, outdir / "vendor" / file)
    return config


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
