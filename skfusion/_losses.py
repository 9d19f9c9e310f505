"""Torch losses for :class:`~skfusion.MatryoshkaDecoder` (training only).

The paper's objective (Section 3.2): for a batch ``Z`` of ``B`` inputs and the decoder's
output ``H``,

    l_sim(H, Z) = 1 / (B (B - 1)) * sum_{i != j} (cos(h_i, h_j) - cos(z_i, z_j)) ** 2

and the Matryoshka loss is the mean of ``l_sim(H[:, :s], Z)`` over the stops ``s``.

:func:`matryoshka_pairwise_mse` computes it without redundant work: the target cosine
matrix is computed once per batch (:func:`cosine_gram`), prefix norms come from one
cumulative sum of squares, and the prefix Gram matrices are built incrementally
(``G_s = G_{s'} + H[:, s':s] @ H[:, s':s].T``), so all stops together cost one
``B x B x n_components`` matmul instead of one per stop.
:func:`matryoshka_pairwise_mse_naive` is the direct translation (re-normalise every
prefix, full cosine matrices per stop); it is the speed baseline and a cross-check.

This module imports torch at the top: it is only imported inside ``fit``/``partial_fit``.
"""

import torch

__all__ = [
    "cosine_gram",
    "matryoshka_listwise_kl",
    "matryoshka_listwise_kl_naive",
    "matryoshka_pairwise_mse",
    "matryoshka_pairwise_mse_naive",
    "neighbor_weights",
]

_EPS = 1e-12


def cosine_gram(Z):
    """Cosine similarity matrix ``(B, B)`` of the rows of ``Z``."""
    Zn = Z / Z.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return Zn @ Zn.T


def neighbor_weights(target, strength, temperature=0.05):
    """Pair weights that favour each row's nearest neighbours in the input.

    ``w_ij = 1 + strength * (B - 1) * p_ij`` with
    ``p_ij = softmax_{j != i}(cos(z_i, z_j) / temperature)``. Each row's weights sum to
    ``(B - 1) * (1 + strength)``: ``strength`` is the share of the loss put on the
    neighbours of each row relative to the uniform part. The diagonal is zero.

    Parameters
    ----------
    target : torch.Tensor of shape (B, B)
        Input cosine matrix (from :func:`cosine_gram`).
    strength : float
        ``neighbor_weight`` of the decoder; 0 gives uniform weights.
    temperature : float, default=0.05
        Softmax temperature on the cosines; smaller focuses on fewer neighbours.

    Returns
    -------
    weights : torch.Tensor of shape (B, B), no gradient.
    """
    B = target.shape[0]
    eye = torch.eye(B, dtype=torch.bool, device=target.device)
    logits = (target.detach() / temperature).masked_fill(eye, float("-inf"))
    p = torch.softmax(logits, dim=1)
    w = 1.0 + strength * (B - 1) * p
    return w.masked_fill(eye, 0.0)


