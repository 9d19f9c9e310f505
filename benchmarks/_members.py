"""What ``members`` and ``members_48x`` share: real members' data and their scoring.

:func:`load_all` reads the members cache of ``python -m benchmarks.encode_members``
(MiniLM, e5, mpnet) plus the cheap members (model2vec, TF-IDF/SVD, encoded here once),
L2-normalised on one common corpus; :class:`MembersBench` scores them; the candidate
builders and :func:`fit_decoder` (cached under ``.cache/members/fits``) are the
compression protocol both benchmarks run.
"""

import pickle
import re
import time

import numpy as np

from skfusion import AllocatedQuantizer, MatryoshkaDecoder, PercentileQuantizer
from skfusion.datasets import load_passages
from skfusion.search import spread_weights

from ._bench import Bench
from ._features import (
    MEMBERS,
    corpus_order,
    cut,
    data_dir,
    has_member,
    l2,
    load_member,
    member_texts,
    tfidf_svd,
)
from ._models import distill_member

FITS = MEMBERS / "fits"
SHORT = {"minilm": "MiniLM", "e5": "e5", "m2v": "m2v", "tfidf": "TF-IDF", "mpnet": "mpnet"}
BETAS = (0.0, 0.5, 1.0)
SPLITS = ("train", "corpus", "queries")
# Train passages that fit PCA, decoders and quantizers (the setup); the encoding
# cache may hold more (``members_48x`` tries 12,000).
N_TRAIN = 4000


def cheap_members(texts):
    """model2vec and TF-IDF/SVD embeddings of every split (seconds; cached)."""
    out = {}
    splits = ("train", "corpus", "queries", "pq_queries", "pq_docs")
    for name in ("m2v", "tfidf"):
        folder = MEMBERS / name
        paths = {s: folder / f"{s}.npy" for s in splits}
        if not all(p.exists() for p in paths.values()):
            folder.mkdir(parents=True, exist_ok=True)
            encode = _m2v_encoder() if name == "m2v" else _tfidf_encoder()
            for s in splits:
                np.save(paths[s], np.asarray(encode(texts[s]), dtype=np.float32))
        out[name] = {s: np.load(p) for s, p in paths.items()}
    return out


def _m2v_encoder():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(distill_member()), device="cpu")
    return lambda t: model.encode(t, batch_size=256)


def _tfidf_encoder():
    train = [cut(t) for t in load_passages(data_dir() / "train.jsonl.gz", limit=10_000)]
    lex = tfidf_svd()
    lex.fit(train)
    return lex.transform


def load_all(n_corpus=None, with_mpnet=True):
    """L2-normalised member arrays on one common corpus, plus texts, ids and qrels.

    The corpus is the longest prefix of ``corpus_order`` that e5 (and mpnet, when it
    is included) finished: all 10,000 documents once ``encode_members.py`` is done
    (MiniLM and the cheap members have everything).
    """
    texts = member_texts(n_train=10_000)
    order = corpus_order(texts)
    prio = ["e5"]
    if with_mpnet and has_member("mpnet", "corpus_prio") and has_member("mpnet", "queries"):
        if len(load_member("mpnet", "queries")) == len(texts["queries"]):
            prio.append("mpnet")
    done = min(len(load_member(m, "corpus_prio")) for m in prio)
    n = done if n_corpus is None else n_corpus
    if n > done:
        raise SystemExit(f"--corpus {n}: {'/'.join(prio)} encoded only {done} documents")
    keep = order[:n]
    members = {}
    minilm_corpus = load_member("minilm", "corpus", len(texts["corpus"]))
    for m in ("minilm", *prio):
        corpus = minilm_corpus[keep] if m == "minilm" else load_member(m, "corpus_prio", n)
        members[m] = {"corpus": corpus, "queries": load_member(m, "queries")}
        for s in ("train", "pq_queries", "pq_docs"):
            if has_member(m, s):
                members[m][s] = load_member(m, s)
    cheap = cheap_members(texts)
    for m, arrays in cheap.items():
        members[m] = {s: a[keep] if s == "corpus" else a for s, a in arrays.items()}
    members = {m: {s: l2(a) for s, a in d.items()} for m, d in members.items()}
    return {
        "members": members,
        "corpus_ids": [texts["corpus_ids"][i] for i in keep],
        "corpus_texts": [texts["corpus"][i] for i in keep],
        "query_ids": texts["query_ids"],
        "query_texts": texts["queries"],
        "qrels": dict(texts["qrels"]),
        "pq": texts["pq_pairs"],
        "pq_passages": texts["pq_passages"],
        "pq_texts": {s: texts[s] for s in ("pq_queries", "pq_docs")},
        "n_corpus": int(n),
        "full_corpus_ids": texts["corpus_ids"],
        "full_minilm_corpus": l2(minilm_corpus),
    }


