"""Retrieval quality vs bytes on real data: members, concatenation, decoders, codes, LSH.

Data: debian-packages (BEIR layout, 10k corpus; dev qrels 500 queries for every choice,
test qrels 1,000 queries reported). Members: all-MiniLM-L6-v2, a model2vec model
distilled from it, TF-IDF -> TruncatedSVD(384) (``benchmarks/_features.py``, cached).
Everything is fitted on the first 10,000 unlabelled train passages only.

Reported for every row: nDCG@10 on dev and test, bytes per stored vector, compression
(4,096 bytes of the float32 1,024-d concatenation / bytes) and recovery (test nDCG@10 /
test nDCG@10 of the float32 weighted concatenation). "sym" encodes queries and
documents alike; "asym" compares float queries with compressed documents. Where a row
has hyper-parameters (member weights, whitening exponent, code weights), they are
chosen on dev and the dev choice is what the test column shows.

Sections: members alone and the concatenation (uniform and tuned weights, the weight
search is a ``GridSearchCV`` with :class:`skfusion.scoring.RetrievalScorer` on dev over
cached embeddings); PCA, whitened PCA, the paper's decoder and the default decoder at
every stop; ``PercentileQuantizer`` codes (1/2/4/8 bits, several widths) and
``AllocatedQuantizer`` (bits by variance) at 48x and 96x; ``RandomProjectionLSH``
256..8192 bits on the concatenation and on decoder outputs; faiss PQ / OPQ,
sentence-transformers ``quantize_embeddings`` (int8, binary), ``KBinsDiscretizer`` and
faiss RaBitQ (``IndexRaBitQ``, 1, 2 and 4 bits, float queries, bytes = ``code_size``,
after PCA and after the default decoder) at matched bytes; 2 vs 3 members for LSH and
codes.

    python -m benchmarks.quality [--quiet] [--refit] [--fresh]

Timing on 2 shared cores: the two decoder fits take 5-9 minutes each (cached under
``benchmarks/.cache/quality``; ``--refit`` retrains them); the evaluation sections
10-20 minutes, depending on other jobs on the cores. Finished sections are cached,
so a stopped run resumes (``--fresh`` recomputes them). Writes
``benchmarks/results/quality.{json,md,png}``; the PNG's Pareto fronts are drawn
through test nDCG@10 of the dev-chosen rows.
"""

import pickle
import time

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, ParameterGrid
from tqdm import tqdm

from skfusion.allocation import AllocatedQuantizer
from skfusion.datasets import load_beir
from skfusion.lsh import RandomProjectionLSH
from skfusion.quantize import PercentileQuantizer
from skfusion.scoring import RetrievalScorer
from skfusion.search import spread_weights

from ._bench import (
    Bench,
    arg_parser,
    paired_bootstrap,
    pyplot,
    save_plot,
    write_results,
)
from ._features import CACHE, data_dir, load_features, load_texts
from ._models import decoder_params

QCACHE = CACHE / "quality"
FULL_BYTES = 1024 * 4
STOPS = (32, 64, 128, 256, 384, 512, 768)
SPLITS = ("dev", "test")
BETAS = (0.0, 0.5, 1.0)


class _Members(TransformerMixin, BaseEstimator):
    """Texts -> weighted concatenation of cached member embeddings (for GridSearchCV).

    A stand-in for ``ConcatEmbedder`` over the embedding cache: the member embeddings
    of every benchmark text are computed once (``_features``), so the weight search
    only re-weights them.
    """

    def __init__(self, minilm=1.0, m2v=1.0, tfidf=1.0, table=None):
        self.minilm = minilm
        self.m2v = m2v
        self.tfidf = tfidf
        self.table = table

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        rows = [self.table["index"][t] for t in X]
        parts = [
            w * self.table[m][rows]
            for m, w in (("minilm", self.minilm), ("m2v", self.m2v), ("tfidf", self.tfidf))
        ]
        return np.hstack(parts).astype(np.float32)


