"""The architectures of the registered models: configs without weights, the tiny model.

A recipe's `model.name` is looked up in `sam_medft.model_names` (Hub id, normalisation
preset, family); the shapes of those checkpoints live here, so parameter counts and memory
plans are computed without downloading weights (`recipes --params`, `train --dry-run`).
"""

from __future__ import annotations

import torch
from transformers import SamConfig, SamHQConfig, SamHQModel, SamModel

from sam_medft.model_names import lookup
from sam_medft.models.mobile_sam import MobileSamConfig, MobileSamModel
from sam_medft.models.sam_hq_decoder import use_official_decoder

TINY_CONFIG = dict(
    vision_config=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                       global_attn_indexes=[1, 3], mlp_dim=128, image_size=256,
                       initializer_range=0.02,
                       # segment-anything's random Fourier features use scale 1; the config
                       # default (hidden/2 = 32) gives codes too fine for a 16x16 grid, and a
                       # random model then cannot relate prompt coordinates to the image
                       scale=1.0),
    prompt_encoder_config=dict(image_size=256, image_embedding_size=16),
    initializer_range=0.02,
)
# MobileSAM's architecture at test size: TinyViT with 5 attention blocks, 256-pixel input,
# 16x16 embeddings (the same geometry as `tiny`), ~0.7M encoder parameters
TINY_MOBILESAM_CONFIG = dict(
    vision_config=dict(embed_dims=[16, 32, 40, 64], depths=[1, 2, 2, 1],
                       stage_num_heads=[1, 2, 2, 4], window_sizes=[7, 7, 14, 7],
                       image_size=256, initializer_range=0.02, scale=1.0),
    prompt_encoder_config=dict(image_size=256, image_embedding_size=16),
    initializer_range=0.02,
)
# MobileSAM (mobile_sam.pt; the study's vit_t): the TinyViT defaults of MobileSamVisionConfig
_MOBILE = {
    "mobilesam": dict(vision_config=dict(initializer_range=0.02)),
    "tiny-mobilesam": TINY_MOBILESAM_CONFIG,
}
TINY_SEED = 0  # the tiny model's weights are a pure function of this seed
# `model.random_init: true`: the registry architecture with weights from this seed; the
# adapter records the base as `random:<name>`, so `sam_medft.load` rebuilds the same base
RANDOM_PREFIX = "random:"
RANDOM_INIT_SEED = 0

# Architecture-only configs of the real checkpoints (shapes, no weights)
_VIT = {
    "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  global_attn_indexes=[2, 5, 8, 11], mlp_dim=3072),
    "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  global_attn_indexes=[5, 11, 17, 23], mlp_dim=4096),
    "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                  global_attn_indexes=[7, 15, 23, 31], mlp_dim=5120),
    # SlimSAM-77: pruned ViT-B (hidden 168, mlp 696); SlimSAM-50: hidden 384, mlp 1536
    "slimsam_77": dict(hidden_size=168, num_hidden_layers=12, num_attention_heads=12,
                       global_attn_indexes=[2, 5, 8, 11], mlp_dim=696),
    "slimsam_50": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                       global_attn_indexes=[2, 5, 8, 11], mlp_dim=1536),
}
ARCH_OF = {
    "sam-vit-base": "vit_b", "medsam": "vit_b", "sam-hq-vit-base": "vit_b",
    "sam-vit-large": "vit_l", "sam-vit-huge": "vit_h", "sam-hq-vit-huge": "vit_h",
    "slimsam-77": "slimsam_77", "slimsam-50": "slimsam_50",
}


def sam_hq_config(cfg: SamConfig, initializer_range: float = 0.02):
    """The SAM-HQ config with `cfg`'s shapes (its decoder also reads the ViT's width)."""
    decoder = cfg.mask_decoder_config.to_dict()
    decoder["vit_dim"] = cfg.vision_config.hidden_size
    return SamHQConfig(
        vision_config=cfg.vision_config.to_dict(),
        prompt_encoder_config=cfg.prompt_encoder_config.to_dict(),
        mask_decoder_config=decoder,
        initializer_range=initializer_range,
    )


def architecture_config(name: str) -> SamConfig:
    """A SamConfig with the named checkpoint's shapes (no weights needed)."""
    if name == "tiny":
        return SamConfig(**TINY_CONFIG)
    if name in _MOBILE:
        return MobileSamConfig(**_MOBILE[name])
    # initializer_range 0.02: the vision default (1e-10) gives dead random models
    if name in ARCH_OF:
        return SamConfig(vision_config=dict(_VIT[ARCH_OF[name]], initializer_range=0.02))
    if name in _VIT:
        return SamConfig(vision_config=dict(_VIT[name], initializer_range=0.02))
    raise KeyError(name)


def random_base_name(name: str) -> str | None:
    """``sam-vit-base`` for ``random:sam-vit-base``, None for any other model name."""
    return name[len(RANDOM_PREFIX):] if name.startswith(RANDOM_PREFIX) else None


def is_random_model(name: str) -> bool:
    """Whether the base model `name` (as an adapter records it) has random weights: a built-in
    test model (`tiny`, `tiny-mobilesam`: no Hub checkpoint, nothing to convert) or a
    `model.random_init` architecture (`random:<name>`). Its zero-shot numbers are chance level."""
    entry = lookup(name)
    return random_base_name(name) is not None or (entry is not None and entry.is_tiny)


def random_init_names() -> list[str]:
    """The model names `model.random_init` can build: those with a known architecture."""
    return [*ARCH_OF, *_VIT, *_MOBILE]


def build_random(name: str, num_classes: int, family: str = "sam"):
    """The named architecture with random weights (a pure function of RANDOM_INIT_SEED, the
    same in every process), `num_classes` mask outputs; no file or network is touched."""
    cfg = architecture_config(name)
    cfg.mask_decoder_config.num_multimask_outputs = num_classes
    if family == "sam_hq":
        cfg = sam_hq_config(cfg)
    return seeded_model(model_class(cfg), cfg, RANDOM_INIT_SEED)


def model_class(cfg: SamConfig) -> type[SamModel]:
    """The model class of a registry config (SAM-HQ, MobileSAM or SAM)."""
    if isinstance(cfg, SamHQConfig):
        return SamHQModel
    return MobileSamModel if isinstance(cfg, MobileSamConfig) else SamModel


def build_tiny(num_classes: int | None = None, name: str = "tiny") -> SamModel:
    """The deterministic random tiny model (same weights in every process): `tiny` (a
    SamModel) or `tiny-mobilesam` (a MobileSamModel of the same geometry)."""
    cfg = architecture_config(name)
    if num_classes is not None:
        cfg.mask_decoder_config.num_multimask_outputs = num_classes
    return seeded_model(model_class(cfg), cfg, TINY_SEED)


def seeded_model(cls: type, cfg, seed: int):
    """`cls(cfg)` with weights drawn from `seed` (the same in every process), leaving the
    caller's random state as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = cls(cfg)
    finally:
        torch.random.set_rng_state(state)
    return use_official_decoder(model).eval()
