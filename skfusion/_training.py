"""Torch training of :class:`~skfusion.MatryoshkaDecoder` (training only).

A :class:`Trainer` is one training session: the linear layer, its AdamW optimizer and
the loss settings. ``fit`` and ``partial_fit`` both build it the same way from the
decoder's current weights (``partial_fit`` also from its saved optimizer state) and run
passes over batches with the one epoch runner, :meth:`Trainer.run_epoch` (training, or
evaluation without gradient). Batches arrive as float32 numpy arrays, so the caller
decides how rows are read (in memory, memory-mapped, from a dask array); weights and
optimizer state go back as numpy, so a fitted decoder pickles and transforms without
torch.

Like :mod:`skfusion._losses`, this module imports torch at the top: it is only imported
inside ``fit``/``partial_fit``.
"""

import numpy as np
import torch

from ._losses import (
    cosine_gram,
    matryoshka_listwise_kl,
    matryoshka_pairwise_mse,
    neighbor_weights,
)

__all__ = ["Trainer", "initial_weights"]


def initial_weights(n_out, n_in, seed):
    """``torch.nn.Linear``'s default uniform initialisation, from a local generator.

    Parameters
    ----------
    n_out, n_in : int
        Output and input widths.
    seed : int
        Seed of the local ``torch.Generator`` (nothing is seeded globally).

    Returns
    -------
    weight : ndarray of shape (n_out, n_in), dtype float32
    bias : ndarray of shape (n_out,), dtype float32
    """
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / np.sqrt(n_in)
    W = (torch.rand(n_out, n_in, generator=gen) * 2 - 1) * bound
    b = (torch.rand(n_out, generator=gen) * 2 - 1) * bound
    return W.numpy().astype(np.float32), b.numpy().astype(np.float32)


class Trainer:
    """One training session of the decoder's linear layer.

    Parameters
    ----------
    components : ndarray of shape (n_components, n_features), dtype float32
        Starting weight.
    bias : ndarray of shape (n_components,), dtype float32
        Starting bias.
    stops : list of int
        Matryoshka stops.
    loss : {"listwise_kl", "pairwise_mse"}
        The objective.
    temperature, neighbor_weight : float
        Loss settings (see :class:`~skfusion.MatryoshkaDecoder`).
    mean : ndarray of shape (n_features,), dtype float32
        Input mean (centres the inputs before ``target_map``).
    target_map : ndarray of shape (n_features, n_features) or None
        Whitening map of the targets; ``None`` uses the raw input cosines.
    learning_rate, weight_decay : float
        AdamW settings.
    device : str or None
        Torch device; ``None`` uses CUDA when available, else the CPU.
    optimizer_state : dict or None
        A state from :meth:`optimizer_state` to continue from; ``None`` starts afresh.
    """

    def __init__(
        self,
        components,
        bias,
        *,
        stops,
        loss,
        temperature,
        neighbor_weight,
        mean,
        target_map,
        learning_rate,
        weight_decay,
        device=None,
        optimizer_state=None,
    ):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.stops = stops
        self.loss = loss
        self.temperature = temperature
        self.neighbor_weight = neighbor_weight
        self.mean = torch.as_tensor(mean, device=self.device)
        self.target_map = (
            None if target_map is None else torch.as_tensor(target_map, device=self.device)
        )
        n_out, n_in = components.shape
        # skip_init: the weights are set below, so torch's global RNG is left untouched.
        layer = torch.nn.utils.skip_init(torch.nn.Linear, n_in, n_out)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(components))
            layer.bias.copy_(torch.from_numpy(bias))
        self.layer = layer.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.layer.parameters(), lr=learning_rate, weight_decay=weight_decay
        )
        if optimizer_state is not None:
            self.optimizer.load_state_dict(self._state_to_torch(optimizer_state))

    def _batch_loss(self, Zb):
        if self.target_map is None:
            target = cosine_gram(Zb)
        else:
            target = cosine_gram((Zb - self.mean) @ self.target_map)
        H = self.layer(Zb)
        if self.loss == "listwise_kl":
            return matryoshka_listwise_kl(H, target, self.stops, self.temperature)
        weights = None
        if self.neighbor_weight > 0:
            weights = neighbor_weights(target, self.neighbor_weight, self.temperature)
        return matryoshka_pairwise_mse(H, target, self.stops, weights)

    def run_epoch(self, batches, train=True):
        """One pass over ``batches``: mean loss per row.

        Parameters
        ----------
        batches : iterable of ndarray of shape (B, n_features), dtype float32
            The batches, in order.
        train : bool, default=True
            Take an optimizer step per batch; ``False`` only evaluates (no gradient).

        Returns
        -------
        loss : float
            The batch losses averaged with the batch sizes as weights.
        """
        total, count = 0.0, 0
        with torch.set_grad_enabled(train):
            for Zb in batches:
                loss = self._batch_loss(torch.from_numpy(Zb).to(self.device))
                if train:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                total += float(loss.detach()) * len(Zb)
                count += len(Zb)
        return total / max(count, 1)

    def snapshot(self):
        """A copy of the current weights, for :meth:`restore`."""
        return {k: v.clone() for k, v in self.layer.state_dict().items()}

    def restore(self, snapshot):
        """Go back to the weights of a :meth:`snapshot`."""
        self.layer.load_state_dict(snapshot)

    def weights(self):
        """Current weight and bias as float32 numpy arrays."""
        return (
            self.layer.weight.detach().cpu().numpy().astype(np.float32),
            self.layer.bias.detach().cpu().numpy().astype(np.float32),
        )

    def optimizer_state(self):
        """The optimizer state with numpy arrays in place of tensors (picklable)."""
        state = self.optimizer.state_dict()
        out = {"param_groups": state["param_groups"], "state": {}}
        for key, values in state["state"].items():
            out["state"][key] = {
                k: v.detach().cpu().numpy() if hasattr(v, "detach") else v
                for k, v in values.items()
            }
        return out

    def _state_to_torch(self, state):
        out = {"param_groups": state["param_groups"], "state": {}}
        for key, values in state["state"].items():
            out["state"][key] = {
                k: torch.as_tensor(v, device="cpu" if k == "step" else self.device)
                for k, v in values.items()
            }
        return out