class QualityBench(Bench):
    """Rows with bytes, compression and recovery of the float32 concatenation."""

    def __init__(self, feats):
        super().__init__(feats["query_ids"], feats["corpus_ids"], feats["qrels"])
        self.f = feats
        self.ref = self.both(feats["queries"], feats["corpus"])

    def ndcg(self, split, queries, database, **kw):
        """nDCG@10 of ``search`` with the rows of ``split``'s queries."""
        kw.setdefault("metric", "cosine" if _is_float(database) else "auto")
        return super().ndcg(split, queries, database, **kw)

    def add(self, section, method, mode, nbytes, nd, **extra):
        pq = getattr(nd["test"], "per_query", None)
        nd = {s: float(nd[s]) for s in SPLITS}
        row = {
            "section": section,
            "method": method,
            "mode": mode,
            "bytes": float(nbytes),
            "compression": FULL_BYTES / nbytes,
            "ndcg_dev": nd["dev"],
            "ndcg_test": nd["test"],
            "recovery_dev": nd["dev"] / self.ref["dev"],
            "recovery": nd["test"] / self.ref["test"],
            **extra,
        }
        if pq is not None:
            row["_per_query_test"] = pq  # for the bootstrap interval; not in the JSON
        return super().add(**row)

    def tune(self, section, method, mode, nbytes, candidates, **extra):
        """Score ``(params, fn(split) -> nDCG)`` candidates on dev; the best on test."""
        dev = [(params, fn("dev"), fn) for params, fn in candidates]
        params, best_dev, fn = max(dev, key=lambda c: c[1])
        nd = {"dev": best_dev, "test": fn("test")}
        grid = (
            [{"params": p, "ndcg_dev": float(d)} for p, d, _ in dev]
            if len(dev) > 1
            else None
        )
        return self.add(
            section, method, mode, nbytes, nd, params=params, grid=grid, **extra
        )


def _is_float(a):
    return np.issubdtype(np.asarray(a).dtype, np.floating)


# --------------------------------------------------------------------------- members
def members_section(b, quiet):
    f = b.f
    dims = {m: f["members"][m]["corpus"].shape[1] for m in f["members"]}
    for m in f["members"]:
        nd = b.both(f["members"][m]["queries"], f["members"][m]["corpus"])
        b.add("members", f"{m} alone ({dims[m]}-d float32)", "float", 4 * dims[m], nd)
    uni = {
        s: np.hstack([f["members"][m][s] for m in f["members"]])
        for s in ("corpus", "queries")
    }
    nd = b.both(uni["queries"], uni["corpus"])
    b.add("members", "concatenation, uniform weights (1024-d)", "float", FULL_BYTES, nd)

    # Weight search: GridSearchCV over member weights, scored on dev by RetrievalScorer.
    texts = load_texts()
    dev = load_beir(data_dir(), "dev")
    table = {"index": {}}
    for m in f["members"]:
        table[m] = np.vstack([f["members"][m][s] for s in ("train", "corpus", "queries")])
    for i, t in enumerate(texts["train"] + texts["corpus"] + texts["queries"]):
        table["index"].setdefault(t, i)
    grid = {"m2v": [0.0, 0.25, 0.5, 0.75, 1.0], "tfidf": [0.0, 0.25, 0.5, 0.75, 1.0]}
    train = texts["train"][:100]
    search_cv = GridSearchCV(
        _Members(table=table),
        grid,
        scoring=RetrievalScorer(dev),
        cv=[(np.arange(len(train)), np.arange(len(train)))],
        refit=False,
    ).fit(train)
    res = search_cv.cv_results_
    weight_grid = [
        {"minilm": 1.0, "m2v": p["m2v"], "tfidf": p["tfidf"], "ndcg_dev": float(s)}
        for p, s in zip(res["params"], res["mean_test_score"], strict=True)
    ]
    best = search_cv.best_params_
    # The features module's weights (1 / 0.5 / 0.5) are the reference concatenation.
    pick = _Members(table=table, **best)
    tuned = {s: pick.transform(_texts_of(texts, s)) for s in ("corpus", "queries")}
    nd = b.both(tuned["queries"], tuned["corpus"])
    b.add(
        "members",
        f"concatenation, tuned weights 1/{best['m2v']:g}/{best['tfidf']:g}",
        "float",
        FULL_BYTES,
        nd,
    )
    return {"grid": weight_grid, "best": best}


def _texts_of(texts, split):
    return texts["corpus"] if split == "corpus" else texts["queries"]


