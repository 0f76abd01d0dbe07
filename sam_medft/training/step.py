"""The training step: one home for the forward + loss and the optimizer update.

The trainer, `sam-medft bench` and the `--dry-run` memory plan all run these functions, so
what is timed and what is planned is what trains.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from sam_medft.tasks import Task
from sam_medft.training.embedding_cache import batch_keys, cached_embeddings


def training_loss(task: Task, model: torch.nn.Module, batch: dict, *, frozen_encoder: bool,
                  cache=None, embeddings=None) -> torch.Tensor:
    """The loss of one finished batch. `embeddings`: precomputed image embeddings (bench's
    cached mode); otherwise they come from `cache` when there is one."""
    if embeddings is None:
        embeddings = cached_embeddings(cache, model, batch["pixel_values"], batch_keys(batch))
    outputs = task.forward(model, batch, frozen_encoder=frozen_encoder, embeddings=embeddings)
    return task.loss(outputs, batch)


def optimizer_step(task: Task, model: torch.nn.Module, batch: dict, optimizer, *,
                   frozen_encoder: bool, cache=None, embeddings=None,
                   autocast: Callable[[], AbstractContextManager] = nullcontext,
                   backward: Callable[[torch.Tensor], None] | None = None,
                   before_update: Callable[[], None] | None = None) -> torch.Tensor:
    """Loss under `autocast`, backward (`backward`: accelerate's, which scales and syncs),
    `before_update` (gradient clipping), optimizer step and zero_grad. -> the detached loss."""
    with autocast():  # also covers the no-grad encoder call of frozen scopes
        loss = training_loss(task, model, batch, frozen_encoder=frozen_encoder, cache=cache,
                             embeddings=embeddings)
    (backward or torch.Tensor.backward)(loss)
    if before_update is not None:
        before_update()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
