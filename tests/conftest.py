"""Shared fixtures. Torch gets one thread per test process: the CI machine has 2 cores."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_model():
    """The deterministic random tiny SamModel (2 classes: background + 1)."""
    from sam_medft.models.registry import build_tiny

    return build_tiny(num_classes=2)