# ----------------------------------------------------------------- float reductions
def _fit_decoder(name, X, refit, quiet):
    from skfusion.decoder import MatryoshkaDecoder

    path = QCACHE / f"decoder_{name.replace(' ', '_').replace('(', '').replace(')', '')}"
    path = path.with_suffix(".joblib")
    import joblib

    if path.exists() and not refit:
        return joblib.load(path), None
    params = {**decoder_params(name), "random_state": 0}
    start = time.perf_counter()
    dec = MatryoshkaDecoder(**params).fit(X)
    secs = time.perf_counter() - start
    QCACHE.mkdir(parents=True, exist_ok=True)
    joblib.dump(dec, path)
    if not quiet:
        tqdm.write(f"decoder {name!r}: {secs:.0f}s, {dec.n_iter_} epochs")
    return dec, secs


def reductions_section(b, refit, quiet):
    f = b.f
    pca = PCA(max(STOPS), random_state=0).fit(f["train"])
    P = {s: pca.transform(f[s]).astype(np.float32) for s in ("train", "corpus", "queries")}
    var = pca.explained_variance_.astype(np.float32)
    out = {"pca": P, "pca_var": var}
    for k in STOPS:
        nd = b.both(P["queries"][:, :k], P["corpus"][:, :k])
        b.add("reductions", f"PCA {k}", "float", 4 * k, nd, dim=k)
    # Whitened PCA: scale by variance ** -w, w chosen on dev (mean over the stops).
    cands = []
    for w in (0.1, 0.2, 0.25, 0.3, 0.4, 0.5):
        s = var**-w
        nds = [
            b.both(P["queries"][:, :k] * s[:k], P["corpus"][:, :k] * s[:k]) for k in STOPS
        ]
        cands.append((w, nds))
    w, nds = max(cands, key=lambda c: np.mean([n["dev"] for n in c[1]]))
    for k, nd in zip(STOPS, nds, strict=True):
        b.add(
            "reductions", f"whitened PCA {k} (variance^-{w:g})", "float", 4 * k, nd, dim=k
        )
    out["whiten"] = w

    for name, label in (
        ("paper (random init, MSE)", "paper decoder"),
        ("default", "default decoder"),
    ):
        dec, secs = _fit_decoder(name, f["train"], refit, quiet)
        dec.set_params(normalize=False, output_dim=None, whiten=0.0)
        D = {
            s: dec.transform(f[s]).astype(np.float32)
            for s in ("train", "corpus", "queries")
        }
        out[label] = D
        for k in STOPS:
            nd = b.both(D["queries"][:, :k], D["corpus"][:, :k])
            b.add("reductions", f"{label} {k}", "float", 4 * k, nd, dim=k, fit_s=secs)
    return out


# ------------------------------------------------------------------------- codes
def _code_rows(b, section, base_name, H, width, bits):
    """PercentileQuantizer at ``width`` x ``bits``: sym (beta on dev) and asym."""
    q = PercentileQuantizer(bits=bits, random_state=0).fit(H["train"][:, :width])
    C = q.transform(H["corpus"][:, :width])
    Qc = q.transform(H["queries"][:, :width])
    Qf = H["queries"][:, :width]
    nbytes = width * bits / 8
    name = f"{base_name} {width} x {bits} bit{'s' * (bits > 1)}"

    def sym(beta):
        w = spread_weights(q, beta) if beta else None
        return lambda s: b.ndcg(
            s, Qc, C, metric="codes", quantizer=q, weights=w, normalize=True
        )

    b.tune(section, name, "sym", nbytes, [({"beta": beta}, sym(beta)) for beta in BETAS])
    asym = lambda s: b.ndcg(s, Qf, C, metric="asymmetric", quantizer=q, normalize=True)  # noqa: E731
    b.tune(section, name, "asym", nbytes, [({}, asym)])


def codes_section(b, red, quiet):
    bases = {"PCA": red["pca"], "default decoder": red["default decoder"]}
    shapes = (
        [(w, 1) for w in (128, 341, 682)]
        + [(w, 2) for w in (64, 170, 341, 512)]
        + [(w, 4) for w in (43, 85, 128, 256)]
        + [(w, 8) for w in (43, 85, 128, 256)]
    )
    jobs = [(base, w, bits) for base in bases for w, bits in shapes]
    for base, width, bits in tqdm(jobs, disable=quiet, desc="percentile codes"):
        _code_rows(b, "percentile codes", base, bases[base], width, bits)


