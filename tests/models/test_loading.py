"""`trainable_tensors`: the one extraction of trained weights (checkpoints, vanilla adapters)."""

from __future__ import annotations

import torch

from sam_medft.adapters.methods import apply_method
from sam_medft.config import PeftSettings
from sam_medft.models.loading import trainable_tensors
from sam_medft.models.registry import build_tiny


def test_trainable_tensors_hold_only_the_trained_parameters_on_the_cpu():
    model, _ = apply_method(build_tiny(2), PeftSettings(method="vanilla", scope="decoder"))
    tensors = trainable_tensors(model)
    assert set(tensors) == {n for n, _ in model.named_parameters() if n.startswith("mask_decoder.")}
    assert all(t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad
               for t in tensors.values())


def test_trainable_tensors_keep_peft_names():
    """Checkpoints are keyed by the wrapped model's names; a resume must find them again."""
    model, _ = apply_method(build_tiny(2), PeftSettings(method="lora", scope="decoder", r=2))
    names = set(trainable_tensors(model))
    assert names and all(n.startswith("base_model.model.mask_decoder.") for n in names)
    assert any(".lora_A." in n for n in names) and any(".modules_to_save." in n for n in names)


def test_trainable_tensors_take_values_from_a_gathered_state_dict():
    """Sharded (FSDP2) parameters are pieces: the values come from the gathered state dict."""
    model, _ = apply_method(build_tiny(2), PeftSettings(method="vanilla", scope="decoder"))
    gathered = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    tensors = trainable_tensors(model, gathered)
    assert set(tensors) == set(trainable_tensors(model))
    assert not any(t.any() for t in tensors.values())
