"""skfusion demo: bad settings fail before any model is loaded."""

import pytest

from skfusion.demo import run_demo


@pytest.mark.parametrize("param", ["n_train", "n_documents"])
@pytest.mark.parametrize("value", [0, -5, 2.5])
def test_sizes_must_be_positive_integers(param, value):
    with pytest.raises(ValueError, match=param):
        run_demo(**{param: value}, out=lambda *_: pytest.fail("the demo started"))