def allocation_section(b, red, quiet):
    """AllocatedQuantizer at 48x (682 bits) and 96x (341 bits), params on dev."""
    jobs = [(base, budget) for base in ("PCA", "default decoder") for budget in (682, 341)]
    for base, budget in tqdm(jobs, disable=quiet, desc="allocated codes"):
        H = red["pca"] if base == "PCA" else red["default decoder"]
        # Bits by variance, or (max_features) two bits on each leading dimension.
        grid = list(
            ParameterGrid(
                [
                    {
                        "max_bits": [2, 3],
                        "allocation_power": [0.5, 1.0],
                        "buckets": ["equal", "gaussian"],
                        "spread": [0.5],
                    },
                    {
                        "max_bits": [2],
                        "max_features": [-(-budget // 2)],
                        "buckets": ["equal", "gaussian"],
                        "spread": [0.25, 0.5, 1.0],
                    },
                ]
            )
        )
        sym, asym = [], []
        for p in grid:
            q = AllocatedQuantizer(budget, random_state=0, **p).fit(H["train"])
            C, Qc = q.transform(H["corpus"]), q.transform(H["queries"])
            std = q.std_.astype(np.float64)
            sym.append((p, _alloc_eval(b, q, Qc, C, "codes", None)))
            for qa in (0.0, -0.5):
                w = np.where(q.bits_ > 0, std**qa, 0.0)
                w /= w[w > 0].mean()
                asym.append(
                    (
                        {**p, "query_power": qa},
                        _alloc_eval(b, q, H["queries"], C, "asymmetric", w),
                    )
                )
        name = f"{base} + AllocatedQuantizer({budget} bits)"
        b.tune("allocated codes", name, "sym", budget / 8, sym)
        b.tune("allocated codes", name, "asym", budget / 8, asym)


def _alloc_eval(b, q, queries, codes, metric, weights):
    return lambda s: b.ndcg(
        s, queries, codes, metric=metric, quantizer=q, weights=weights, normalize=True
    )


# --------------------------------------------------------------------------- LSH
def lsh_section(b, red, quiet):
    f = b.f
    bases = {
        "concatenation": {s: f[s] for s in ("train", "corpus", "queries")},
        "default decoder 256": {
            s: red["default decoder"][s][:, :256] for s in ("train", "corpus", "queries")
        },
    }
    jobs = [(base, n) for base in bases for n in (256, 512, 680, 1024, 2048, 4096, 8192)]
    for base, n in tqdm(jobs, disable=quiet, desc="LSH"):
        H = bases[base]
        lsh = RandomProjectionLSH(n, random_state=0).fit(H["train"])
        C, Q = lsh.transform(H["corpus"]), lsh.transform(H["queries"])
        nd = b.both(Q, C, metric="hamming")
        b.add("LSH", f"LSH {n} bits on {base}", "sym", n / 8, nd)


# ---------------------------------------------------------------- external baselines
def external_section(b, red, quiet):
    import faiss
    from sentence_transformers.util.quantization import quantize_embeddings
    from sklearn.preprocessing import KBinsDiscretizer

    P = red["pca"]
    # Whitened PCA (variance^-1/4) is the better float space for PQ's L2 codebooks.
    s = red["pca_var"] ** -0.25
    W = {k: v * s for k, v in P.items()}
    # 42 and 85 bytes: matched to 96x and 48x (8-bit sub-quantizers).
    jobs = [("PQ", 336, 42), ("OPQ", 336, 42), ("PQ", 340, 85), ("OPQ", 340, 85)]
    for kind, d, m in tqdm(jobs, disable=quiet, desc="faiss PQ/OPQ"):
        H = {k: v[:, :d] for k, v in W.items()}
        label = f"whitened PCA {d}"
        train, corpus, queries = (
            np.ascontiguousarray(H[k], dtype=np.float32)
            for k in ("train", "corpus", "queries")
        )
        if kind == "OPQ":
            opq = faiss.OPQMatrix(d, m)
            opq.niter = 8  # a few minutes on 2 cores
            opq.train(train)
            train, corpus, queries = (opq.apply_py(x) for x in (train, corpus, queries))
        pq = faiss.ProductQuantizer(d, m, 8)
        pq.train(train)
        rec_c = pq.decode(pq.compute_codes(corpus))
        rec_q = pq.decode(pq.compute_codes(queries))
        name = f"faiss {kind} {m} bytes on {label}"
        b.add("external", name, "sym", m, b.both(rec_q, rec_c))
        b.add("external", name, "asym", m, b.both(queries, rec_c))

    # sentence-transformers: int8 (calibrated on train) and binary, on PCA floats.
    for prec, width in (
        ("int8", 43),
        ("int8", 85),
        ("int8", 128),
        ("binary", 341),
        ("binary", 682),
        ("binary", 768),
    ):
        H = {k: v[:, :width] for k, v in P.items()}
        if prec == "int8":
            enc = {
                k: quantize_embeddings(H[k], "int8", calibration_embeddings=H["train"])
                for k in ("corpus", "queries")
            }
            c = enc["corpus"].astype(np.float32)
            q = enc["queries"].astype(np.float32)
            nbytes = width
            b.add(
                "external",
                f"sentence-transformers int8 PCA {width}",
                "sym",
                nbytes,
                b.both(q, c),
            )
            b.add(
                "external",
                f"sentence-transformers int8 PCA {width}",
                "asym",
                nbytes,
                b.both(H["queries"], c),
            )
        else:
            enc = {k: quantize_embeddings(H[k], "ubinary") for k in ("corpus", "queries")}
            nbytes = width / 8
            b.add(
                "external",
                f"sentence-transformers binary PCA {width}",
                "sym",
                nbytes,
                b.both(enc["queries"], enc["corpus"], metric="hamming"),
            )
            # Asymmetric binary: float query . (+-1 document bits).
            pm = (
                np.unpackbits(enc["corpus"], axis=1, count=width).astype(np.float32) * 2 - 1
            )
            b.add(
                "external",
                f"sentence-transformers binary PCA {width}",
                "asym",
                nbytes,
                b.both(H["queries"], pm, metric="ip"),
            )

    # KBinsDiscretizer (quantile, ordinal): the same buckets as percentile codes.
    for width, bits in ((341, 2), (170, 2)):
        kb = KBinsDiscretizer(
            n_bins=1 << bits,
            encode="ordinal",
            strategy="quantile",
            quantile_method="linear",
            subsample=None,
        )
        kb.fit(P["train"][:, :width])
        centre = ((1 << bits) - 1) / 2
        c = kb.transform(P["corpus"][:, :width]).astype(np.float32) - centre
        q = kb.transform(P["queries"][:, :width]).astype(np.float32) - centre
        name = f"KBinsDiscretizer quantile PCA {width} x {bits} bits"
        b.add("external", name, "sym", width * bits / 8, b.both(q, c, metric="ip"))
        b.add(
            "external",
            name,
            "asym",
            width * bits / 8,
            b.both(P["queries"][:, :width], c, metric="ip"),
        )


# -------------------------------------------------------------------- faiss RaBitQ
RABITQ = ((256, 1), (341, 1), (682, 1), (768, 1), (128, 2), (256, 2), (128, 4))


def rabitq_section(b, red, quiet):
    """faiss RaBitQ (1 bit and its multi-bit extension) after PCA and after the decoder.

    RaBitQ's natural mode: float queries against the codes (``qb=0``), faiss's own
    distance estimator, top-10 from ``IndexRaBitQ.search``; bytes = ``code_size``,
    which includes its per-vector factors.
    """
    import faiss

    for label in ("pca", "default decoder"):
        if label not in red:
            continue
        H = red[label]
        name = "PCA" if label == "pca" else label
        for dim, bits in tqdm(RABITQ, disable=quiet, desc=f"RaBitQ on {name}"):
            corpus = np.ascontiguousarray(H["corpus"][:, :dim], dtype=np.float32)
            index = faiss.IndexRaBitQ(dim, faiss.METRIC_INNER_PRODUCT, bits)
            index.train(np.ascontiguousarray(H["train"][:, :dim], dtype=np.float32))
            index.add(corpus)
            nd = {}
            for split in SPLITS:
                rows = b.query_rows[split]
                q = np.ascontiguousarray(H["queries"][rows, :dim], dtype=np.float32)
                nd[split] = b.score_topk(split, *index.search(q, 10))
            b.add(
                "external",
                f"faiss RaBitQ {name} {dim}, {bits} bit{'s' if bits > 1 else ''}",
                "asym",
                index.code_size,
                nd,
                dim=dim,
                bits=bits,
            )


# -------------------------------------------------------------- 2 vs 3 members
def members_robustness_section(b, quiet):
    """Paper claim (c): LSH and codes with 2 vs 3 members (recovery vs own float)."""
    f = b.f
    w = {"minilm": 1.0, "m2v": 0.5, "tfidf": 0.5}
    sets = {
        "2 members (MiniLM + model2vec)": ("minilm", "m2v"),
        "3 members": ("minilm", "m2v", "tfidf"),
    }
    out = {}
    for label, names in sets.items():
        H = {
            s: np.hstack([w[m] * f["members"][m][s] for m in names])
            for s in ("train", "corpus", "queries")
        }
        flt = b.both(H["queries"], H["corpus"])
        res = {"float": flt}
        for n in (680, 1024, 2048):
            lsh = RandomProjectionLSH(n, random_state=0).fit(H["train"])
            res[f"LSH {n}"] = b.both(
                lsh.transform(H["queries"]), lsh.transform(H["corpus"]), metric="hamming"
            )
        pca = PCA(341, random_state=0).fit(H["train"])
        P = {s: pca.transform(H[s]).astype(np.float32) for s in H}
        q = PercentileQuantizer(bits=2, random_state=0).fit(P["train"])
        res["PCA 341 x 2 bits sym"] = b.both(
            q.transform(P["queries"]),
            q.transform(P["corpus"]),
            metric="codes",
            quantizer=q,
            weights=spread_weights(q, 0.5),
            normalize=True,
        )
        res["PCA 341 x 2 bits asym"] = b.both(
            P["queries"],
            q.transform(P["corpus"]),
            metric="asymmetric",
            quantizer=q,
            normalize=True,
        )
        out[label] = {
            k: {
                **{sp: float(x) for sp, x in v.items()},
                "recovery_vs_own_float": v["test"] / flt["test"],
                "recovery": v["test"] / b.ref["test"],
            }
            for k, v in res.items()
        }
    return out


# ------------------------------------------------------------------------ output
def _pareto(rows):
    pts = sorted(rows, key=lambda r: (r["bytes"], -r["ndcg_test"]))
    front, best = [], -1.0
    for r in pts:
        if r["ndcg_test"] > best:
            front.append(r)
            best = r["ndcg_test"]
    return front


def _plot(rows, ref, name):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = {"float": "tab:gray", "sym": "tab:blue", "asym": "tab:orange"}
    for mode, colour in colours.items():
        sub = [r for r in rows if r["mode"] == mode]
        ax.scatter(
            [r["bytes"] for r in sub],
            [r["ndcg_test"] for r in sub],
            s=10,
            alpha=0.35,
            color=colour,
        )
        front = _pareto(sub)
        ax.plot(
            [r["bytes"] for r in front],
            [r["ndcg_test"] for r in front],
            "-o",
            ms=3,
            color=colour,
            label=f"{mode} (Pareto front)",
        )
    ax.axhline(ref, color="k", lw=0.8, ls="--", label="float32 concatenation (4096 B)")
    for x, lab in ((FULL_BYTES / 48, "48x"), (FULL_BYTES / 96, "96x")):
        ax.axvline(x, color="k", lw=0.5, ls=":")
        ax.text(x, 0.41, lab, rotation=90, va="bottom", ha="right", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0.4, 0.85)
    ax.set_xlabel("bytes per vector (log)")
    ax.set_ylabel("nDCG@10 (test)")
    ax.set_title("debian-packages: retrieval quality vs storage")
    ax.legend(loc="lower right", fontsize=8)
    save_plot(fig, name)
    plt.close(fig)


def _bootstrap(per_query, ref_pq):
    """95% paired bootstrap interval (over test queries) of a row's recovery."""
    if per_query is None:
        return None, None
    return paired_bootstrap(per_query, ref_pq)


def _targets(rows, ref_pq):
    """Best dev-chosen sym/asym row at <= 85.33 (48x) and <= 42.67 (96x) bytes."""
    out = {}
    goals = {("sym", 48): 0.99, ("sym", 96): 0.96, ("asym", 48): 0.995, ("asym", 96): 0.98}
    for (mode, factor), goal in goals.items():
        # skfusion's rows only: the external baselines are what it is compared with.
        cands = [
            r
            for r in rows
            if r["mode"] == mode
            and r["compression"] >= factor - 1e-9
            and r["section"] != "external"
        ]
        # The choice among methods is made on dev too.
        best = max(cands, key=lambda r: r["ndcg_dev"])
        best_test = max(cands, key=lambda r: r["ndcg_test"])
        lo, hi = _bootstrap(best.get("_per_query_test"), ref_pq)
        out[f"{mode} {factor}x"] = {
            "target": goal,
            "recovery_95ci": [lo, hi],
            "chosen_on_dev": best["method"],
            "recovery": best["recovery"],
            "recovery_dev": best["recovery_dev"],
            "met": best["recovery"] >= goal,
            "best_test_row": best_test["method"],
            "best_test_recovery": best_test["recovery"],
        }
    return out


def _markdown(out):
    ref = out["float_concat_ndcg"]
    lines = [
        "# Retrieval quality vs bytes: debian-packages",
        "",
        f"Reference: float32 weighted 1,024-d concatenation (4,096 bytes), nDCG@10 dev "
        f"{ref['dev']:.4f}, test {ref['test']:.4f}. Recovery = test nDCG@10 / reference; "
        "compression = 4,096 / bytes, where bytes = bits / 8 (a packed row rounds up to "
        "whole bytes: 682 bits are stored in 86). Hyper-parameters chosen on dev. "
        "Fitted on 10,000 "
        "train passages. Generated by `benchmarks/quality.py`.",
        "",
        "## Targets (test recovery of the row chosen on dev)",
        "",
        "| target | goal | chosen on dev | recovery dev | recovery test | 95% interval | "
        "met | best test row |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for k, t in out["targets"].items():
        lines.append(
            f"| {k} | {100 * t['target']:.1f}% | {t['chosen_on_dev']} | "
            f"{100 * t['recovery_dev']:.1f}% | {100 * t['recovery']:.1f}% | "
            f"{_interval(t['recovery_95ci'])} | "
            f"{'yes' if t['met'] else 'no'} | {t['best_test_row']} "
            f"({100 * t['best_test_recovery']:.1f}%) |"
        )
    lines += [
        "",
        "The interval is a paired bootstrap over the 1,000 test queries (2,000 "
        "resamples) of the chosen row's recovery: a target met by less than the "
        "interval's half-width is met on this query sample, not with confidence.",
        "",
        "## Paper claims",
        "",
        *(f"- **{k}**: {v}" for k, v in out["claims"].items()),
        "",
        "## Member weights (GridSearchCV on dev, MiniLM weight 1)",
        "",
        "| model2vec \\ TF-IDF | "
        + " | ".join(f"{t:g}" for t in sorted({g["tfidf"] for g in out["weights"]["grid"]}))
        + " |",
        "|---|" + "---:|" * len({g["tfidf"] for g in out["weights"]["grid"]}),
    ]
    tf = sorted({g["tfidf"] for g in out["weights"]["grid"]})
    for m in sorted({g["m2v"] for g in out["weights"]["grid"]}):
        vals = {g["tfidf"]: g["ndcg_dev"] for g in out["weights"]["grid"] if g["m2v"] == m}
        lines.append(f"| {m:g} | " + " | ".join(f"{vals[t]:.4f}" for t in tf) + " |")
    lines += [
        "",
        "## All rows",
        "",
        "| section | method | mode | bytes | compression | nDCG@10 dev | "
        "nDCG@10 test | recovery | chosen on dev |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['section']} | {r['method']} | {r['mode']} | {r['bytes']:g} | "
            f"{r['compression']:.1f}x | {r['ndcg_dev']:.4f} | {r['ndcg_test']:.4f} | "
            f"{100 * r['recovery']:.1f}% | {_fmt_params(r.get('params'))} |"
        )
    lines += [
        "",
        "## 2 vs 3 members (claim c)",
        "",
        "| members | variant | nDCG@10 test | recovery vs own float | vs 3-member float |",
        "|---|---|---:|---:|---:|",
    ]
    for label, res in out["members_robustness"].items():
        for k, v in res.items():
            lines.append(
                f"| {label} | {k} | {v['test']:.4f} | "
                f"{100 * v['recovery_vs_own_float']:.1f}% | "
                f"{100 * v['recovery']:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def _interval(ci):
    lo, hi = ci
    return "" if lo is None else f"{100 * lo:.1f}-{100 * hi:.1f}%"


def _fmt_params(params):
    if not params:
        return ""
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _claims(out):
    rows = out["rows"]
    get = {(r["method"], r["mode"]): r for r in rows}
    members = [r for r in rows if r["section"] == "members" and "alone" in r["method"]]
    best_member = max(members, key=lambda r: r["ndcg_test"])
    tuned = next(r for r in rows if r["method"].startswith("concatenation, tuned"))
    uni = get[("concatenation, uniform weights (1024-d)", "float")]
    dec384 = get[("paper decoder 384", "float")]
    def384 = get[("default decoder 384", "float")]
    rob = out["members_robustness"]
    two, three = rob["2 members (MiniLM + model2vec)"], rob["3 members"]
    lsh = ", ".join(
        f"{k}: {100 * two[k]['recovery_vs_own_float']:.1f}% -> "
        f"{100 * three[k]['recovery_vs_own_float']:.1f}%"
        for k in two
        if k != "float"
    )
    return {
        "(a) concatenation beats its best member": (
            f"holds with tuned weights ({tuned['ndcg_test']:.4f} vs "
            f"{best_member['method']} {best_member['ndcg_test']:.4f}); fails with uniform "
            f"weights ({uni['ndcg_test']:.4f})"
            if tuned["ndcg_test"] > best_member["ndcg_test"]
            else f"fails: tuned {tuned['ndcg_test']:.4f} vs best member "
            f"{best_member['ndcg_test']:.4f}"
        ),
        "(b) decoder at 384-d keeps >= 98%": (
            f"paper decoder {100 * dec384['recovery']:.1f}% "
            f"({'holds' if dec384['recovery'] >= 0.98 else 'fails'}); default decoder "
            f"{100 * def384['recovery']:.1f}% "
            f"({'holds' if def384['recovery'] >= 0.98 else 'fails'})"
        ),
        "(c) more members make codes more robust (vs own float, 2 -> 3 members)": lsh,
    }


def main(argv=None):
    ap = arg_parser(__doc__)
    ap.add_argument("--refit", action="store_true", help="retrain the cached decoders")
    ap.add_argument("--fresh", action="store_true", help="ignore finished sections")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    b = QualityBench(load_features())
    out = {
        "dataset": "debian-packages",
        "n_train": 10_000,
        "float_concat_ndcg": {k: float(v) for k, v in b.ref.items()},
    }
    red = reductions_section(b, args.refit, args.quiet)
    out["whiten"] = red["whiten"]
    sections = {
        "weights": lambda: members_section(b, args.quiet),
        "codes": lambda: codes_section(b, red, args.quiet),
        "allocation": lambda: allocation_section(b, red, args.quiet),
        "lsh": lambda: lsh_section(b, red, args.quiet),
        "external": lambda: external_section(b, red, args.quiet),
        "rabitq": lambda: rabitq_section(b, red, args.quiet),
        "members_robustness": lambda: members_robustness_section(b, args.quiet),
    }
    # Finished sections are kept (rows and results) so an interrupted run resumes;
    # --refit or --fresh starts over.
    done_path = QCACHE / "sections.pkl"
    done = {}
    if done_path.exists() and not (args.refit or args.fresh):
        done = pickle.loads(done_path.read_bytes())
    reduction_rows = list(b.rows)
    for name, run in tqdm(sections.items(), disable=args.quiet, desc="sections"):
        if name not in done:
            before = len(b.rows)
            result = run()
            done[name] = (b.rows[before:], result)
            done_path.write_bytes(pickle.dumps(done))
        else:
            b.rows.extend(done[name][0])
        if done[name][1] is not None:
            out[name] = done[name][1]
    # Members first, then reductions, in the tables.
    b.rows = (
        done["weights"][0]
        + reduction_rows
        + b.rows[len(reduction_rows) + len(done["weights"][0]) :]
    )
    out["rows"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in b.rows]
    out["targets"] = _targets(b.rows, b.ref["test"].per_query)
    out["claims"] = _claims(out)
    out["seconds"] = time.perf_counter() - start
    md = _markdown(out)
    write_results("quality", out, md, indent=1, default=float)
    _plot(b.rows, b.ref["test"], "quality.png")
    if not args.quiet:
        print(md.split("## All rows")[0])


if __name__ == "__main__":
    main()
