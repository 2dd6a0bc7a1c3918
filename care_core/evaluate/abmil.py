"""ABMIL baseline (Ilse et al. 2018, gated attention): a small MIL classifier trained on patch features,
run on the same folds as the probes. Our choices (the CARE paper gives none for it): hidden 128,
dropout 0.25, Adam lr 2e-4 / wd 1e-5, one slide per step, up to 40 epochs with early stopping on
validation loss (patience 8, not before epoch 10); without validation 20 epochs. Best-on-validation
weights are kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

__all__ = ["ABMILClassifier"]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: per-slide steps of a tiny net are dominated by thread hand-offs
    (measured here: 3.5 ms per step on one thread, 210 ms on two busy cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _module(in_dim: int, hidden: int, n_classes: int, dropout: float):
    import torch
    from torch import nn

    class GatedABMIL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.attn_v = nn.Linear(hidden, hidden)
            self.attn_u = nn.Linear(hidden, hidden)
            self.attn_w = nn.Linear(hidden, 1)
            self.classifier = nn.Linear(hidden, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, D] -> logits [C]
            h = self.embed(x)
            a = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))  # [N, 1]
            a = torch.softmax(a, dim=0)
            return self.classifier((a * h).sum(dim=0))

    return GatedABMIL()


class ABMILClassifier:
    """Gated-attention MIL on bags of patch features; labels are ints 0..n_classes-1.

    Fitted: ``model_`` (torch module), ``mean_``/``scale_`` (feature standardiser from training patches),
    ``best_epoch_``, ``n_epochs_``.
    """

    def __init__(self, *, n_classes: int, hidden: int = 128, dropout: float = 0.25, lr: float = 2e-4,
                 weight_decay: float = 1e-5, max_epochs: int = 40, no_val_epochs: int = 20, patience: int = 8,
                 min_epochs: int = 10, seed: int = 0) -> None:
        self.n_classes = n_classes
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.no_val_epochs = no_val_epochs
        self.patience = patience
        self.min_epochs = min_epochs
        self.seed = seed

    def _tensor(self, bag: np.ndarray):
        import torch

        return torch.from_numpy(((np.asarray(bag, dtype=np.float32) - self.mean_) / self.scale_).astype(np.float32))

    def fit(self, bags: Sequence[np.ndarray], y: np.ndarray, val_bags: Sequence[np.ndarray] | None = None,
            y_val: np.ndarray | None = None, *, should_stop: Callable[[], bool] | None = None) -> ABMILClassifier:
        import torch
        import torch.nn.functional as F

        allf = np.concatenate([np.asarray(b, dtype=np.float64) for b in bags])
        self.mean_ = allf.mean(0).astype(np.float32)
        self.scale_ = np.where(allf.std(0) > 0, allf.std(0), 1.0).astype(np.float32)
        has_val = val_bags is not None and len(val_bags) > 0
        with torch.random.fork_rng(devices=[]), _one_thread():
            torch.manual_seed(self.seed)
            rng = np.random.default_rng(self.seed)
            model = _module(allf.shape[1], self.hidden, self.n_classes, self.dropout)
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            train = [self._tensor(b) for b in bags]
            val = [self._tensor(b) for b in val_bags] if has_val else []
            y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
            best = (np.inf, None, 0)
            since = 0
            epochs = self.max_epochs if has_val else self.no_val_epochs
            for epoch in range(epochs):
                model.train()
                for i in rng.permutation(len(train)):
                    loss = F.cross_entropy(model(train[i])[None], y_t[i : i + 1])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                self.n_epochs_ = epoch + 1
                if should_stop is not None and should_stop():
                    break
                if not has_val:
                    continue
                model.eval()
                with torch.no_grad():
                    logits = torch.stack([model(b) for b in val])
                    vloss = float(F.cross_entropy(logits, torch.as_tensor(np.asarray(y_val), dtype=torch.long)))
                if vloss < best[0]:
                    best, since = (vloss, {k: v.clone() for k, v in model.state_dict().items()}, epoch), 0
                else:
                    since += 1
                    if since >= self.patience and epoch + 1 >= self.min_epochs:
                        break
            if best[1] is not None:
                model.load_state_dict(best[1])
            self.best_epoch_ = best[2] if has_val else self.n_epochs_ - 1
        self.model_ = model.eval()
        return self

    def predict_proba(self, bags: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        with torch.no_grad(), _one_thread():
            logits = torch.stack([self.model_(self._tensor(b)) for b in bags])
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)
