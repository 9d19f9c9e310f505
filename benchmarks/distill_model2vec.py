"""Distil a static model2vec member from the offline all-MiniLM-L6-v2 (run once, cached).

Usage: ``HF_HUB_OFFLINE=1 python -m benchmarks.distill_model2vec [OUT_DIR]``.
The result is saved as a sentence-transformers model folder, so ``ConcatEmbedder``
loads it by path like any other member (the code: ``benchmarks/_models.py``).
"""

import sys
from pathlib import Path

from ._models import M2V_DIR, distill_member

if __name__ == "__main__":
    print(distill_member(Path(sys.argv[1]) if len(sys.argv) > 1 else M2V_DIR))
