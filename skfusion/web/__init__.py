"""A static search page that runs a fitted skfusion pipeline in the browser.

:func:`export_web` writes one folder: what :func:`skfusion.onnx.export_pipeline`
writes (each member as ONNX with its tokenizer, the head as ONNX, the corpus's codes
and ids), the page (``index.html``, ``app.js``) and the JavaScript it needs, copied
from local npm packages: onnxruntime-web runs the models (wasm) and
``@huggingface/transformers`` tokenizes. Nothing is fetched from the network when the
page runs; serve the folder with any static server (``python -m http.server -d
OUTDIR``) and open it. The page ranks the corpus and shows the scores that
:class:`skfusion.onnx.ExportedPipeline` returns (similarities in [-1, 1], see
:mod:`skfusion.onnx.exported`); an empty query shows nothing.
"""

import contextlib
import functools
import html
import http.server
import os
import threading
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from .._compat import validate_params
from .._io import real_dir, write_public

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

    Examples
    --------
    >>> import tempfile, urllib.request
    >>> from pathlib import Path
    >>> from skfusion.web import serve
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "index.html").write_text("<h1>search</h1>")
    >>> with serve(folder) as url:
    ...     urllib.request.urlopen(url, timeout=10).read()
    b'<h1>search</h1>'
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

    Examples
    --------
    >>> import tempfile
    >>> from skfusion.web import find_node_modules
    >>> try:
    ...     find_node_modules(tempfile.mkdtemp())
    ... except FileNotFoundError as exc:  # it says what to install
    ...     print("npm install --ignore-scripts" in str(exc))
    True
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
        The page's title and heading (``--title``); shown as text (HTML-escaped).
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
    skfusion.members.UnsupportedMemberError
        Naming a member that cannot run in a browser (TF-IDF or other scikit-learn
        members, remote or compiled engines).

    Examples
    --------
    It needs the page's npm packages (``scripts/install-browser-deps.sh``), so it is
    not run as a doctest; ``tests/test_web.py`` exports and opens the page in Chromium:

    >>> from skfusion.web import export_web, serve  # doctest: +SKIP
    >>> export_web(pipe, "site", docs, title="Package search")  # doctest: +SKIP
    >>> with serve("site") as url:  # doctest: +SKIP
    ...     print(url)
    http://127.0.0.1:.../index.html
    """
    from ..onnx.exported import export_pipeline, write_config

    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; give at least one document to search.")
    assets = []  # found after the pipeline's checks, before anything is written
    config = export_pipeline(
        model, outdir, texts, ids=ids, force=force,
        before_write=lambda: assets.append(find_node_modules(node_modules)),
    )  # fmt: skip
    outdir = Path(outdir)
    static = resources.files("skfusion.web") / "static"
    for name in ("index.html", "app.js"):
        text = (static / name).read_text(encoding="utf-8")
        if name == "index.html":
            for tag in ("title", "h1"):
                placeholder = f"<{tag}>skfusion search</{tag}>"
                text = text.replace(placeholder, f"<{tag}>{html.escape(title)}</{tag}>")
        write_public(outdir / name, text.encode("utf-8"))
    vendor = real_dir(outdir / "vendor")
    for package, file in _VENDOR:
        write_public(vendor / file, (assets[0] / package / "dist" / file).read_bytes())
    config = {"title": title, **config}
    write_config(outdir, config)  # last again: the page is complete
    return config
