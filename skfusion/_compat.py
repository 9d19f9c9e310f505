"""The one place that imports scikit-learn's private helpers.

Parameter validation (``_parameter_constraints``), ``_fit_context`` and ``validate_data``
are not public API; a future scikit-learn that moves them should only need this file
changed.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import (
    HasMethods,
    Hidden,
    Interval,
    Options,
    StrOptions,
    validate_params,
)
from sklearn.utils._set_output import _wrap_data_with_container
from sklearn.utils.validation import validate_data

__all__ = [
    "HasMethods",
    "Hidden",
    "Interval",
    "Options",
    "StrOptions",
    "_fit_context",
    "_wrap_data_with_container",
    "validate_data",
    "validate_params",
]
