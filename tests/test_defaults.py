"""Every numeric estimator passes scikit-learn's checks with its *default* constructor.

A default that only works on wide inputs (``AllocatedQuantizer(bit_budget=341)`` on the
checks' 2- to 10-column data) fails users who start from ``Estimator()``; the
non-default settings are checked next to each estimator's own tests.
"""

import inspect

import pytest
from sklearn.base import BaseEstimator
from sklearn.utils.estimator_checks import parametrize_with_checks

import skfusion
from skfusion import ConcatEmbedder


def _numeric_estimators():
    """Every public estimator class of skfusion's top level, except the text one."""
    classes = [
        obj
        for name in skfusion.__all__
        if inspect.isclass(obj := getattr(skfusion, name))
        and issubclass(obj, BaseEstimator)
        and not inspect.isabstract(obj)
        and obj.__init__ is not BaseEstimator.__init__
    ]
    # ConcatEmbedder takes text: its data-free checks run in tests/test_embedder.py.
    return sorted((c for c in classes if c is not ConcatEmbedder), key=lambda c: c.__name__)


def test_every_public_estimator_is_covered():
    names = {c.__name__ for c in _numeric_estimators()}
    assert names >= {
        "AllocatedQuantizer",
        "MatryoshkaDecoder",
        "PercentileQuantizer",
        "RandomProjectionLSH",
    }


@parametrize_with_checks([cls() for cls in _numeric_estimators()])
def test_default_constructor_passes_the_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("cls", _numeric_estimators(), ids=lambda c: c.__name__)
def test_default_constructor_has_no_required_arguments(cls):
    params = inspect.signature(cls.__init__).parameters.values()
    required = [p.name for p in params if p.default is p.empty and p.name != "self"]
    assert required == [], f"{cls.__name__}() needs {required}"
