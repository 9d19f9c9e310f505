"""skfusion: several small, frozen text-embedding models as one compact embedding.

Concatenate the L2-normalised outputs of several embedding models
(:class:`ConcatEmbedder`), compress the concatenation with a Matryoshka decoder
(:class:`MatryoshkaDecoder`), and quantize it (:class:`PercentileQuantizer`,
:class:`RandomProjectionLSH`); every step is a scikit-learn transformer.
"""

__version__ = "0.1.0"