class _PrefixCosineLoss(torch.autograd.Function):
    """A loss on the prefix cosine matrices, with an analytic gradient for ``H``.

    Forward, per stop ``k`` (columns ``s_{k-1}:s_k`` form block ``b_k``):
    ``G_k = G_{k-1} + H_b H_b^T`` (one in-place ``addmm``), ``c_k = 1 / ||H_i[:s_k]||``
    from a cumulative sum of squares, ``cos_k = c c^T * G_k``; the loss term and its
    gradient ``E_k = dL/dcos_k`` are closed-form (see ``_mse_term``, ``_kl_term``).
    Backward, with ``R_k = E_k * c c^T``: ``dL/dH_b = S_b H_b`` where
    ``S_b = sum_{k >= b} (R_k + R_k^T)`` is a suffix sum, plus the norm term
    ``dL/dH_im = 2 H_im sum_{k: s_k > m} dL/dq_ik`` with
    ``dL/dq_ik = -c_ik^2 / 2 * (rowsum + colsum of E_k * cos_k)_i``. So the whole
    backward pass is one ``B x B x n_components`` matmul plus ``B x B`` elementwise
    work, where autograd would do two matmuls per stop.
    """

    @staticmethod
    def forward(ctx, H, term, stops):
        B = H.shape[0]
        idx = torch.as_tensor([s - 1 for s in stops], device=H.device)
        inv = (H * H).cumsum(dim=1).index_select(1, idx).clamp_min(_EPS).rsqrt()
        gram = torch.zeros(B, B, dtype=H.dtype, device=H.device)
        total = H.new_zeros(())
        saved, symmetric = [], True
        prev = 0
        for k, s in enumerate(stops):
            block = H[:, prev:s]
            gram.addmm_(block, block.T)
            cos = gram * torch.outer(inv[:, k], inv[:, k])
            value, grad_cos, sym = term(cos)
            total += value
            symmetric = symmetric and sym
            saved += [cos, grad_cos]
            prev = s
        ctx.save_for_backward(H, inv, *saved)
        ctx.stops = stops
        ctx.symmetric = symmetric
        return total

    @staticmethod
    def backward(ctx, grad_out):
        H, inv, *saved = ctx.saved_tensors
        stops = ctx.stops
        grad = torch.zeros_like(H)
        S = torch.zeros(H.shape[0], H.shape[0], dtype=H.dtype, device=H.device)
        u = torch.zeros(H.shape[0], dtype=H.dtype, device=H.device)
        bounds = [0, *stops]
        for k in range(len(stops) - 1, -1, -1):
            cos, E = saved[2 * k], saved[2 * k + 1]
            c = inv[:, k]
            outer = torch.outer(c, c)
            P = E * cos
            if ctx.symmetric:
                # Symmetric E: row and column sums agree and R^T = R.
                u -= c * c * P.sum(dim=1)
                S.addcmul_(E, outer, value=2.0)
            else:
                u -= 0.5 * c * c * (P.sum(dim=1) + P.sum(dim=0))
                R = E * outer
                S.add_(R).add_(R.T)
            lo, hi = bounds[k], bounds[k + 1]
            block = H[:, lo:hi]
            grad[:, lo:hi] = S @ block + 2.0 * block * u.unsqueeze(1)
        return grad * grad_out, None, None


def _mse_term(target, weights, n_stops):
    """Squared cosine error of one stop: its value and gradient w.r.t. ``cos``."""
    B = target.shape[0]
    denom = float(B * (B - 1)) if weights is None else float(weights.sum())
    coef = 1.0 / (denom * n_stops)

    def term(cos):
        D = cos - target
        D.diagonal().zero_()
        flat = D.reshape(-1)
        if weights is None:
            return torch.dot(flat, flat) * coef, D.mul_(2.0 * coef), True
        WD = D * weights
        return torch.dot(WD.reshape(-1), flat) * coef, WD.mul_(2.0 * coef), False

    return term


def _kl_term(target, temperature, n_stops):
    """Listwise KL of one stop: its value and gradient w.r.t. ``cos``."""
    B = target.shape[0]
    eye = torch.eye(B, dtype=torch.bool, device=target.device)
    p_log = torch.log_softmax((target / temperature).masked_fill(eye, -torch.inf), 1)
    p = p_log.exp()
    p_log = p_log.masked_fill(eye, 0.0)
    entropy_part = float((p * p_log).sum())  # sum p log p, constant per batch
    scale = 1.0 / (B * n_stops)

    def term(cos):
        q_log = torch.log_softmax((cos / temperature).masked_fill_(eye, -torch.inf), 1)
        q_log.masked_fill_(eye, 0.0)
        value = (entropy_part - torch.dot(p.reshape(-1), q_log.reshape(-1))) * scale
        # d/dcos_ij of -sum_j p_ij log q_ij = (q_ij - p_ij) / temperature.
        grad_cos = q_log.exp_().masked_fill_(eye, 0.0).sub_(p)
        return value, grad_cos.mul_(scale / temperature), False

    return term


