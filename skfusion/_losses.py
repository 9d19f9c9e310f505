"""Torch losses for :class:`~skfusion.MatryoshkaDecoder` (training only).

The paper's objective (Section 3.2): for a batch ``Z`` of ``B`` inputs and the decoder's
output ``H``,

    l_sim(H, Z) = 1 / (B (B - 1)) * sum_{i != j} (cos(h_i, h_j) - cos(z_i, z_j)) ** 2

and the Matryoshka loss is the mean of ``l_sim(H[:, :s], Z)`` over the stops ``s``.

:func:`matryoshka_pairwise_mse` computes it without redundant work: the target cosine
matrix is computed once per batch (:func:`cosine_gram`), prefix norms come from one
cumulative sum of squares, and the prefix Gram matrices are built incrementally
(``G_s = G_{s'} + H[:, s':s] @ H[:, s':s].T``) in row chunks, and the gradient with
respect to ``H`` is computed in closed form alongside, so all stops together cost about
two ``B x B x n_components`` matmuls instead of three per stop.
:func:`matryoshka_listwise_kl` (the decoder's default loss) uses the same scheme.
:func:`matryoshka_pairwise_mse_naive` and :func:`matryoshka_listwise_kl_naive` are the
direct translations (re-normalise every prefix, full cosine matrices per stop,
autograd); they are the speed baselines and cross-checks.

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


# Rows of the B x B matrices handled at once: bounds the working memory to a few
# (chunk x B) blocks and measured fastest on a CPU for B = 1,024.
_CHUNK = 512


class _PrefixCosineLoss(torch.autograd.Function):
    """A loss on the prefix cosine matrices; forward also computes ``dL/dH``.

    For a chunk of rows ``I`` and each stop ``k`` (columns ``s_{k-1}:s_k`` form block
    ``b_k``): ``G_k[I] = G_{k-1}[I] + H_I,b H_b^T`` (one in-place ``addmm``),
    ``c_k = 1 / ||H_i[:s_k]||`` from a cumulative sum of squares and
    ``cos_k[I] = c_I c^T * G_k[I]``; the loss term gives ``E_k = dL/dcos_k`` in closed
    form (``_MSETerm``, ``_KLTerm``). With ``R_k = E_k * c c^T`` the gradient is
    ``dL/dH_b = (S_b + S_b^T) H_b``, ``S_b = sum_{k >= b} R_k`` (a suffix sum over
    stops; ``2 S_b H_b`` when ``E`` is symmetric), plus the norm term
    ``dL/dH_im = 2 H_im sum_{k: s_k > m} dL/dq_ik`` with
    ``dL/dq_ik = -c_ik^2 / 2 * (rowsum + colsum of E_k * cos_k)_i``. So all stops cost
    about two ``B x B x n_components`` matmuls, where autograd on the direct form
    does three per stop, and no ``B x B`` matrix is kept for the backward pass.
    """

    @staticmethod
    def forward(ctx, H, term, stops):
        B = H.shape[0]
        K = len(stops)
        need_grad = ctx.needs_input_grad[0]
        idx = torch.as_tensor([s - 1 for s in stops], device=H.device)
        inv = (H * H).cumsum(dim=1).index_select(1, idx).clamp_min(_EPS).rsqrt()
        grad = torch.zeros_like(H) if need_grad else None
        rowcol = torch.zeros(K, B, dtype=H.dtype, device=H.device)
        bounds = [0, *stops]
        total = H.new_zeros(())
        for i0 in range(0, B, _CHUNK):
            i1 = min(B, i0 + _CHUNK)
            Hi = H[i0:i1]
            G = torch.zeros(i1 - i0, B, dtype=H.dtype, device=H.device)
            Rs = []
            for k in range(K):
                lo, hi = bounds[k], bounds[k + 1]
                G.addmm_(Hi[:, lo:hi], H[:, lo:hi].T)
                ci, cj = inv[i0:i1, k].unsqueeze(1), inv[:, k].unsqueeze(0)
                cos = (G * ci).mul_(cj)
                value, E = term(cos, i0, i1, need_grad)
                total += value
                if not need_grad:
                    continue
                P = E * cos
                if term.symmetric:
                    rowcol[k, i0:i1] += 2.0 * P.sum(dim=1)
                else:
                    rowcol[k, i0:i1] += P.sum(dim=1)
                    rowcol[k] += P.sum(dim=0)
                Rs.append(torch.mul(E, ci, out=P).mul_(cj))
            if not need_grad:
                continue
            S = Rs[-1]
            for k in range(K - 1, -1, -1):
                if k < K - 1:
                    S.add_(Rs[k])
                lo, hi = bounds[k], bounds[k + 1]
                if term.symmetric:
                    grad[i0:i1, lo:hi].addmm_(S, H[:, lo:hi], alpha=2.0)
                else:
                    grad[i0:i1, lo:hi].addmm_(S, H[:, lo:hi])
                    grad[:, lo:hi].addmm_(S.T, Hi[:, lo:hi])
        if need_grad:
            dq = -0.5 * inv * inv * rowcol.T  # (B, K)
            u = dq.flip(1).cumsum(1).flip(1)  # summed over the stops >= each block
            for k in range(K):
                lo, hi = bounds[k], bounds[k + 1]
                grad[:, lo:hi].addcmul_(H[:, lo:hi], u[:, k : k + 1], value=2.0)
            ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None


def _diagonal(i0, i1, device):
    """Row and column indices of the diagonal entries within rows ``i0:i1``."""
    rows = torch.arange(i1 - i0, device=device)
    return rows, rows + i0


class _MSETerm:
    """Squared cosine error: value and ``dL/dcos`` for a chunk of rows."""

    def __init__(self, target, weights, n_stops):
        B = target.shape[0]
        denom = float(B * (B - 1)) if weights is None else float(weights.sum())
        self.coef = 1.0 / (denom * n_stops)
        self.target, self.weights = target, weights
        self.symmetric = weights is None

    def __call__(self, cos, i0, i1, need_grad):
        D = cos - self.target[i0:i1]
        D[_diagonal(i0, i1, cos.device)] = 0.0
        flat = D.reshape(-1)
        if self.weights is None:
            return torch.dot(flat, flat) * self.coef, D.mul_(2.0 * self.coef)
        WD = D * self.weights[i0:i1]
        return torch.dot(WD.reshape(-1), flat) * self.coef, WD.mul_(2.0 * self.coef)


class _KLTerm:
    """Listwise KL: value and ``dL/dcos`` for a chunk of rows."""

    def __init__(self, target, temperature, n_stops):
        B = target.shape[0]
        eye = torch.eye(B, dtype=torch.bool, device=target.device)
        p_log = torch.log_softmax((target / temperature).masked_fill(eye, -torch.inf), 1)
        self.p = p_log.exp()
        # sum p log p: constant per batch, added once per stop (with the first chunk).
        self.plogp = float((self.p * p_log.masked_fill(eye, 0.0)).sum())
        self.scale = 1.0 / (B * n_stops)
        self.temperature = temperature
        self.symmetric = False

    def __call__(self, cos, i0, i1, need_grad):
        diag = _diagonal(i0, i1, cos.device)
        logits = cos / self.temperature
        logits[diag] = -torch.inf
        q_log = torch.log_softmax(logits, dim=1)
        q_log[diag] = 0.0
        p = self.p[i0:i1]
        value = -torch.dot(p.reshape(-1), q_log.reshape(-1))
        if i0 == 0:
            value = value + self.plogp
        if not need_grad:
            return value * self.scale, None
        # d/dcos_ij of -sum_j p_ij log q_ij = (q_ij - p_ij) / temperature.
        E = q_log.exp_()
        E[diag] = 0.0
        return value * self.scale, E.sub_(p).mul_(self.scale / self.temperature)


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
    return _PrefixCosineLoss.apply(H, _MSETerm(target, weights, len(stops)), stops)


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
    term = _KLTerm(target, float(temperature), len(stops))
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
