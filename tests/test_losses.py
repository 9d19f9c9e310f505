"""The Matryoshka pairwise-cosine losses against a direct O(B^2) loop over pairs."""

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from skfusion._losses import (  # noqa: E402
    cosine_gram,
    matryoshka_listwise_kl,
    matryoshka_listwise_kl_naive,
    matryoshka_pairwise_mse,
    matryoshka_pairwise_mse_naive,
    neighbor_weights,
)


def _loop_reference(H, Z, stops, W=None):
    """The paper's formula, one pair at a time, in float64 Python floats."""
    H, Z = np.asarray(H, dtype=np.float64), np.asarray(Z, dtype=np.float64)
    B = len(H)

    def cos(a, b):
        return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))

    per_stop = []
    for s in stops:
        num = den = 0.0
        for i, j in itertools.permutations(range(B), 2):
            w = 1.0 if W is None else float(W[i, j])
            diff = cos(H[i, :s], H[j, :s]) - cos(Z[i], Z[j])
            num += w * diff * diff
            den += w
        per_stop.append(num / den)
    return sum(per_stop) / len(stops)


def _data(B=9, n=10, d=13, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(B, n, generator=gen, dtype=dtype)
    Z = torch.randn(B, d, generator=gen, dtype=dtype)
    return H, Z


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stops", [(10,), (2, 5, 10), (1, 3, 4, 7)])
def test_efficient_loss_equals_pair_loop(seed, stops):
    H, Z = _data(seed=seed)
    expected = _loop_reference(H, Z, stops)
    got = matryoshka_pairwise_mse(H, cosine_gram(Z), stops)
    naive = matryoshka_pairwise_mse_naive(H, Z, stops)
    assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert float(naive) == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_weighted_loss_equals_pair_loop():
    H, Z = _data(seed=3)
    W = neighbor_weights(cosine_gram(Z), 2.0, temperature=0.3)
    stops = (2, 6, 10)
    expected = _loop_reference(H, Z, stops, W.numpy())
    got = matryoshka_pairwise_mse(H, cosine_gram(Z), stops, W)
    assert float(got) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_analytic_gradient(weighted):
    H, Z = _data(B=7, n=6, d=5, seed=4)
    H.requires_grad_(True)
    T = cosine_gram(Z)
    W = neighbor_weights(T, 0.7, temperature=0.5) if weighted else None
    stops = (2, 3, 6)
    assert torch.autograd.gradcheck(lambda h: matryoshka_pairwise_mse(h, T, stops, W), (H,))
    (g_fast,) = torch.autograd.grad(matryoshka_pairwise_mse(H, T, stops, W), H)
    (g_naive,) = torch.autograd.grad(matryoshka_pairwise_mse_naive(H, Z, stops, W), H)
    torch.testing.assert_close(g_fast, g_naive, rtol=1e-10, atol=1e-12)


def test_float32_batch_agrees_with_naive_to_1e5():
    H, Z = _data(B=256, n=96, d=120, seed=5, dtype=torch.float32)
    stops = (8, 16, 32, 64, 96)
    fast = matryoshka_pairwise_mse(H, cosine_gram(Z), stops)
    naive = matryoshka_pairwise_mse_naive(H, Z, stops)
    assert abs(float(fast) - float(naive)) < 1e-5


def _kl_loop_reference(H, Z, stops, temperature):
    """Listwise KL, one row and one neighbour at a time, in float64."""
    H, Z = np.asarray(H, dtype=np.float64), np.asarray(Z, dtype=np.float64)
    B = len(H)

    def cos(a, b):
        return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))

    def softmax_row(sims):
        m = max(sims)
        e = [math.exp((x - m) / temperature) for x in sims]
        return [x / sum(e) for x in e]

    per_stop = []
    for s in stops:
        total = 0.0
        for i in range(B):
            others = [j for j in range(B) if j != i]
            p = softmax_row([cos(Z[i], Z[j]) for j in others])
            q = softmax_row([cos(H[i, :s], H[j, :s]) for j in others])
            total += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True))
        per_stop.append(total / B)
    return sum(per_stop) / len(stops)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_listwise_kl_equals_loop(temperature):
    H, Z = _data(seed=8)
    stops = (2, 5, 10)
    expected = _kl_loop_reference(H, Z, stops, temperature)
    got = matryoshka_listwise_kl(H, cosine_gram(Z), stops, temperature)
    naive = matryoshka_listwise_kl_naive(H, cosine_gram(Z), stops, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-10)
    assert float(naive) == pytest.approx(expected, rel=1e-10)


