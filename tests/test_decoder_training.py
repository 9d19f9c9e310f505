"""The decoder's torch training (skfusion/_training.py): same outputs as before the move.

``tests/data/decoder_training_reference.npz`` holds the inputs and the outputs of the
cases below computed by the decoder of commit 766fd41, before its training code moved
to ``skfusion/_training.py``; on that machine the refactored code reproduces them
bitwise. The tolerances below only absorb float differences between CPUs.

How they were chosen (CONVENTIONS, "Tests"): rerunning these cases with torch's kernels
forced to each instruction set (``ATEN_CPU_CAPABILITY=default``, ``avx2``, ``avx512``)
and with 1 or 2 threads moved the weights by at most 6e-8 (absolute) and the loss
curves by at most 3.3e-7 (relative); another CPU missed the former rtol of 1e-6 on a
loss curve by 1.1e-6. The tolerances sit 30-300x above those (weights ``atol=1e-5``,
losses ``rtol=1e-4``), while a real change of the training moves them far more: a seed
one higher moves the loss curves by 10% or more and the weights by 0.01 or more.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from skfusion.decoder import MatryoshkaDecoder  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "decoder_training_reference.npz"

CASES = {
    "fit_kl": dict(
        n_components=6, stops=(3, 6), max_epochs=5, batch_size=32, random_state=0
    ),
    "fit_mse": dict(
        n_components=6,
        stops=(2, 4, 6),
        init="random",
        loss="pairwise_mse",
        neighbor_weight=0.5,
        target_whiten=0.0,
        early_stopping=False,
        max_epochs=3,
        batch_size=40,
        weight_decay=0.01,
        learning_rate=1e-3,
        random_state=3,
    ),
    "partial": dict(
        n_components=6, stops=(3, 6), batch_size=32, learning_rate=1e-3, random_state=1
    ),
}


def _run(name, X):
    dec = MatryoshkaDecoder(**CASES[name], device="cpu")
    if name == "partial":
        for chunk in np.array_split(X, 3):
            dec.partial_fit(chunk)
    else:
        dec.fit(X)
        if name == "fit_kl":
            dec.partial_fit(X[:100])  # partial_fit continuing after fit
    return dec


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_reproduces_the_outputs_from_before_the_refactor(name):
    ref = np.load(REFERENCE)
    dec = _run(name, ref["X"])
    for attr in ("components", "bias", "explained_variance"):
        np.testing.assert_allclose(
            getattr(dec, attr + "_"), ref[f"{name}_{attr}"], rtol=1e-4, atol=1e-5
        )
    np.testing.assert_allclose(dec.loss_curve_, ref[f"{name}_loss_curve"], rtol=1e-4)
    np.testing.assert_allclose(
        dec.validation_loss_curve_ or [], ref[f"{name}_validation_loss_curve"], rtol=1e-4
    )


def test_no_method_takes_the_torch_module_and_import_needs_no_torch():
    import inspect

    for name, member in inspect.getmembers(MatryoshkaDecoder, inspect.isfunction):
        assert "torch" not in inspect.signature(member).parameters, name
    code = "import sys, skfusion.decoder; assert 'torch' not in sys.modules; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_training_leaves_the_global_torch_rng_alone():
    X = np.load(REFERENCE)["X"]
    before = torch.random.get_rng_state()
    _run("fit_kl", X)
    _run("partial", X)
    assert torch.equal(torch.random.get_rng_state(), before)
