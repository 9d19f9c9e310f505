"""Shared inputs for the quality benchmarks: debian-packages features and nDCG@10.

``load_features()`` returns the weighted three-member concatenation the issues measure
(all-MiniLM-L6-v2 x1.0, a model2vec model distilled from it x0.5, TF-IDF -> SVD(384) x0.5;
1,024-d, each member L2-normalised) for the train passages (first ``n_train``), the corpus
and all queries, plus dev/test qrels. Arrays are cached under ``benchmarks/.cache``.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from skfusion.datasets import load_beir, load_passages
from skfusion.evaluation import evaluate_embeddings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian-packages"
CACHE = Path(__file__).parent / ".cache"
WEIGHTS = {"minilm": 1.0, "m2v": 0.5, "tfidf": 0.5}


def _l2(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load_texts(n_train=10_000):
    dev, test = load_beir(DATA, "dev"), load_beir(DATA, "test")
    return {
        "train": load_passages(DATA / "train.jsonl.gz", limit=n_train),
        "corpus": test.corpus_texts,
        "queries": dev.query_texts + test.query_texts,
        "corpus_ids": test.corpus_ids,
        "query_ids": dev.query_ids + test.query_ids,
        "qrels": {"dev": dev.qrels, "test": test.qrels},
    }


def load_features(n_train=10_000):
    """Member embeddings and their weighted concatenation, cached as .npy files."""
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
        parts = [WEIGHTS[m] * data[f"{m}_{split}"] for m in WEIGHTS]
        out[split] = np.hstack(parts).astype(np.float32)
        for m in WEIGHTS:
            out["members"].setdefault(m, {})[split] = data[f"{m}_{split}"]
    return out


def _member_embeddings(name, texts, n_train):
    splits = ("train", "corpus", "queries")
    if name == "minilm":
        raw = CACHE / "raw"
        pos = {
            q: i for i, q in enumerate(json.loads((raw / "ids_queries.json").read_text()))
        }
        q = np.load(raw / "minilm_queries.npy")[[pos[i] for i in texts["query_ids"]]]
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


def split_data(feats, split):
    """Rows of ``split``'s queries and a dataset view for ``evaluate_embeddings``."""
    qrels = feats["qrels"][split]
    pos = {q: i for i, q in enumerate(feats["query_ids"])}
    qids = list(qrels)
    data = SimpleNamespace(query_ids=qids, corpus_ids=feats["corpus_ids"], qrels=qrels)
    return [pos[q] for q in qids], data


def ndcg10(queries, corpus, feats, split, *, normalize=True, k=10):
    """nDCG@10 of exact cosine (or inner-product) search for one qrels split."""
    rows, data = split_data(feats, split)
    name = f"ndcg@{k}"
    scores = evaluate_embeddings(
        np.asarray(queries, dtype=np.float32)[rows],
        np.asarray(corpus, dtype=np.float32),
        data,
        metrics=[name],
        metric="cosine" if normalize else "ip",
    )
    return scores[name]
