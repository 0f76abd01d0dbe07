"""MobileSAM as a transformers model: SAM's prompt encoder and mask decoder with a TinyViT
image encoder (`sam_medft.models.tiny_vit`), the study's `vit_t`.

`MobileSamModel` is a `SamModel` subclass whose `vision_encoder` is the TinyViT: the forward,
outputs, processor, prompt handling, PEFT wrapping and the rest of the package are SAM's.
The configs subclass SAM's, so every field the package reads (`vision_config.image_size`,
`prompt_encoder_config.image_embedding_size`, ...) is where it is for SAM. Importing this
module registers `model_type: mobile_sam` with the Auto classes, so a saved folder loads with
`AutoConfig` / `AutoModel` / `MobileSamModel.from_pretrained`.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, SamConfig, SamModel, SamVisionConfig
from transformers import initialization as init
from transformers.models.sam.modeling_sam import (
    SamMaskDecoder,
    SamPositionalEmbedding,
    SamPreTrainedModel,
    SamPromptEncoder,
)

from sam_medft.models.tiny_vit import (
    MobileSamVisionLayer,
    TinyViTAttention,
    TinyViTEncoder,
    bias_index,
)


@strict
class MobileSamVisionConfig(SamVisionConfig):
    """TinyViT shapes (MobileSAM's by default: 5M parameters, 1024-pixel input).

    `hidden_size` (the last stage's width) and `num_hidden_layers` (the attention blocks, what
    `peft.layers` indexes) are derived from the stage lists.
    """

    model_type = "mobile_sam_vision_model"
    embed_dims: list[int] | tuple[int, ...] = (64, 128, 160, 320)
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    stage_num_heads: list[int] | tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: list[int] | tuple[int, ...] = (7, 7, 14, 7)
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3

    def __post_init__(self, **kwargs):
        lists = (self.embed_dims, self.depths, self.stage_num_heads, self.window_sizes)
        if len({len(x) for x in lists}) != 1 or len(self.depths) < 3:
            raise ValueError("TinyViT needs embed_dims, depths, stage_num_heads and window_sizes "
                             "of one length (>= 3 stages)")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"every TinyViT stage needs a block; depths {list(self.depths)}")
        if any(d % h for d, h in zip(self.embed_dims, self.stage_num_heads, strict=True)):
            raise ValueError("each embed_dims entry must be divisible by its stage_num_heads")
        if self.image_size % 16:
            raise ValueError(f"TinyViT image_size {self.image_size} must be a multiple of 16")
        self.hidden_size = int(self.embed_dims[-1])
        self.num_hidden_layers = int(sum(self.depths[1:]))
        self.patch_size = 16  # the encoder's overall stride: a 1024 image -> 64x64 embeddings
        super().__post_init__(**kwargs)


@strict
class MobileSamConfig(SamConfig):
    """SamConfig whose vision part is a TinyViT."""

    model_type = "mobile_sam"
    sub_configs_defaults = {**SamConfig.sub_configs_defaults, "vision_config": MobileSamVisionConfig}


class MobileSamModel(SamModel):
    """SamModel with the TinyViT image encoder (MobileSAM)."""

    config_class = MobileSamConfig
    _no_split_modules = ["MobileSamVisionLayer"]
    _supports_sdpa = True

    def __init__(self, config: MobileSamConfig) -> None:
        SamPreTrainedModel.__init__(self, config)  # SamModel's body, with another encoder
        self.shared_image_embedding = SamPositionalEmbedding(config.vision_config)
        self.vision_encoder = TinyViTEncoder(config.vision_config)
        self._encoder_modules = frozenset(id(m) for m in self.vision_encoder.modules())
        self.prompt_encoder = SamPromptEncoder(config)
        config.mask_decoder_config._attn_implementation = config._attn_implementation
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)
        self.post_init()

    def train(self, mode: bool = True) -> MobileSamModel:
        """Train mode everywhere except TinyViT's BatchNorms, whose statistics stay as loaded.

        A frozen base is never saved (adapters hold only trained tensors), so statistics
        updated in train mode would be lost on reload and the reloaded model would differ
        from the trained one; small fine-tuning batches estimate them badly anyway. (The
        study's code let them drift and saved them in its full-model checkpoint.)
        """
        super().train(mode)
        for module in self.vision_encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def rebuild_buffers(self) -> None:
        """Recompute the attention-offset indices (not saved: a model built on the meta
        device and then given its weights has none)."""
        for module in self.vision_encoder.modules():
            if isinstance(module, TinyViTAttention):
                device = module.attention_biases.device
                module.attention_bias_idxs = bias_index(module.window).to(device)

    def _init_weights(self, module) -> None:
        """TinyViT's own init in the encoder (transformers' std-0.02 convolutions would make
        a random TinyViT's embeddings vanish); SAM's everywhere else."""
        if id(module) not in self._encoder_modules:
            super()._init_weights(module)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):  # torch's default (no TinyViT conv has a bias)
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, TinyViTAttention):  # non-persistent: empty after loading
            init.copy_(module.attention_bias_idxs, bias_index(module.window))
            init.zeros_(module.attention_biases)
        else:  # norms and BatchNorm statistics
            super()._init_weights(module)


AutoConfig.register(MobileSamConfig.model_type, MobileSamConfig, exist_ok=True)
AutoModel.register(MobileSamConfig, MobileSamModel, exist_ok=True)

__all__ = ["MobileSamConfig", "MobileSamModel", "MobileSamVisionConfig", "MobileSamVisionLayer"]