def matryoshka_pairwise_mse(H, target, stops, weights=None):
    """Mean over stops of the (weighted) off-diagonal squared cosine error.

    Parameters
    ----------
    H : torch.Tensor of shape (B, n_components)
        Decoder output.
    target : torch.Tensor of shape (B, B)
        Target cosine matrix, e.g. ``cosine_gram(Z)``; only off-diagonal entries count.
        Treated as a constant (no gradient flows to it).
    stops : sequence of int
        Strictly increasing prefix widths, each ``<= n_components``.
    weights : torch.Tensor of shape (B, B), default=None
        Pair weights (zero diagonal), e.g. from :func:`neighbor_weights`. ``None`` gives
        the paper's uniform ``1 / (B (B - 1))``.

    Returns
    -------
    loss : torch.Tensor, scalar, differentiable with respect to ``H``.
    """
    stops = tuple(int(s) for s in stops)
    target = target.detach().to(H.dtype)
    if weights is not None:
        weights = weights.detach().to(H.dtype)
    return _PrefixCosineLoss.apply(H, _mse_term(target, weights, len(stops)), stops)


def matryoshka_listwise_kl(H, target, stops, temperature=0.05):
    """Mean over stops of a listwise distillation loss on in-batch neighbours.

    For each row ``i`` and stop ``s``: ``KL(p_i || q_i)`` with
    ``p_ij = softmax_{j != i}(t_ij / temperature)`` (target cosines) and
    ``q_ij = softmax_{j != i}(cos(h_i[:s], h_j[:s]) / temperature)``, averaged over
    rows. Only the ranking-relevant top of each row's neighbour list matters, unlike
    the squared error that weighs all pairs alike. Same efficient scheme as
    :func:`matryoshka_pairwise_mse`.

    Parameters
    ----------
    H : torch.Tensor of shape (B, n_components)
        Decoder output.
    target : torch.Tensor of shape (B, B)
        Target cosine matrix (no gradient flows to it).
    stops : sequence of int
        Strictly increasing prefix widths, each ``<= n_components``.
    temperature : float, default=0.05
        Softmax temperature on the cosines.

    Returns
    -------
    loss : torch.Tensor, scalar, differentiable with respect to ``H``.
    """
    stops = tuple(int(s) for s in stops)
    target = target.detach().to(H.dtype)
    term = _kl_term(target, float(temperature), len(stops))
    return _PrefixCosineLoss.apply(H, term, stops)


def matryoshka_pairwise_mse_naive(H, Z, stops, weights=None):
    """Direct translation of the paper's loss (the speed baseline).

    Re-normalises every prefix of ``H`` and the inputs ``Z``, builds full ``B x B``
    cosine matrices for every stop and averages the masked squared differences. Same
    value as :func:`matryoshka_pairwise_mse` with ``target=cosine_gram(Z)``.
    """
    B = H.shape[0]
    mask = 1.0 - torch.eye(B, dtype=H.dtype, device=H.device)
    if weights is not None:
        mask = mask * weights
    losses = []
    for s in stops:
        hs = H[:, :s]
        hs = hs / hs.norm(dim=1, keepdim=True).clamp_min(_EPS)
        zs = Z / Z.norm(dim=1, keepdim=True).clamp_min(_EPS)
        diff = hs @ hs.T - zs @ zs.T
        losses.append((diff.square() * mask).sum() / mask.sum())
    return torch.stack(losses).mean()


def matryoshka_listwise_kl_naive(H, target, stops, temperature=0.05):
    """Direct autograd version of :func:`matryoshka_listwise_kl` (a cross-check).

    Re-normalises every prefix and builds its full cosine matrix per stop.
    """
    B = H.shape[0]
    eye = torch.eye(B, dtype=torch.bool, device=H.device)
    p_log = torch.log_softmax(
        (target.detach() / temperature).masked_fill(eye, float("-inf")), dim=1
    )
    p = p_log.exp()
    p_log = p_log.masked_fill(eye, 0.0)
    losses = []
    for s in stops:
        hs = H[:, :s]
        hs = hs / hs.norm(dim=1, keepdim=True).clamp_min(_EPS)
        q_log = torch.log_softmax(
            (hs @ hs.T / temperature).masked_fill(eye, float("-inf")), dim=1
        ).masked_fill(eye, 0.0)
        losses.append((p * (p_log - q_log)).sum() / B)
    return torch.stack(losses).mean()
