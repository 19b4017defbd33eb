"""Small user-style feature metrics for the ``extra_metrics`` tests (measure, callbacks, replay).

They are written the way the docs tell a user to write one: a torchmetrics ``Metric``
whose ``update`` takes an ``(N, d)`` tensor of feature rows.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ParticipationRatio(Metric):
    """``trace(C)^2 / ||C||_F^2`` of the feature covariance (float64 sums; no eigensolver)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("second", torch.zeros(0, 0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        x = features.to(torch.float64)
        if self.total.numel() == 0:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.second = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.second += x.T @ x

    def compute(self) -> torch.Tensor:
        mean = self.total / self.n
        covariance = (self.second - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return torch.trace(covariance) ** 2 / (covariance**2).sum()


class RowStats(Metric):
    """A dict-valued metric (``rows`` and ``mean_norm``) plus a vector (``column_mean``)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("norms", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        x = features.to(torch.float64)
        if self.total.numel() == 0:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        self.n += x.shape[0]
        self.norms += x.norm(dim=1).sum()
        self.total += x.sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"rows": self.n, "mean_norm": self.norms / self.n, "column_mean": self.total / self.n}


class Broken(Metric):
    """Raises in ``update``: must cost nothing but its own value."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        raise RuntimeError("this metric is broken")

    def compute(self) -> torch.Tensor:
        return self.n


class BrokenOnRankOne(Metric):
    """Raises in ``update`` on torch.distributed rank 1 only: the ranks must still agree."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            raise RuntimeError("broken on rank 1")
        self.n += features.shape[0]

    def compute(self) -> torch.Tensor:
        return self.n
