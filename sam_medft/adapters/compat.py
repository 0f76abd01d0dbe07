"""PEFT/transformers version seams.

PEFT (<= 0.17) reads ``model.is_gradient_checkpointing`` when it wraps or loads a model;
transformers >= 4.57 deprecated that attribute for ``is_activation_checkpointing`` and warns
(FutureWarning) on every LoRA run. The call is inside PEFT, so the fix on our side is to
silence exactly that warning around our PEFT calls, nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

IS_GRADIENT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"


@contextmanager
def peft_call() -> Iterator[None]:
    """Run a PEFT wrap/load without transformers' ``is_gradient_checkpointing`` FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=IS_GRADIENT_CHECKPOINTING_WARNING, category=FutureWarning
        )
        yield


__all__ = ["IS_GRADIENT_CHECKPOINTING_WARNING", "peft_call"]
