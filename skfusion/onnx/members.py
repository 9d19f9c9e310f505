"""ONNX export of sentence-transformers members: transformer models and static models.

:func:`export_member` writes one member to a folder: ``model.onnx`` (token ids and
attention mask in, the member's sentence embedding out: transformer, pooling and
normalisation, or a static model's mean of token vectors), the tokenizer beside it
(``tokenizer.json`` and ``tokenizer_config.json``, readable by ``tokenizers`` and by
transformers.js) and ``member.json`` saying how to tokenize. :class:`ExportedMember` (and
:func:`embed`) runs such a folder with onnxruntime and ``tokenizers``, without torch.

Export runs offline from the loaded model; it needs torch (the exporter) and ``onnx``.
"""

import json
import warnings
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

# Defined with the member protocol (each member's export_model raises it).
from ..members import UnsupportedMemberError

# ExportedMember, embed, export_member and load_member serve skfusion.onnx and the
# benchmarks; users run exported folders with skfusion.onnx.ExportedPipeline.
__all__ = ["UnsupportedMemberError", "export_members", "member_folder"]

# Opset of the member graphs; onnxruntime-web runs it too.
MEMBER_OPSET = 17
_SPEC = "member.json"


def _module_names(model):
    return [type(m).__name__ for m in model.children()]


def _check_exportable(model, name):
    if not hasattr(model, "children") or not hasattr(model, "tokenizer"):
        raise UnsupportedMemberError(
            f"member {name!r} ({type(model).__name__}) is not a SentenceTransformer; "
            "only sentence-transformers models (transformer or static) export to ONNX."
        )
    modules = _module_names(model)
    first, rest = modules[0], modules[1:]
    if first == "StaticEmbedding":
        allowed = {"Normalize"}
        kind = "static"
    elif first == "Transformer":
        allowed = {"Pooling", "Normalize", "Dense"}
        kind = "transformer"
    else:
        raise UnsupportedMemberError(
            f"member {name!r}: its first module is {first}; ONNX export handles a "
            "Transformer (with Pooling, Dense, Normalize) or a StaticEmbedding."
        )
    bad = [m for m in rest if m not in allowed]
    if bad:
        raise UnsupportedMemberError(
            f"member {name!r}: module {bad[0]} after {first} is not supported by the "
            f"ONNX export (supported: {sorted(allowed)})."
        )
    for module in list(model.children())[1:]:
        if getattr(module, "include_prompt", True) is False:
            raise UnsupportedMemberError(
                f"member {name!r}: Pooling(include_prompt=False) drops the prompt's "
                "tokens by count, which the exported graph does not do."
            )
    return kind


