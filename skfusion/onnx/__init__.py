"""ONNX export of a fitted skfusion head (decoder, quantizers, LSH) and of its members.

Importing this module registers `skl2onnx <https://onnx.ai/sklearn-onnx/>`_ converters
for :class:`~skfusion.decoder.MatryoshkaDecoder`,
:class:`~skfusion.quantize.PercentileQuantizer`,
:class:`~skfusion.allocation.AllocatedQuantizer` and
:class:`~skfusion.lsh.RandomProjectionLSH`, so ``skl2onnx.to_onnx`` converts a
pipeline of them like any scikit-learn pipeline. :func:`to_onnx` is the one entry
point: it takes a fitted step or pipeline (a leading text embedder is left out: its
members are exported by :func:`skfusion.onnx.members.export_members`) and returns an
``onnx.ModelProto`` whose onnxruntime output equals ``transform``: codes bit for bit,
floats within float rounding.

:func:`export_pipeline` writes a whole pipeline (members, head, optionally a corpus) to
one folder and :class:`ExportedPipeline` runs that folder end to end in Python
(onnxruntime + tokenizers): ``transform(texts, role=...)`` and ``search(texts, k)``.

Needs the ``onnx`` extra: ``pip install "skfusion[onnx]"``.
"""

import copy
import warnings
from numbers import Integral

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .._compat import HasMethods, Interval, StrOptions, validate_params
from ..allocation import AllocatedQuantizer
from ..codes import BaseCodeTransformer
from ..decoder import MatryoshkaDecoder
from ..lsh import RandomProjectionLSH
from ..quantize import PercentileQuantizer
from .exported import ExportedPipeline, export_pipeline

__all__ = [
    "OPSET",
    "ExportedPipeline",
    "code_layout",
    "export_pipeline",
    "register_converters",
    "to_onnx",
]

# BitwiseAnd and ReduceL2/ReduceSum with axes as an input need opset 18.
OPSET = 18


def _require(module):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"skfusion.onnx needs the {module!r} package; install the onnx extra: "
            'pip install "skfusion[onnx]".'
        ) from exc


def code_layout(quantizer):
    """Bit widths of the code of every output dimension of a fitted quantizer.

    Parameters
    ----------
    quantizer : BaseCodeTransformer
        Fitted (percentile, allocated or LSH codes: anything with the code protocol).

    Returns
    -------
    widths : ndarray of shape (n_features_in_,), dtype int64
        The fitted ``bits_`` (the ``bits`` parameter may have changed since ``fit``;
        ``transform`` and so the export follow the fitted codes). Packed rows hold
        these codes one after the other, most significant bit first.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.quantize import PercentileQuantizer
    >>> from skfusion.onnx import code_layout
    >>> X = np.random.default_rng(0).standard_normal((50, 3))
    >>> code_layout(PercentileQuantizer(bits=2).fit(X))
    array([2, 2, 2])
    """
    if isinstance(quantizer, BaseCodeTransformer):
        check_is_fitted(quantizer)
        return np.asarray(quantizer.bits_, dtype=np.int64)
    raise TypeError(
        "quantizer must be a fitted code transformer (skfusion.codes."
        f"BaseCodeTransformer), got {type(quantizer).__name__}."
    )


# -- graph helpers -----------------------------------------------------------------


class _Graph:
    """Adds nodes and initializers of one operator to an skl2onnx container."""

    def __init__(self, scope, operator, container):
        self.scope, self.operator, self.container = scope, operator, container
        self.prefix = operator.full_name

    def name(self, hint):
        return self.scope.get_unique_variable_name(f"{self.prefix}_{hint}")

    def const(self, hint, value):
        from onnx import numpy_helper

        value = np.asarray(value)
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), self.name(hint))
        self.container.initializers.append(tensor)
        return tensor.name

    def node(self, op, inputs, output=None, **attrs):
        out = output or self.name(op.lower())
        self.container.add_node(
            op, inputs, [out], name=self.scope.get_unique_operator_name(op), **attrs
        )
        return out


def _float_dtype(operator, estimator):
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    t = operator.inputs[0].type
    if isinstance(t, FloatTensorType):
        return np.float32
    if isinstance(t, DoubleTensorType):
        return np.float64
    raise TypeError(
        f"{type(estimator).__name__}: ONNX input must be float32 or float64 (dtype="
        f"'float32' or 'float64'), got {type(t).__name__}."
    )


