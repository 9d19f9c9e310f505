"""Shared inputs for the quality benchmarks: debian-packages features and nDCG@10.

``load_features()`` returns the weighted three-member concatenation the issues measure
(all-MiniLM-L6-v2 x1.0, a model2vec model distilled from it x0.5, TF-IDF -> SVD(384) x0.5;
1,024-d, each member L2-normalised) for the train passages (first ``n_train``), the corpus
and all queries, plus dev/test qrels. Arrays are cached under ``benchmarks/.cache``.
"""

import gzip
import json
from pathlib import Path

import numpy as np

from skfusion.metrics import ndcg_at_k, run_from_topk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian-packages"
CACHE = Path(__file__).parent / ".cache"
WEIGHTS = {"minilm": 1.0, "m2v": 0.5, "tfidf": 0.5}


def _read_jsonl(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _texts(rows):
    return [(r.get("title", "") + " " + r["text"]).strip() for r in rows]


def _qrels(split):
    out = {}
    with open(DATA / "qrels" / f"{split}.tsv") as f:
        next(f)
        for line in f:
            q, d, s = line.rstrip("\n").split("\t")
            out.setdefault(q, {})[d] = int(s)
    return out


def _l2(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load_texts(n_train=10_000):
    corpus = _read_jsonl(DATA / "corpus.jsonl.gz")
    queries = _read_jsonl(DATA / "queries.jsonl.gz")
    train = _read_jsonl(DATA / "train.jsonl.gz")[:n_train]
    return {
        "train": _texts(train),
        "corpus": _texts(corpus),
        "queries": [q["text"] for q in queries],
        "corpus_ids": [r["_id"] for r in corpus],
        "query_ids": [q["_id"] for q in queries],
    }


def load_features(n_train=10_000):
    """Member embeddings and their weighted concatenation, cached as .npy files."""
    path = CACHE / f"features_{n_train}.npz"
    texts = load_texts(n_train)
    if not path.exists():
        members = {name: _member_embeddings(name, texts, n_train) for name in WEIGHTS}
        np.savez(
            path, **{f"{m}_{s}": a for m, d in members.items() for s, a in d.items()}
        )
    data = np.load(path)
    out = {
        "corpus_ids": texts["corpus_ids"],
        "query_ids": texts["query_ids"],
        "qrels": {"dev": _qrels("dev"), "test": _qrels("test")},
        "members": {},
    }
    for split in ("train", "corpus", "queries"):
        parts = [WEIGHTS[m] * data[f"{m}_{split}"] for m in WEIGHTS]
        out[split] = np.hstack(parts).astype(np.float32)
        for m in WEIGHTS:
            out["members"].setdefault(m, {})[split] = data[f"{m}_{split}"]
    return out


def _member_embeddings(name, texts, n_train):
    splits = ("train", "corpus", "queries")
    if name == "minilm":
        raw = CACHE / "raw"
        q = np.load(raw / "minilm_queries.npy")
        c = np.load(raw / "minilm_corpus.npy")
        t = np.load(raw / "minilm_train.npy")[:n_train]
        return {"train": _l2(t), "corpus": _l2(c), "queries": _l2(q)}
    if name == "m2v":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(CACHE / "m2v-minilm-256"), device="cpu")
        return {s: _l2(model.encode(texts[s], batch_size=256)) for s in splits}
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    lex = make_pipeline(
        TfidfVectorizer(sublinear_tf=True), TruncatedSVD(384, random_state=0)
    ).fit(texts["train"])
    return {s: _l2(lex.transform(texts[s])) for s in splits}


def ndcg10(queries, corpus, feats, split, *, normalize=True, k=10):
    """nDCG@10 of exact cosine (or inner-product) search for one qrels split."""
    qrels = feats["qrels"][split]
    pos = {q: i for i, q in enumerate(feats["query_ids"])}
    rows = [pos[q] for q in qrels]
    q = np.asarray(queries, dtype=np.float32)[rows]
    d = np.asarray(corpus, dtype=np.float32)
    if normalize:
        q, d = _l2(q), _l2(d)
    sims = q @ d.T
    idx = np.argpartition(-sims, k, axis=1)[:, :k]
    part = np.take_along_axis(sims, idx, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, 1)
    run = run_from_topk(
        list(qrels), feats["corpus_ids"], np.take_along_axis(part, order, 1), idx
    )
    return ndcg_at_k(run, qrels, k)