def _wrapper(model, kind):
    import torch

    modules = list(model.children())

    class _Static(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = modules[0].embedding.weight
            self.rest = torch.nn.ModuleList(modules[1:])

        def forward(self, input_ids, attention_mask):
            # EmbeddingBag(mode="mean") over the unpadded tokens (empty bags give
            # zeros), summed in float32 and rounded to the weights' dtype (model2vec
            # stores float16) as sentence-transformers returns it.
            mask = attention_mask.unsqueeze(-1).float()
            vectors = torch.nn.functional.embedding(input_ids, self.weight).float()
            mean = (vectors * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            features = {"sentence_embedding": mean.to(self.weight.dtype)}
            for module in self.rest:
                features = module(features)
            return features["sentence_embedding"].float()

    class _Transformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.ModuleList(modules)

        def forward(self, input_ids, attention_mask):
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            for module in self.body:
                features = module(features)
            return features["sentence_embedding"].float()

    return (_Static if kind == "static" else _Transformer)().eval()


def _save_tokenizer(model, kind, folder):
    if kind == "static":
        tokenizer = list(model.children())[0].tokenizer  # a tokenizers.Tokenizer
        tokenizer.save(str(folder / "tokenizer.json"))
        # transformers.js reads the class from here; a plain fast tokenizer.
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        return
    model.tokenizer.save_pretrained(str(folder))


def export_member(model, folder, *, name="member", max_length=None):
    """Export one loaded SentenceTransformer to ``folder`` (created if missing).

    Parameters
    ----------
    model : SentenceTransformer
        A Transformer (+ Pooling, Dense, Normalize) or a StaticEmbedding (model2vec,
        + Normalize) model.
    folder : str or path-like
        Where ``model.onnx``, ``tokenizer.json``, ``tokenizer_config.json`` and
        ``member.json`` go.
    name : str, default="member"
        Member name, used in messages and recorded in ``member.json``.
    max_length : int, default=None
        Token limit (truncation) of a transformer model; ``None`` uses its
        ``max_seq_length``. A static model keeps its tokenizer's own limit, as
        sentence-transformers does.

    Returns
    -------
    spec : dict
        What ``member.json`` holds: ``name``, ``kind`` ("transformer" or "static"),
        ``dim``, ``max_length`` (int or None), ``add_special_tokens``.

    Raises
    ------
    UnsupportedMemberError
        For a model with other modules (named in the message).
    """
    import torch

    kind = _check_exportable(model, name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "static":
        # StaticEmbedding ignores max_seq_length; its tokenizer truncates (model2vec
        # saves a limit of 512 tokens in tokenizer.json).
        truncation = list(model.children())[0].tokenizer.truncation
        max_length = None if truncation is None else int(truncation["max_length"])
    elif max_length is None:
        max_length = int(model.max_seq_length)
    spec = {
        "name": name,
        "kind": kind,
        "dim": int(model.get_embedding_dimension()),
        "max_length": None if max_length is None else int(max_length),
        # sentence-transformers' StaticEmbedding tokenizes without special tokens.
        "add_special_tokens": kind == "transformer",
    }
    wrapper = _wrapper(model, kind).to("cpu")
    ids = torch.ones((2, 5), dtype=torch.long)
    mask = torch.ones((2, 5), dtype=torch.long)
    dynamic = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "sentence_embedding": {0: "batch"},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer and deprecation notes
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(folder / "model.onnx"),
            dynamo=False,  # the TorchScript exporter: no onnxscript needed
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes=dynamic,
            opset_version=MEMBER_OPSET,
        )
    _save_tokenizer(model, kind, folder)
    (folder / _SPEC).write_text(json.dumps(spec, indent=1))
    return spec


def export_members(embedder, folder, *, device="cpu"):
    """Export every member of a fitted ``ConcatEmbedder`` to ``folder/<i>-<name>/``.

    Members given by name or path are loaded from their reference (offline when
    ``HF_HUB_OFFLINE=1``); SentenceTransformer instances are used as they are.

    Parameters
    ----------
    embedder : ConcatEmbedder
        Fitted.
    folder : str or path-like
        Parent folder of the member folders.
    device : str, default="cpu"
        Device to load by-reference members on.

    Returns
    -------
    specs : list of dict
        One :func:`export_member` spec per member, with ``path`` (the folder name).

    Raises
    ------
    UnsupportedMemberError
        Naming the first member that is not a sentence-transformers model
        (scikit-learn text transformers such as TF-IDF, callables, HTTP members).

    Examples
    --------
    >>> import tempfile
    >>> from sklearn.feature_extraction.text import TfidfVectorizer
    >>> from skfusion import ConcatEmbedder
    >>> from skfusion.onnx.members import UnsupportedMemberError, export_members
    >>> embedder = ConcatEmbedder([("tfidf", TfidfVectorizer())]).fit(["apt", "vim"])
    >>> try:
    ...     export_members(embedder, tempfile.mkdtemp())
    ... except UnsupportedMemberError as exc:  # named by the member's export hook
    ...     print(str(exc).split(";")[0])
    member 'tfidf' (a sklearn member) is not a SentenceTransformer
    """
    models = [load_member(embedder, i, device=device) for i in range(len(embedder.models))]
    specs = []
    for i, (name, model) in enumerate(zip(embedder.member_names_, models, strict=True)):
        sub = member_folder(i, name)
        spec = export_member(model, Path(folder) / sub, name=name,
                             max_length=embedder.max_seq_length)  # fmt: skip
        spec["path"] = sub
        specs.append(spec)
    return specs


def member_folder(index, name):
    """Folder name of member ``index`` called ``name``: ``"<index>-<name>"``, made safe.

    Examples
    --------
    >>> from skfusion.onnx.members import member_folder
    >>> member_folder(0, "sentence-transformers/all-MiniLM-L6-v2")
    '0-sentence-transformers_all-MiniLM-L6-v2'
    """
    return f"{index}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def load_member(embedder, index, *, device="cpu"):
    """The sentence-transformers model of member ``index`` of a fitted embedder, as
    the member's own export hook (:meth:`skfusion.members.Member.export_model`) gives it.

    Raises :class:`UnsupportedMemberError` naming the member when it is not one.
    """
    check_is_fitted(embedder, "members_")
    member = embedder.members_[index]
    model = member.export_model(device)
    if member.ref_ is None:
        _check_exportable(model, member.name_)  # the caller's own instance
    return model


class ExportedMember:
    """One member folder written by :func:`export_member`, loaded once to embed many times.

    Runs ``model.onnx`` with onnxruntime on the ``tokenizers`` tokenization of
    ``tokenizer.json``, as ``member.json`` says (special tokens, truncation); no torch.

    Parameters
    ----------
    folder : str or path-like
        Written by :func:`export_member`.
    n_threads : int, default=None
        onnxruntime's intra-op threads; ``None`` leaves onnxruntime's default (all
        cores), 1 runs single-threaded like the browser page's wasm.

    Attributes
    ----------
    spec : dict
        What ``member.json`` holds (``name``, ``kind``, ``dim``, ...).
    """

    def __init__(self, folder, *, n_threads=None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.spec = json.loads((folder / _SPEC).read_text())
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_padding()
        if self.spec["max_length"] is not None:
            tokenizer.enable_truncation(self.spec["max_length"])
        else:
            tokenizer.no_truncation()
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        if n_threads is not None:
            options.intra_op_num_threads = int(n_threads)
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts, *, prompt="", batch_size=32):
        """Embed ``texts`` (``prompt`` prepended to each), float32 ``(len(texts), dim)``."""
        encodings = self._tokenizer.encode_batch(
            [prompt + t for t in texts], add_special_tokens=self.spec["add_special_tokens"]
        )
        out = np.empty((len(texts), self.spec["dim"]), dtype=np.float32)
        for s in range(0, len(texts), batch_size):
            batch = encodings[s : s + batch_size]
            width = max([1] + [len(e.ids) for e in batch])  # padded per batch
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, e in enumerate(batch):
                ids[row, : len(e.ids)] = e.ids
                mask[row, : len(e.ids)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            out[s : s + batch_size] = self._session.run(None, feeds)[0]
        return out


def embed(folder, texts, *, prompt=""):
    """Embed ``texts`` with an exported member folder (onnxruntime + tokenizers).

    Parameters
    ----------
    folder : str or path-like
        Written by :func:`export_member`.
    texts : list of str
    prompt : str, default=""
        Prepended to every text (as sentence-transformers does with ``prompt=``).

    Returns
    -------
    embeddings : ndarray of shape (len(texts), dim), dtype float32

    See Also
    --------
    ExportedMember : The same, loaded once for many calls.
    skfusion.onnx.ExportedPipeline : Every member and the head of an export.
    """
    # small batches: threads only contend here
    return ExportedMember(folder, n_threads=1).embed(texts, prompt=prompt)