def _pack_bits(g, bits_u8, n_bits):
    """Pack an ``(n, n_bits)`` uint8 0/1 tensor into ``ceil(n_bits / 8)`` bytes, MSB
    first (``np.packbits(..., axis=1)``): one exact float MatMul by the bit weights."""
    n_bytes = -(-n_bits // 8)
    weights = np.zeros((n_bits, n_bytes), dtype=np.float32)
    i = np.arange(n_bits)
    weights[i, i // 8] = 2.0 ** (7 - i % 8)
    as_float = g.node("Cast", [bits_u8], to=1)  # FLOAT
    summed = g.node("MatMul", [as_float, g.const("byte_weights", weights)])
    return summed, n_bytes


def _pack_codes(g, codes, widths, output):
    """Bit stream of ``codes`` (n, d) with ``widths[j]`` bits for column ``j``."""
    widths = np.asarray(widths, dtype=np.int64)
    n_bits = int(widths.sum())
    cols = np.repeat(np.arange(widths.size), widths)
    pos = np.arange(n_bits) - (np.cumsum(widths) - widths)[cols]
    shifts = (widths[cols] - 1 - pos).astype(np.uint8)
    picked = g.node("Gather", [codes, g.const("bit_cols", cols)], axis=1)
    shifted = g.node("BitShift", [picked, g.const("bit_shifts", shifts)], direction="RIGHT")
    bits = g.node("BitwiseAnd", [shifted, g.const("one", np.array(1, dtype=np.uint8))])
    summed, _ = _pack_bits(g, bits, n_bits)
    g.node("Cast", [summed], output, to=2)  # UINT8


def _threshold_codes(g, X, thresholds, dtype, output):
    """``sum_k X[:, j] > thresholds[j, k]`` as uint8, as the quantizers compute it."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if dtype == np.float32:
        # The quantizers compare float32 rows with the float64 edges rounded down to
        # float32, so that float32 `x > t32` equals float64 `x > t`; do the same.
        t32 = thr.astype(np.float32)
        thr = np.where(t32 > thr, np.nextafter(t32, np.float32(-np.inf)), t32)
    expanded = g.node("Unsqueeze", [X, g.const("axis2", np.array([2]))])
    above = g.node("Greater", [expanded, g.const("thresholds", thr.astype(dtype))])
    counts = g.node("Cast", [above], to=6)  # INT32
    total = g.node("ReduceSum", [counts, g.const("axes", np.array([2]))], keepdims=0)
    g.node("Cast", [total], output, to=2)  # UINT8


# -- shape calculators ---------------------------------------------------------------


def _out_width(est):
    # Only fitted attributes and what transform reads: parameters such as bits,
    # n_bits or n_components may have been changed by set_params since fit.
    check_is_fitted(est)
    # Every step reports its output width the same way (output_dim validated, as
    # transform does; packed bytes for codes with pack=True).
    return len(est.get_feature_names_out())


def _shape(operator):
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        DoubleTensorType,
        FloatTensorType,
        UInt8TensorType,
    )

    est = operator.raw_operator
    n = operator.inputs[0].get_first_dimension()
    width = _out_width(est)
    if isinstance(est, MatryoshkaDecoder):
        t = operator.inputs[0].type
        kind = DoubleTensorType if isinstance(t, DoubleTensorType) else FloatTensorType
    elif isinstance(est, RandomProjectionLSH) and not est.pack:
        kind = BooleanTensorType
    else:
        kind = UInt8TensorType
    operator.outputs[0].type = kind([n, width])


# -- converters ----------------------------------------------------------------------


def _decoder_affine(dec, dtype):
    """``(A, c)`` with ``transform(X) == X @ A + c`` before normalisation, read off the
    decoder's own ``transform`` (with ``normalize=False``) on the unit vectors, so the
    export follows whatever ``whiten``/``output_dim`` do there."""
    probe = copy.copy(dec).set_params(normalize=False)
    d = dec.n_features_in_
    rows = np.vstack([np.zeros((1, d)), np.eye(d)])
    with warnings.catch_warnings():
        # Probing with a plain array a decoder fitted on a DataFrame.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        out = probe.transform(rows)
    c = out[0]
    return (out[1:] - c).astype(dtype), c.astype(dtype)


def _convert_decoder(scope, operator, container):
    dec = operator.raw_operator
    check_is_fitted(dec)
    dtype = _float_dtype(operator, dec)
    g = _Graph(scope, operator, container)
    A, c = _decoder_affine(dec, dtype)
    X = operator.inputs[0].full_name
    out = operator.outputs[0].full_name
    projected = g.node("MatMul", [X, g.const("matrix", A)])
    if not dec.normalize:
        g.node("Add", [projected, g.const("offset", c)], out)
        return
    H = g.node("Add", [projected, g.const("offset", c)])
    norms = g.node("ReduceL2", [H, g.const("axes", np.array([1]))], keepdims=1)
    tiny = np.array(np.finfo(dtype).tiny, dtype=dtype)
    floored = g.node("Max", [norms, g.const("tiny", tiny)])
    g.node("Div", [H, floored], out)


def _convert_quantizer(scope, operator, container):
    q = operator.raw_operator
    widths = code_layout(q)
    dtype = _float_dtype(operator, q)
    g = _Graph(scope, operator, container)
    X = operator.inputs[0].full_name
    out = operator.outputs[0].full_name
    if not q.pack:
        _threshold_codes(g, X, q.thresholds_, dtype, out)
        return
    codes = g.name("codes")
    _threshold_codes(g, X, q.thresholds_, dtype, codes)
    _pack_codes(g, codes, widths, out)


def _convert_lsh(scope, operator, container):
    lsh = operator.raw_operator
    check_is_fitted(lsh)
    dtype = _float_dtype(operator, lsh)
    g = _Graph(scope, operator, container)
    X = operator.inputs[0].full_name
    out = operator.outputs[0].full_name
    projected = g.node("MatMul", [X, g.const("projection", lsh.projection_.astype(dtype))])
    thr = g.const("thresholds", lsh.thresholds_.astype(dtype))
    if not lsh.pack:
        g.node("Greater", [projected, thr], out)
        return
    bits = g.node("Cast", [g.node("Greater", [projected, thr])], to=2)
    summed, _ = _pack_bits(g, bits, lsh.n_bits_)  # zero-padded, as transform packs
    g.node("Cast", [summed], out, to=2)


_CONVERTERS = {
    MatryoshkaDecoder: ("SkfusionMatryoshkaDecoder", _convert_decoder),
    PercentileQuantizer: ("SkfusionPercentileQuantizer", _convert_quantizer),
    AllocatedQuantizer: ("SkfusionAllocatedQuantizer", _convert_quantizer),
    RandomProjectionLSH: ("SkfusionRandomProjectionLSH", _convert_lsh),
}


def register_converters():
    """Register the skfusion converters with skl2onnx (done on import; idempotent).

    Examples
    --------
    >>> from skfusion.onnx import register_converters
    >>> register_converters()
    """
    from skl2onnx import update_registered_converter

    for cls, (alias, convert) in _CONVERTERS.items():
        update_registered_converter(cls, alias, _shape, convert, overwrite=True)


def head_steps(model):
    """The fitted numeric steps of ``model`` that :func:`to_onnx` converts.

    Parameters
    ----------
    model : Pipeline or estimator
        A fitted skfusion pipeline (its leading text embedder, if any, is skipped) or
        one fitted step.

    Returns
    -------
    steps : list of (name, estimator)
    """
    if isinstance(model, Pipeline):
        steps = [(n, s) for n, s in model.steps if s not in (None, "passthrough")]
    else:
        steps = [(type(model).__name__.lower(), model)]
    if steps and hasattr(steps[0][1], "member_names_"):
        steps = steps[1:]  # a fitted text embedder: exported member by member
    for name, step in steps:
        if hasattr(step, "member_names_") or hasattr(step, "models"):
            raise TypeError(
                f"step {name!r} ({type(step).__name__}) embeds text and can only be the "
                "first step; export its members with skfusion.onnx.members.export_members."
            )
    if not steps:
        raise ValueError(
            "model has no numeric step after the text embedder (decoder, quantizer or "
            "LSH); there is no head to export."
        )
    return steps


@validate_params(
    {
        "model": [HasMethods(["transform"])],
        "dtype": [StrOptions({"float32", "float64"})],
        "target_opset": [Interval(Integral, OPSET, None, closed="left")],
        "name": [str],
    },
    prefer_skip_nested_validation=True,
)
def to_onnx(model, *, dtype="float32", target_opset=OPSET, name="skfusion_head"):
    """Convert a fitted skfusion head (pipeline or step) to an ONNX model.

    Parameters
    ----------
    model : Pipeline or estimator
        A fitted pipeline (a leading ``ConcatEmbedder`` is left out; the graph starts
        at its output) or one fitted ``MatryoshkaDecoder``, ``PercentileQuantizer``,
        ``AllocatedQuantizer`` or ``RandomProjectionLSH``; other scikit-learn steps
        that skl2onnx converts (e.g. ``PCA``) may appear in the pipeline too.
    dtype : {"float32", "float64"}, default="float32"
        Type of the graph's input ``X``.
    target_opset : int, default=18
        ONNX opset of the default domain; at least 18 (the converters use BitwiseAnd
        and ReduceSum with axes as an input).
    name : str, default="skfusion_head"
        Name of the graph.

    Returns
    -------
    model_proto : onnx.ModelProto
        Input ``X`` of shape (n, n_features_in_), one output with ``transform``'s
        values and dtype (float, uint8 codes or bytes, bool for unpacked LSH bits).

    Examples
    --------
    >>> import numpy as np, onnxruntime as ort
    >>> from skfusion import PercentileQuantizer
    >>> from skfusion.onnx import to_onnx
    >>> X = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    >>> q = PercentileQuantizer(bits=2, pack=True).fit(X)
    >>> sess = ort.InferenceSession(to_onnx(q).SerializeToString())
    >>> bool((sess.run(None, {"X": X})[0] == q.transform(X)).all())
    True
    """
    _require("onnx")
    skl2onnx = _require("skl2onnx")
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    register_converters()
    steps = head_steps(model)
    for _, step in steps:
        check_is_fitted(step)
    head = steps[0][1] if len(steps) == 1 else Pipeline(steps)
    n_features = steps[0][1].n_features_in_
    kind = FloatTensorType if dtype == "float32" else DoubleTensorType
    return skl2onnx.convert_sklearn(
        head,
        name=name,
        initial_types=[("X", kind([None, n_features]))],
        target_opset={"": int(target_opset)},
    )


try:  # registering needs skl2onnx; to_onnx says how to install it when it is missing
    register_converters()
except ImportError:  # pragma: no cover - depends on the environment
    pass
