"""Multinomial logistic regression on frozen features, and its cross-validated accuracy.

Both fine-tune paths use it: to fit a probe's head, and to choose, before any training, the backbone whose
features suit an upload best (the text encoder, or the image network).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS on standardised features, folded back into one
    nn.Linear on the raw features (so the saved head needs no extra scaling step)."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    head = nn.Linear(x.shape[1], n_classes, device=x.device)  # beside the features, wherever they are (CPU or GPU)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=100, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(z), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    folded = nn.Linear(x.shape[1], n_classes, device=x.device)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - (head.weight * mean / std).sum(1))
    return folded


def cross_validated_accuracy(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, folds: int = 5, seed: int = 0) -> float:
    """Accuracy of `fit_logistic` on rows it did not see, each row held out once over `folds` folds."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    correct = 0
    for fold in range(folds):
        held = order[fold::folds]
        kept = torch.cat([order[f::folds] for f in range(folds) if f != fold])
        head = fit_logistic(x[kept], y[kept], n_classes, l2)
        with torch.no_grad():
            correct += (head(x[held]).argmax(1) == y[held]).sum().item()
    return correct / len(y)
