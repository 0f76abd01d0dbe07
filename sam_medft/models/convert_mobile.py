"""MobileSAM's TinyViT key names: original `mobile_sam.pt` <-> `MobileSamModel`, and the
encoder shapes read from a checkpoint.

The original TinyViT nests its attention blocks per stage (`layers.S.blocks.M`, S >= 1) and
keeps the patch merging inside the stage (`layers.S.downsample`); `sam_medft.models.tiny_vit`
keeps the blocks as one flat list (`layers.N`, what `peft.layers` indexes) and the mergings
as `merges.K`. The flat index needs the stage depths, which are read from the keys. The
prompt encoder and mask decoder are SAM's and map with `sam_medft.models.convert`'s table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from sam_medft.models.mobile_sam import MobileSamVisionConfig

ORIG = "image_encoder."
HF = "vision_encoder."
#: the ImageNet classifier head TinyViT carries; SAM never runs it
CLASSIFIER_HEAD = ("norm_head.", "head.")

_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_DOWN = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
_FLAT = re.compile(r"^layers\.(\d+)\.(.+)$")
_MERGE = re.compile(r"^merges\.(\d+)\.(.+)$")
_MLP_RENAME = {"mlp.fc1.": "mlp.lin1.", "mlp.fc2.": "mlp.lin2."}


def is_tiny_vit(keys) -> bool:
    """Whether segment-anything-style encoder keys (`image_encoder.` prefix) are a TinyViT's."""
    return any(k.startswith(ORIG + "patch_embed.seq.") for k in keys)


def stage_depths(keys) -> list[int]:
    """Blocks per stage, from original keys (`image_encoder.layers.S.blocks.M.`)."""
    depth: dict[int, int] = {}
    for key in keys:
        m = _BLOCK.match(key.removeprefix(ORIG)) if key.startswith(ORIG) else None
        if m:
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    return [depth[s] for s in sorted(depth)]


def original_key_to_hf(key: str, depths: list[int]) -> str | None:
    """Our name of one original TinyViT key; None for the classifier head or a non-encoder key."""
    if not key.startswith(ORIG):
        return None
    rest = key.removeprefix(ORIG)
    if rest.startswith(CLASSIFIER_HEAD):
        return None
    if rest.startswith(("patch_embed.", "neck.")):
        return HF + rest
    m = _BLOCK.match(rest)
    if m:
        stage, block, tail = int(m[1]), int(m[2]), m[3]
        if stage == 0:
            return f"{HF}conv_stage.blocks.{block}.{tail}"
        for old, new in _MLP_RENAME.items():
            tail = tail.replace(old, new) if tail.startswith(old) else tail
        return f"{HF}layers.{sum(depths[1:stage]) + block}.{tail}"
    m = _DOWN.match(rest)
    if m:
        stage = int(m[1])
        return (f"{HF}conv_stage.downsample.{m[2]}" if stage == 0
                else f"{HF}merges.{stage - 1}.{m[2]}")
    return None


def hf_key_to_original(key: str, depths: list[int]) -> str | None:
    """The original name of one of our TinyViT keys (the inverse of `original_key_to_hf`)."""
    if not key.startswith(HF):
        return None
    rest = key.removeprefix(HF)
    if rest.startswith(("patch_embed.", "neck.")):
        return ORIG + rest
    if rest.startswith("conv_stage.blocks."):
        return ORIG + "layers.0.blocks." + rest.removeprefix("conv_stage.blocks.")
    if rest.startswith("conv_stage.downsample."):
        return ORIG + "layers.0.downsample." + rest.removeprefix("conv_stage.downsample.")
    m = _MERGE.match(rest)
    if m:
        return f"{ORIG}layers.{int(m[1]) + 1}.downsample.{m[2]}"
    m = _FLAT.match(rest)
    if m:
        flat, tail = int(m[1]), m[2]
        for old, new in _MLP_RENAME.items():
            tail = tail.replace(new, old) if tail.startswith(new) else tail
        for stage in range(1, len(depths)):
            if flat < depths[stage]:
                return f"{ORIG}layers.{stage}.blocks.{flat}.{tail}"
            flat -= depths[stage]
    return None


def infer_config(sd: Mapping[str, torch.Tensor], image_size: int = 1024) -> MobileSamVisionConfig:
    """The TinyViT config whose shapes the original keys hold.

    The input size is not in the weights: the official code only runs 1024-pixel images (its
    output grid is hard-coded to 64x64). Stage 0 has no attention, so its head count and
    window are MobileSAM's (they build nothing).
    """
    depths = stage_depths(sd)
    p = ORIG
    dims = [int(sd[p + "patch_embed.seq.2.c.weight"].shape[0])]
    heads, windows = [2], [7]
    for s in range(1, len(depths)):
        blk = f"{p}layers.{s}.blocks.0."
        dims.append(int(sd[blk + "attn.qkv.weight"].shape[1]))
        bias = sd[blk + "attn.attention_biases"]
        heads.append(int(bias.shape[0]))
        windows.append(math.isqrt(int(bias.shape[1])))
    if dims[0] % heads[0]:
        heads[0] = 1
    fc1 = sd[f"{p}layers.1.blocks.0.mlp.fc1.weight"]
    conv1 = sd[f"{p}layers.0.blocks.0.conv1.c.weight"]
    local = sd[f"{p}layers.1.blocks.0.local_conv.c.weight"]
    return MobileSamVisionConfig(
        embed_dims=dims, depths=depths, stage_num_heads=heads, window_sizes=windows,
        mlp_ratio=float(fc1.shape[0]) / dims[1],
        mbconv_expand_ratio=float(conv1.shape[0]) / dims[0],
        local_conv_size=int(local.shape[-1]),
        output_channels=int(sd[p + "neck.0.weight"].shape[0]),
        image_size=image_size, initializer_range=0.02,
    )


def geometry(config: MobileSamVisionConfig) -> dict:
    """The shape-determining fields, to compare an inferred config with a named one."""
    return {f: (list(v) if isinstance(v := getattr(config, f), tuple | list) else v) for f in (
        "embed_dims", "depths", "window_sizes", "mlp_ratio", "mbconv_expand_ratio",
        "local_conv_size", "output_channels")} | {"heads": list(config.stage_num_heads)[1:]}
