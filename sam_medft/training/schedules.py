"""Learning-rate schedules in optimizer steps: linear warmup, then cosine, poly or constant.

The study's poly decay (power 0.9) is here for parity; cosine is the default.
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, *, warmup: int, total: int, kind: str, min_ratio: float = 0.0) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "poly":
        return max(min_ratio, (1 - progress) ** 0.9)
    raise ValueError(f"unknown schedule {kind!r}")


def build_scheduler(optimizer, *, warmup: int, total: int, kind: str) -> LambdaLR:
    return LambdaLR(optimizer, lambda s: lr_factor(s, warmup=warmup, total=total, kind=kind))