class MembersBench(Bench):
    """nDCG@10 on dev and test of ``load_all()``'s data, and the result rows.

    Keeps the per-query test nDCG@10 of every row (``per_query``, keyed by
    ``(system, method, mode)``) for paired bootstrap intervals.
    """

    def __init__(self, data):
        super().__init__(data["query_ids"], data["corpus_ids"], data["qrels"])
        self.d = data
        # Per-query test nDCG@10 of every row, for paired bootstrap intervals.
        self.per_query = {}
        self._last = None

    def ndcg(self, split, queries, corpus, corpus_ids=None, **kw):
        return float(super().ndcg(split, queries, corpus, corpus_ids, **kw))

    def ndcg_topk(self, split, scores, idx, corpus_ids=None):
        """nDCG@10 of a top-10 (``scores``, ``idx``) of the split's query rows."""
        return float(self.score_topk(split, scores, idx, corpus_ids))

    def score_topk(self, split, scores, idx, corpus_ids=None, k=10):
        score = super().score_topk(split, scores, idx, corpus_ids, k)
        if split == "test":
            self._last = score.per_query
        return score

    def add(self, section, system, method, mode, nbytes, nd, **extra):
        row = super().add(
            section=section,
            system=system,
            method=method,
            mode=mode,
            bytes=float(nbytes),
            ndcg_dev=nd["dev"],
            ndcg_test=nd["test"],
            **extra,
        )
        if self._last is not None and len(self._last) == len(self.query_rows["test"]):
            self.per_query[(system, method, mode)] = self._last
        self._last = None
        print(
            f"{section:>12} | {system:<28} | {method:<44} | {mode:<5} | {nbytes:>7g} B "
            f"| {'  '.join(f'{k} {v:.4f}' for k, v in nd.items() if v is not None)}",
            flush=True,
        )
        return row

    def tune(self, section, system, method, mode, nbytes, candidates, **extra):
        """Pick the candidate (params, fn(split) -> nDCG) best on dev; report test."""
        dev, params, fn = self.best_on_dev(candidates)
        self._last = None
        nd = {"dev": dev, **{s: fn(s) for s in self.splits if s != "dev"}}
        return self.add(section, system, method, mode, nbytes, nd, **params, **extra)


def concat(members, names, weights, split, n_train=N_TRAIN):
    """``hstack(w_i * member_i)`` of one split (train: the first ``n_train`` rows)."""
    n = min(len(members[m][split]) for m in names)
    if split == "train":
        if n < n_train:
            raise SystemExit(f"only {n} train passages encoded for {names}, need {n_train}")
        n = n_train
    return np.hstack(
        [w * members[m][split][:n] for m, w in zip(names, weights, strict=True)]
    )


def code_candidates(b, H, width, bits):
    """(sym candidates, asym candidates) for codes of the first ``width`` dims of H."""
    q = PercentileQuantizer(bits=bits, random_state=0).fit(H["train"][:, :width])
    C = q.transform(H["corpus"][:, :width])
    Qc = q.transform(H["queries"][:, :width])
    Qf = H["queries"][:, :width]

    def sym(beta):
        w = spread_weights(q, beta) if beta else None
        return lambda s: b.ndcg(
            s, Qc, C, metric="codes", quantizer=q, weights=w, normalize=True
        )

    sym_c = [({"width": width, "bits": bits, "beta": beta}, sym(beta)) for beta in BETAS]
    asym_c = [
        (
            {"width": width, "bits": bits},
            lambda s: b.ndcg(s, Qf, C, metric="asymmetric", quantizer=q, normalize=True),
        )
    ]
    return sym_c, asym_c


def allocated_candidates(b, H, budget, max_width):
    """(sym, asym) candidates: ``AllocatedQuantizer`` codes of ``budget`` bits per row.

    Bits go by variance over the first ``width`` outputs (up to 3 per dimension), for
    widths of one half, three quarters and all of ``budget``, and two code spreads.
    """
    sym_c, asym_c = [], []
    for width in (budget // 2, 3 * budget // 4, budget):
        if width > max_width:
            continue
        for spread in (0.5, 1.0):
            q = AllocatedQuantizer(
                bit_budget=budget, max_bits=3, spread=spread, random_state=0
            ).fit(H["train"][:, :width])
            C = q.transform(H["corpus"][:, :width])
            Qc = q.transform(H["queries"][:, :width])
            Qf = H["queries"][:, :width]
            params = {"width": width, "bit_budget": budget, "spread": spread}
            sym_c.append(
                (params, lambda s, q=q, C=C, Qc=Qc: b.ndcg(
                    s, Qc, C, metric="codes", quantizer=q, normalize=True
                ))
            )  # fmt: skip
            asym_c.append(
                (params, lambda s, q=q, C=C, Qf=Qf: b.ndcg(
                    s, Qf, C, metric="asymmetric", quantizer=q, normalize=True
                ))
            )  # fmt: skip
    return sym_c, asym_c


def centred(H):
    """Every split minus the train mean: what StandardScaler(with_std=False) does.

    The e5 + MiniLM concatenation is strongly anisotropic (its mean direction holds
    about three quarters of each row's squared norm); percentile codes and LSH spend
    their bits on that shared offset unless it is removed first.
    """
    mean = H["train"].mean(axis=0)
    return {s: (H[s] - mean).astype(np.float32) for s in H}


def fit_decoder(key, train, **params):
    """The default MatryoshkaDecoder (plus ``params``) fitted on ``train``; cached."""
    FITS.mkdir(parents=True, exist_ok=True)
    path = FITS / f"{key}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    n = min(768, train.shape[1])
    stops = tuple(s for s in (32, 64, 128, 200, 256, 300, 384, 512, 768) if s <= n)
    t = time.perf_counter()
    dec = MatryoshkaDecoder(n, stops, random_state=0, **params).fit(train)
    dec.fit_seconds_ = time.perf_counter() - t
    with path.open("wb") as f:
        pickle.dump(dec, f)
    return dec


def slug(params):
    return re.sub(r"[^a-z0-9=_.]+", "-", "_".join(f"{k}={v}" for k, v in params.items()))
