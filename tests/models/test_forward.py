"""Automatic-mode forward: the frozen-encoder path equals the plain one, SAM and SAM-HQ."""

from __future__ import annotations

import copy

import torch
from transformers import SamHQConfig, SamHQModel

from sam_medft.models.forward import automatic_forward
from sam_medft.models.registry import TINY_CONFIG, build_tiny


def _tiny_hq(num_classes: int) -> SamHQModel:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["mask_decoder_config"] = dict(vit_dim=64, num_multimask_outputs=num_classes)
    torch.manual_seed(0)
    return SamHQModel(SamHQConfig(**cfg)).eval()


def test_frozen_encoder_path_matches_plain_forward():
    x = torch.randn(2, 3, 256, 256)
    for model in (build_tiny(3), _tiny_hq(3)):
        a, ia = automatic_forward(model, x)
        with torch.enable_grad():
            b, ib = automatic_forward(model, x, frozen_encoder=True)
        assert a.shape == (2, 3, 64, 64) and ia.shape == (2, 3)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert not any(p.grad is not None for p in model.vision_encoder.parameters())