def test_listwise_kl_gradient():
    H, Z = _data(B=7, n=6, d=5, seed=9)
    H.requires_grad_(True)
    T = cosine_gram(Z)
    stops = (2, 3, 6)
    assert torch.autograd.gradcheck(
        lambda h: matryoshka_listwise_kl(h, T, stops, 0.3), (H,)
    )
    (g_fast,) = torch.autograd.grad(matryoshka_listwise_kl(H, T, stops, 0.3), H)
    (g_naive,) = torch.autograd.grad(matryoshka_listwise_kl_naive(H, T, stops, 0.3), H)
    torch.testing.assert_close(g_fast, g_naive, rtol=1e-10, atol=1e-12)


def test_listwise_kl_float32_agrees_with_naive():
    H, Z = _data(B=256, n=96, d=120, seed=10, dtype=torch.float32)
    T = cosine_gram(Z)
    stops = (8, 32, 96)
    fast = matryoshka_listwise_kl(H, T, stops, 0.05)
    naive = matryoshka_listwise_kl_naive(H, T, stops, 0.05)
    assert abs(float(fast) - float(naive)) < 1e-4 * max(1.0, float(naive))


def test_neighbor_weights_shape_and_sums():
    _, Z = _data(B=12, d=8, seed=6)
    T = cosine_gram(Z)
    W = neighbor_weights(T, 1.5)
    assert torch.all(W.diagonal() == 0)
    torch.testing.assert_close(
        W.sum(dim=1), torch.full((12,), 11 * 2.5, dtype=W.dtype), rtol=1e-12, atol=0
    )
    # The nearest neighbour of each row gets the largest weight.
    T_off = T.clone().fill_diagonal_(-2)
    assert torch.equal(W.argmax(dim=1), T_off.argmax(dim=1))
    uniform = neighbor_weights(T, 0.0)
    assert torch.equal(uniform, 1 - torch.eye(12, dtype=T.dtype))


def test_loss_is_zero_when_geometry_is_copied():
    _, Z = _data(B=10, d=8, seed=7)
    # An orthogonal map of the inputs keeps every cosine, so the loss at the full
    # width is zero; at a narrower stop it is not.
    Q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=Z.dtype))
    H = Z @ Q
    assert float(matryoshka_pairwise_mse(H, cosine_gram(Z), (8,))) < 1e-24
    assert float(matryoshka_pairwise_mse(H, cosine_gram(Z), (2,))) > 1e-3


@pytest.mark.parametrize("kind", ["mse", "weighted_mse", "kl"])
def test_row_chunks_beyond_one_block(kind):
    # B > 512 rows: the efficient losses work on row chunks; results must not change.
    H, Z = _data(B=600, n=24, d=30, seed=11)
    H.requires_grad_(True)
    T = cosine_gram(Z)
    stops = (4, 12, 24)
    if kind == "kl":
        fast = matryoshka_listwise_kl(H, T, stops, 0.05)
        naive = matryoshka_listwise_kl_naive(H, T, stops, 0.05)
    else:
        W = neighbor_weights(T, 1.0) if kind == "weighted_mse" else None
        fast = matryoshka_pairwise_mse(H, T, stops, W)
        naive = matryoshka_pairwise_mse_naive(H, Z, stops, W)
    assert fast.item() == pytest.approx(naive.item(), rel=1e-12)
    (g_fast,) = torch.autograd.grad(fast, H)
    (g_naive,) = torch.autograd.grad(naive, H)
    torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-15)
    with torch.no_grad():  # the value alone, without the gradient work
        again = (
            matryoshka_listwise_kl(H, T, stops, 0.05)
            if kind == "kl"
            else matryoshka_pairwise_mse(H, T, stops, W)
        )
    assert again.item() == pytest.approx(fast.item(), rel=1e-12)
