"""skfusion: several small, frozen text-embedding models as one compact embedding.

Concatenate the L2-normalised outputs of several embedding models
(:class:`ConcatEmbedder`), compress the concatenation with a Matryoshka decoder
(:class:`MatryoshkaDecoder`), and quantize it (:class:`PercentileQuantizer`,
:class:`AllocatedQuantizer`, :class:`RandomProjectionLSH`, all code transformers
sharing :class:`BaseCodeTransformer`); every step is a scikit-learn transformer. Importing
skfusion imports neither torch nor sentence-transformers: models load at ``fit``, and a
fitted decoder or quantizer transforms with numpy alone.
"""

from .allocation import AllocatedQuantizer
from .codes import BaseCodeTransformer
from .decoder import MatryoshkaDecoder
from .embedder import ConcatEmbedder
from .lsh import RandomProjectionLSH
from .quantize import PercentileQuantizer
from .search import search

__version__ = "0.1.0"

__all__ = [
    "AllocatedQuantizer",
    "BaseCodeTransformer",
    "ConcatEmbedder",
    "MatryoshkaDecoder",
    "PercentileQuantizer",
    "RandomProjectionLSH",
    "search",
]
