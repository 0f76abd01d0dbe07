"""Original segment-anything checkpoints -> transformers `SamModel` folders, and back.

Users arrive with `sam_vit_b_01ec64.pth`, `medsam_vit_b.pth`, fine-tuned study checkpoints or
MAE-pretrained encoder weights; the rest of the package only loads transformers folders.
The conversion is strict on purpose: every source key is either mapped or listed as
ignored, a missing target weight is an error (never a silently random-initialised model),
and the output folder appears only once it is complete.

The key mapping is one bidirectional table (`_RULES`) plus the MLP index shift, so
`to_original_state_dict` is the exact inverse of the forward mapping.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, SamConfig, SamHQConfig, SamHQModel, SamModel, SamProcessor

from sam_medft.errors import SamMedftError
from sam_medft.model_names import lookup
from sam_medft.models import convert_mobile, registry
from sam_medft.models.mobile_sam import MobileSamConfig, MobileSamModel

#: written into every converted folder: what was converted, and the mark of a folder of ours
CONVERSION_FILE = "conversion.json"

# ----------------------------------------------------------------------------------------
# Key mapping
# ----------------------------------------------------------------------------------------

# Template tokens: each side of a rule uses the same tokens, so one table maps both ways.
_TOKENS = {
    "i": r"\d+",
    "p": r"weight|bias",
    "n": r"[1-4]",
    "a": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
    "q": r"q_proj|k_proj|v_proj|out_proj",
}

# (segment-anything name, transformers SamModel name)
_RULE_TEMPLATES: list[tuple[str, str]] = [
    # image encoder (ViTDet backbone + neck)
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.blocks.{i}.norm{n}.{p}", "vision_encoder.layers.{i}.layer_norm{n}.{p}"),
    ("image_encoder.blocks.{i}.attn.qkv.{p}", "vision_encoder.layers.{i}.attn.qkv.{p}"),
    ("image_encoder.blocks.{i}.attn.proj.{p}", "vision_encoder.layers.{i}.attn.proj.{p}"),
    ("image_encoder.blocks.{i}.attn.rel_pos_h", "vision_encoder.layers.{i}.attn.rel_pos_h"),
    ("image_encoder.blocks.{i}.attn.rel_pos_w", "vision_encoder.layers.{i}.attn.rel_pos_w"),
    ("image_encoder.blocks.{i}.mlp.lin{n}.{p}", "vision_encoder.layers.{i}.mlp.lin{n}.{p}"),
    ("image_encoder.neck.0.{p}", "vision_encoder.neck.conv1.{p}"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.{p}", "vision_encoder.neck.conv2.{p}"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    # prompt encoder
    (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    ("prompt_encoder.point_embeddings.{i}.{p}", "prompt_encoder.point_embed.{i}.{p}"),
    ("prompt_encoder.not_a_point_embed.{p}", "prompt_encoder.not_a_point_embed.{p}"),
    ("prompt_encoder.no_mask_embed.{p}", "prompt_encoder.no_mask_embed.{p}"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    # mask decoder (the MLP heads are handled by `_mlp_to_hf` / `_mlp_to_original`)
    ("mask_decoder.iou_token.{p}", "mask_decoder.iou_token.{p}"),
    ("mask_decoder.mask_tokens.{p}", "mask_decoder.mask_tokens.{p}"),
    (
        "mask_decoder.transformer.layers.{i}.{a}.{q}.{p}",
        "mask_decoder.transformer.layers.{i}.{a}.{q}.{p}",
    ),
    (
        "mask_decoder.transformer.layers.{i}.norm{n}.{p}",
        "mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}",
    ),
    (
        "mask_decoder.transformer.layers.{i}.mlp.lin{n}.{p}",
        "mask_decoder.transformer.layers.{i}.mlp.lin{n}.{p}",
    ),
    (
        "mask_decoder.transformer.final_attn_token_to_image.{q}.{p}",
        "mask_decoder.transformer.final_attn_token_to_image.{q}.{p}",
    ),
    (
        "mask_decoder.transformer.norm_final_attn.{p}",
        "mask_decoder.transformer.layer_norm_final_attn.{p}",
    ),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
    # SAM-HQ's decoder additions (segment_anything_hq's MaskDecoderHQ -> SamHQMaskDecoder)
    ("mask_decoder.hf_token.{p}", "mask_decoder.hq_token.{p}"),
    ("mask_decoder.compress_vit_feat.0.{p}", "mask_decoder.compress_vit_conv1.{p}"),
    ("mask_decoder.compress_vit_feat.1.{p}", "mask_decoder.compress_vit_norm.{p}"),
    ("mask_decoder.compress_vit_feat.3.{p}", "mask_decoder.compress_vit_conv2.{p}"),
    ("mask_decoder.embedding_encoder.0.{p}", "mask_decoder.encoder_conv1.{p}"),
    ("mask_decoder.embedding_encoder.1.{p}", "mask_decoder.encoder_norm.{p}"),
    ("mask_decoder.embedding_encoder.3.{p}", "mask_decoder.encoder_conv2.{p}"),
    ("mask_decoder.embedding_maskfeature.0.{p}", "mask_decoder.mask_conv1.{p}"),
    ("mask_decoder.embedding_maskfeature.1.{p}", "mask_decoder.mask_norm.{p}"),
    ("mask_decoder.embedding_maskfeature.3.{p}", "mask_decoder.mask_conv2.{p}"),
]
# SAM-HQ's extra decoder MLP: `hf_mlp` there, `hq_mask_mlp` in transformers
_HQ_MLP = ("mask_decoder.hf_mlp", "mask_decoder.hq_mask_mlp")
#: a key only SAM-HQ checkpoints have
HQ_MARKER = "mask_decoder.hf_token.weight"


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_TOKENS[part]})"
        for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


_RULES = [(_compile(o), o, _compile(h), h) for o, h in _RULE_TEMPLATES]

# SamModel keeps the prompt encoder's random-Fourier matrix twice (tied): one for points,
# one for the image-wide positional embedding. segment-anything keeps it once.
_PE_HF = "prompt_encoder.shared_embedding.positional_embedding"
_PE_SHARED = "shared_image_embedding.positional_embedding"

# Decoder MLPs: segment-anything `layers.0..n-1` <-> transformers proj_in, layers.0..n-3,
# proj_out. The depth is read from the keys, so a non-default iou_head_depth still works.
_MLP_ORIG = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|hf_mlp))"
    r"\.layers\.(\d+)\.(weight|bias)$"
)
_MLP_HF = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|hq_mask_mlp))"
    r"\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$"
)

# Source keys that are known and deliberately not weights of SamModel.
_KNOWN_IGNORED = {
    "norm_head": "TinyViT's ImageNet classifier head; MobileSAM never runs it",
    "head": "TinyViT's ImageNet classifier head; MobileSAM never runs it",
    "pixel_mean": "normalisation constant; the processor config carries it",
    "pixel_std": "normalisation constant; the processor config carries it",
}


def _ignore_reason(key: str) -> str:
    """Why a source key has no SamModel counterpart (by its last name, or its module)."""
    parts = key.split(".")
    for part in (parts[-1], parts[1] if len(parts) > 2 else ""):
        if part in _KNOWN_IGNORED:
            return _KNOWN_IGNORED[part]
    return "no SamModel counterpart"


def _mlp_depths_original(keys: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        m = _MLP_ORIG.match(key)
        if m:
            depths[m[1]] = max(depths.get(m[1], 0), int(m[2]) + 1)
    return depths


def _mlp_depths_hf(keys: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        m = _MLP_HF.match(key)
        if m:
            hidden = int(m[3]) + 1 if m[3] is not None else 0
            depths[m[1]] = max(depths.get(m[1], 2), hidden + 2)
    return depths


def original_key_to_hf(key: str, mlp_depth: int = 3) -> str | None:
    """The SamModel name of one segment-anything key (None: not a SamModel weight).

    `mlp_depth` is the layer count of the decoder MLP the key belongs to (3 in every
    released checkpoint); it decides which `layers.N` becomes `proj_out`.
    """
    m = _MLP_ORIG.match(key)
    if m:
        prefix, index, param = m[1], int(m[2]), m[3]
        if index >= mlp_depth:
            return None
        if index == 0:
            name = "proj_in"
        elif index == mlp_depth - 1:
            name = "proj_out"
        else:
            name = f"layers.{index - 1}"
        return f"{prefix.replace(*_HQ_MLP)}.{name}.{param}"
    for orig_re, _, _, hf_template in _RULES:
        m = orig_re.match(key)
        if m:
            return hf_template.format(**m.groupdict())
    return None


def hf_key_to_original(key: str, mlp_depth: int = 3) -> str | None:
    """The segment-anything name of one SamModel key (None: no original counterpart)."""
    m = _MLP_HF.match(key)
    if m:
        prefix, name, param = m[1], m[2], m[4]
        if name == "proj_in":
            index = 0
        elif name == "proj_out":
            index = mlp_depth - 1
        else:
            index = int(m[3]) + 1
        return f"{prefix.replace(_HQ_MLP[1], _HQ_MLP[0])}.layers.{index}.{param}"
    for _, orig_template, hf_re, _ in _RULES:
        m = hf_re.match(key)
        if m:
            return orig_template.format(**m.groupdict())
    return None


def map_to_hf(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Rename a segment-anything state dict to SamModel names.

    Returns (renamed tensors, SamModel name -> source name, source keys with no SamModel
    counterpart). The tied positional matrix is written under both SamModel names.
    """
    depths = _mlp_depths_original(list(state_dict))
    tiny_vit = convert_mobile.stage_depths(state_dict) if convert_mobile.is_tiny_vit(
        state_dict) else None
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        mlp = _MLP_ORIG.match(key)
        if tiny_vit is not None and key.startswith(convert_mobile.ORIG):  # MobileSAM encoder
            hf = convert_mobile.original_key_to_hf(key, tiny_vit)
        else:
            hf = original_key_to_hf(key, depths.get(mlp[1], 3) if mlp else 3)
        if hf is None:
            unknown.append(key)
            continue
        mapped[hf] = value
        origin[hf] = key
    if _PE_HF in mapped:
        mapped[_PE_SHARED] = mapped[_PE_HF]
        origin[_PE_SHARED] = origin[_PE_HF]
    return mapped, origin, unknown


def to_original_state_dict(model: SamModel) -> dict[str, torch.Tensor]:
    """The segment-anything state dict of a SamModel (the inverse of the conversion).

    Useful to go back to the original code base (e.g. `Sam.load_state_dict`). A model
    with extra modules (unmerged PEFT adapters) has no original format: merge first.
    """
    state = model.state_dict()
    depths = _mlp_depths_hf(list(state))
    config = getattr(model, "config", None)
    tiny_vit = (list(config.vision_config.depths) if isinstance(config, MobileSamConfig)
                else None)
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if key == _PE_SHARED:
            other = state.get(_PE_HF)
            if other is not None and not value.is_meta and not torch.equal(value, other):
                raise SamMedftError(
                    f"{_PE_SHARED} differs from {_PE_HF}; segment-anything stores one matrix "
                    "for both. Re-tie them (model.tie_weights()) before converting back."
                )
            continue
        mlp = _MLP_HF.match(key)
        if tiny_vit is not None and key.startswith(convert_mobile.HF):
            orig = convert_mobile.hf_key_to_original(key, tiny_vit)
        else:
            orig = hf_key_to_original(key, depths.get(mlp[1], 3) if mlp else 3)
        if orig is None:
            unmapped.append(key)
            continue
        out[orig] = value.detach().clone()
    if unmapped:
        raise SamMedftError(
            f"the model has {len(unmapped)} weights with no segment-anything name, e.g. "
            f"{_preview(unmapped)}. Merge or drop adapters first "
            "(peft_model.merge_and_unload()) and convert a plain SamModel."
        )
    return out


# ----------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------

_RESAVE_HINT = (
    "If you trust the file, re-save its weights as a plain state dict (or safetensors) and "
    "convert that: python -c \"import torch; ck = torch.load('{src}', map_location='cpu', "
    "weights_only=False); sd = ck.get('model', ck) if isinstance(ck, dict) else ck.state_dict(); "
    "torch.save(dict(sd), 'weights.pth')\"  "
    "(or safetensors.torch.save_file({{k: v.contiguous() for k, v in sd.items()}}, "
    "'weights.safetensors'))."
)


def load_checkpoint(src: str | Path) -> dict:
    """Read a `.pth`/`.pt` (weights only, no pickle code) or `.safetensors` file."""
    path = Path(src)
    if not path.is_file():
        raise SamMedftError(f"checkpoint {path} does not exist; check the path.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise SamMedftError(
                f"{path} is not a readable safetensors file ({err}); re-download or re-save it."
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)", str(err))
        if found is None:  # not a pickle at all (an HTML error page, a truncated file)
            raise SamMedftError(
                f"{path} is not a readable PyTorch checkpoint (the unpickler stopped at an "
                "unexpected byte); check that the download finished, or pass a .safetensors file."
            ) from None
        raise SamMedftError(
            f"{path} contains pickled Python objects ({found[1]}), not only tensors. Loading "
            "it would execute code stored in the file (arbitrary code execution), so "
            "sam-medft refuses it. " + _RESAVE_HINT.format(src=path)
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise SamMedftError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
            "check that the download finished, or pass a .safetensors file."
        ) from None


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def unwrap_state_dict(raw: object, src: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the state dict inside training-script wrappers.

    Handles {"model": sd}, {"state_dict": sd} (with optimizer/epoch next to it) and a DDP
    "module." prefix. Returns the tensors and the ignored wrapper/non-tensor entries.
    """
    if not isinstance(raw, Mapping):
        raise SamMedftError(
            f"{src} holds a {type(raw).__name__}, not a state dict; save the model's "
            "state_dict() instead."
        )
    ignored: list[str] = []
    sd: Mapping = raw
    for wrapper in ("model", "state_dict"):
        if wrapper in sd and _is_tensor_dict(sd[wrapper]):
            ignored += [f"{k} (wrapper entry next to '{wrapper}')" for k in sd if k != wrapper]
            sd = sd[wrapper]
            break
    tensors: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if isinstance(value, torch.Tensor):
            tensors[str(key)] = value
        else:
            ignored.append(f"{key} (not a tensor: {type(value).__name__})")
    if not tensors:
        raise SamMedftError(f"{src} contains no tensors; it is not a model checkpoint.")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors, ignored


def detect_layout(
    sd: dict[str, torch.Tensor], src: Path
) -> tuple[str, dict[str, torch.Tensor], bool]:
    """Classify a state dict as "full" SAM or "encoder" only.

    Returns the layout, the state dict with segment-anything names, and whether the
    `image_encoder.` prefix was added (encoder weights saved from the bare ViT, e.g. MAE).
    """
    heads = {k.split(".", 1)[0] for k in sd}
    if "vision_encoder" in heads or "shared_image_embedding" in heads:
        raise SamMedftError(
            f"{src} already uses transformers SamModel names (vision_encoder.*); no conversion "
            "is needed: save it with SamModel.save_pretrained or load the folder directly."
        )
    if "image_encoder" in heads and heads & {"prompt_encoder", "mask_decoder"}:
        return "full", sd, False
    if "image_encoder" in heads:
        return "encoder", sd, False
    bare_tiny_vit = "patch_embed.seq.0.c.weight" in sd  # MobileSAM's TinyViT, unprefixed
    if bare_tiny_vit or "patch_embed.proj.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "encoder", {f"image_encoder.{k}": v for k, v in sd.items()}, True
    raise SamMedftError(
        f"{src} does not look like a segment-anything checkpoint: no image_encoder.*, "
        f"prompt_encoder.*, mask_decoder.* or encoder keys (blocks.*, patch_embed.*); "
        f"found e.g. {_preview(sorted(sd))}. Pass an original SAM/MedSAM .pth or encoder weights."
    )


# ----------------------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------------------

# Vision-config fields that the checkpoint's shapes determine.
_GEOMETRY = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_dim",
    "global_attn_indexes",
    "image_size",
    "patch_size",
    "window_size",
    "output_channels",
)
_NAMED = ("vit_b", "vit_l", "vit_h", "slimsam_50", "slimsam_77", "tiny")


def infer_vision_geometry(sd: Mapping[str, torch.Tensor]) -> dict:
    """Read the encoder's size from segment-anything shapes (fields that cannot be read
    are left out)."""
    p = "image_encoder."
    geo: dict = {}
    proj = sd.get(p + "patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4:
        geo["hidden_size"], geo["patch_size"] = int(proj.shape[0]), int(proj.shape[-1])
    blocks = sorted(
        {int(m[1]) for k in sd if (m := re.match(re.escape(p) + r"blocks\.(\d+)\.", k))}
    )
    if blocks:
        geo["num_hidden_layers"] = blocks[-1] + 1
    pos = sd.get(p + "pos_embed")
    grid = int(pos.shape[1]) if pos is not None and pos.ndim == 4 else None
    if grid and "patch_size" in geo:
        geo["image_size"] = grid * geo["patch_size"]
    rel = {b: sd.get(f"{p}blocks.{b}.attn.rel_pos_h") for b in blocks}
    rel = {b: t for b, t in rel.items() if t is not None and t.ndim == 2}
    if rel and "hidden_size" in geo:
        head_dim = int(next(iter(rel.values())).shape[1])
        if head_dim and geo["hidden_size"] % head_dim == 0:
            geo["num_attention_heads"] = geo["hidden_size"] // head_dim
    if rel and grid and len(rel) == len(blocks):
        geo["global_attn_indexes"] = [b for b, t in rel.items() if t.shape[0] == 2 * grid - 1]
        windows = {(int(t.shape[0]) + 1) // 2 for t in rel.values() if t.shape[0] != 2 * grid - 1}
        if len(windows) == 1:
            geo["window_size"] = windows.pop()
    lin1 = sd.get(p + "blocks.0.mlp.lin1.weight")
    if lin1 is not None:
        geo["mlp_dim"] = int(lin1.shape[0])
    neck = sd.get(p + "neck.0.weight")
    if neck is not None:
        geo["output_channels"] = int(neck.shape[0])
    return geo


def _geometry_of(config: SamConfig) -> dict:
    v = config.vision_config
    geo = {f: getattr(v, f) for f in _GEOMETRY}
    geo["global_attn_indexes"] = list(geo["global_attn_indexes"])
    return geo


def _disagreements(inferred: dict, config: SamConfig) -> list[str]:
    want = _geometry_of(config)
    return [f for f in _GEOMETRY if f in inferred and inferred[f] != want[f]]


def _name_of(inferred: dict) -> str | None:
    for name in _NAMED:
        if not _disagreements(inferred, registry.architecture_config(name)):
            return name
    return None


def _config_from_geometry(geo: dict) -> SamConfig:
    """A SamConfig for an encoder size that matches no named architecture (e.g. pruned)."""
    vision = {k: v for k, v in geo.items() if k in _GEOMETRY}
    prompt = {}
    if "image_size" in geo and "patch_size" in geo:
        prompt = dict(
            image_size=geo["image_size"],
            patch_size=geo["patch_size"],
            image_embedding_size=geo["image_size"] // geo["patch_size"],
        )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt)


def resolve_config(
    arch: str | SamConfig | None, inferred: dict, src: Path
) -> tuple[SamConfig, str]:
    """The SamConfig to convert into, and its name; `arch` must agree with the shapes."""
    if arch is None:
        name = _name_of(inferred)
        if name is not None:
            return registry.architecture_config(name), name
        return _config_from_geometry(inferred), "custom"
    if isinstance(arch, SamConfig):
        config, label = copy.deepcopy(arch), "the given SamConfig"
    else:
        try:
            config, label = registry.architecture_config(arch), f"--arch {arch}"
        except KeyError:
            raise SamMedftError(
                f"unknown --arch {arch!r}; use one of {', '.join(_NAMED)} "
                "(or leave --arch out to infer it from the checkpoint)."
            ) from None
    bad = _disagreements(inferred, config)
    if bad:
        want = _geometry_of(config)
        found = _name_of(inferred) or "a custom size"
        diffs = "; ".join(f"{f}: checkpoint {inferred[f]} vs {label} {want[f]}" for f in bad)
        raise SamMedftError(
            f"{src} does not match {label}: {diffs}. The checkpoint looks like {found}; "
            + (f"pass --arch {found} " if found in _NAMED else "")
            + "or leave --arch out to infer it."
        )
    return config, (arch if isinstance(arch, str) else "custom")


def model_class(config: SamConfig) -> type[SamModel]:
    """The model class a converted config builds (MobileSAM's TinyViT, or SAM's ViT)."""
    if isinstance(config, SamHQConfig):
        return SamHQModel
    return MobileSamModel if isinstance(config, MobileSamConfig) else SamModel


def resolve_mobile_config(arch: str | SamConfig | None, sd: Mapping[str, torch.Tensor],
                          src: Path) -> tuple[MobileSamConfig, str]:
    """The MobileSamConfig of a TinyViT checkpoint, and its name; `arch` must agree."""
    if isinstance(arch, str):
        try:
            arch = registry.architecture_config(arch)
        except KeyError:
            arch = None
        if not isinstance(arch, MobileSamConfig):
            raise SamMedftError(
                f"{src} holds a MobileSAM (TinyViT) image encoder, not the ViT of --arch; pass "
                "--arch mobilesam or leave --arch out to infer it from the checkpoint.")
    if arch is not None and not isinstance(arch, MobileSamConfig):
        raise SamMedftError(f"{src} holds a MobileSAM (TinyViT) encoder; pass a MobileSamConfig.")
    size = arch.vision_config.image_size if arch is not None else 1024
    try:
        inferred = convert_mobile.infer_config(sd, image_size=size)
    except KeyError as missing:
        raise SamMedftError(
            f"{src} holds a MobileSAM (TinyViT) encoder but lacks {missing.args[0]}; the "
            "checkpoint is incomplete or from another TinyViT layout: re-download mobile_sam.pt."
        ) from None
    found = convert_mobile.geometry(inferred)
    named = registry.architecture_config("mobilesam")
    if arch is None:
        if found == convert_mobile.geometry(named.vision_config):
            return named, "mobilesam"
        return MobileSamConfig(vision_config=inferred.to_dict()), "custom"
    want = convert_mobile.geometry(arch.vision_config)
    if found != want:
        diffs = "; ".join(f"{k}: checkpoint {found[k]} vs given {want[k]}"
                          for k in want if found[k] != want[k])
        raise SamMedftError(f"{src} does not match the given MobileSAM architecture: {diffs}; "
                            "leave --arch out to infer it.")
    name = "mobilesam" if want == convert_mobile.geometry(named.vision_config) else "custom"
    return copy.deepcopy(arch), name


def load_base_model(base_model: str) -> SamModel:
    """A registry name, Hub id or local transformers folder -> SamModel."""
    entry = lookup(base_model)
    if entry is not None and entry.is_tiny:
        return registry.build_tiny(name=base_model)
    if entry is not None and entry.hub_id is None:
        raise SamMedftError(
            f"--base-model {base_model} has no transformers checkpoint to load; convert "
            f"{entry.convert_from} first and pass the converted folder.")
    target = entry.hub_id if entry is not None else base_model
    local = Path(target).expanduser()
    looks_local = target.startswith(("/", ".", "~")) or target.count("/") > 1
    if looks_local and not local.is_dir():
        raise SamMedftError(
            f"--base-model folder {target} does not exist; pass a folder written by "
            "SamModel.save_pretrained, a registry name (e.g. sam-vit-base) or a Hub id."
        )
    target = str(local) if local.is_dir() else target
    try:
        config = AutoConfig.from_pretrained(target)  # small: check the family before weights
        if config.model_type not in ("sam", "mobile_sam"):
            raise SamMedftError(
                f"--base-model {base_model!r} is a {config.model_type} model; the decoder for "
                "SAM encoder weights must come from a plain SAM model (e.g. sam-vit-base) "
                "or a MobileSAM folder."
            )
        cls = MobileSamModel if config.model_type == "mobile_sam" else SamModel
        return cls.from_pretrained(target)
    except (OSError, ValueError, KeyError) as err:
        where = "local folder" if local.is_dir() else "Hub id"
        raise SamMedftError(
            f"could not load --base-model {base_model!r} ({where} {target}): "
            f"{str(err).strip().rstrip('.')}. Pass a registry name (e.g. sam-vit-base), a Hub "
            "id in your cache (or reachable online), or a folder written by "
            "SamModel.save_pretrained."
        ) from None


# ----------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What a conversion did; `str(report)` is the text the CLI prints."""

    src: str
    out_dir: str
    layout: str  # "full" | "encoder"
    arch: str
    converted: int = 0
    ignored: list[str] = field(default_factory=list)  # source entries not in SamModel
    from_base: list[str] = field(default_factory=list)  # SamModel keys taken from base_model
    base_model: str | None = None
    normalization: str = "sam"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"converted {self.src} -> {self.out_dir}",
            f"  layout: {'full SAM' if self.layout == 'full' else 'encoder only'}, "
            f"architecture: {self.arch}, normalisation: {self.normalization}",
            f"  weights converted: {self.converted}",
        ]
        if self.from_base:
            parts = sorted({k.split(".", 1)[0] for k in self.from_base})
            lines.append(
                f"  taken from base model {self.base_model}: {len(self.from_base)} weights "
                f"({', '.join(parts)})"
            )
        if self.ignored:
            lines.append(f"  ignored source entries ({len(self.ignored)}):")
            lines += [f"    - {k}" for k in self.ignored]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _preview(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" ... ({len(keys) - n} more)" if len(keys) > n else "")


def _check_out_dir(out: Path, overwrite: bool, src: Path | None = None) -> None:
    """`--overwrite` replaces only a folder an earlier `convert` wrote (it holds
    conversion.json), never a folder of the user's, and never the one holding the source."""
    if out.exists() and not out.is_dir():
        raise SamMedftError(f"output {out} exists and is a file; choose a folder path.")
    if src is not None and out.is_dir() and src.resolve().is_relative_to(out.resolve()):
        raise SamMedftError(
            f"output folder {out} holds the checkpoint {src} being converted; choose a new "
            "folder for the converted model.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / CONVERSION_FILE).is_file():
            raise SamMedftError(
                f"output folder {out} is not empty and was not written by `sam-medft convert` "
                f"(it has no {CONVERSION_FILE}); choose a new or empty folder.")
        if not overwrite:
            raise SamMedftError(
                f"output folder {out} holds an earlier conversion; choose another folder or "
                "pass --overwrite to replace it.")


def _guess_normalization(src: Path, base_model: str | None) -> str:
    """MedSAM was trained on [0, 1] min-max images, SAM on ImageNet mean/std."""
    entry = lookup(base_model) if base_model else None
    if "medsam" in src.name.lower() or (entry is not None and entry.normalization == "medsam"):
        return "medsam"
    return "sam"


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """Copy only views (of a flat buffer, a fused tensor) that safetensors cannot save."""
    t = t.contiguous()
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def _build(
    config: SamConfig,
    weights: dict[str, torch.Tensor],
    name: Callable[[str], str],
    src: Path,
    layout: str,
) -> SamModel:
    """SamModel(config) holding exactly `weights`: every key present, every shape right.

    `name` turns a SamModel key into the name the user's file uses, for the messages.
    """
    with torch.device("meta"):
        model = model_class(config)(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        part = "SAM" if layout == "full" else "encoder"
        raise SamMedftError(
            f"{src} lacks {len(missing)} {part} weights that SamModel needs: "
            f"{_preview([name(k) for k in missing])}. "
            "The checkpoint is incomplete or from another architecture; a model with "
            "random weights there is not written."
        )
    bad = [
        f"{name(k)} (-> {k}): checkpoint {tuple(weights[k].shape)} vs SamModel "
        f"{tuple(expected[k].shape)}"
        for k in expected
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    ]
    if bad:
        raise SamMedftError(
            f"{src} has weights with the wrong shape for this architecture: {'; '.join(bad[:8])}"
            + (f" ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
            + ". Check --arch (or leave it out to infer it) and that the file is a SAM checkpoint."
        )
    loaded = {k: _own_storage(weights[k].detach().to(expected[k].dtype)) for k in expected}
    model.load_state_dict(loaded, strict=True, assign=True)
    model.tie_weights()
    if isinstance(model, MobileSamModel):
        model.rebuild_buffers()
    stray = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if stray:  # a transformers version with extra non-persistent state: a bug here, not user's
        raise RuntimeError(f"SamModel tensors left uninitialised after conversion: {stray}")
    return model.eval()


def _processor(config: SamConfig, normalization: str):
    """A SamProcessor whose geometry matches the converted model (PIL backend, no
    torchvision needed)."""
    try:  # transformers >= 5: PIL backend class; torchvision is not required
        from transformers.models.sam.image_processing_pil_sam import (
            SamImageProcessorPil as ImageProcessor,
        )
    except ImportError:
        from transformers import SamImageProcessor as ImageProcessor

    size = config.vision_config.image_size
    low = config.prompt_encoder_config.image_embedding_size * 4
    kwargs = dict(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low},
    )
    if normalization == "medsam":  # [0, 1] inputs (per-image min-max in sam_medft itself)
        kwargs["do_normalize"] = False
    return SamProcessor(image_processor=ImageProcessor(**kwargs))


def _write_atomically(
    model: SamModel, config: SamConfig, out: Path, overwrite: bool, report: ConversionReport
) -> None:
    """Write into a temporary sibling folder, verify it, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        _processor(config, report.normalization).save_pretrained(tmp)
        (tmp / CONVERSION_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        reloaded = model_class(config).from_pretrained(tmp)
        want = model.state_dict()
        got = reloaded.state_dict()
        if set(got) != set(want) or any(not torch.equal(got[k], want[k]) for k in want):
            raise RuntimeError(f"the model written to {tmp} does not reload identically")
        del reloaded
        if out.exists():
            _check_out_dir(out, overwrite)  # re-check: it may have appeared meanwhile
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    arch: str | SamConfig | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    normalization: str | None = None,
) -> ConversionReport:
    """Convert an original SAM/MedSAM checkpoint or encoder-only weights to a SamModel folder.

    `arch`: "vit_b" | "vit_l" | "vit_h" | "tiny" (or another registry architecture) or a
    SamConfig; None infers it from the shapes. `base_model` supplies the prompt encoder and
    mask decoder for encoder-only weights. `normalization` ("sam" | "medsam") is recorded
    in config.json as `sam_medft_normalization` and in the processor config; None guesses
    "medsam" when the file name contains "medsam". Nothing is written unless it succeeds.
    """
    src, out = Path(src), Path(out_dir)
    if normalization not in (None, "sam", "medsam"):
        raise SamMedftError(f"unknown normalization {normalization!r}; use 'sam' or 'medsam'.")
    _check_out_dir(out, overwrite, src)
    raw = load_checkpoint(src)
    sd, wrapper_ignored = unwrap_state_dict(raw, src)
    layout, sd, prefixed = detect_layout(sd, src)
    if layout == "encoder" and base_model is None:
        raise SamMedftError(
            f"{src} holds only image-encoder weights; the prompt encoder and mask decoder "
            "must come from a SAM model: pass --base-model (e.g. --base-model sam-vit-base, "
            "a Hub id, or a local transformers folder)."
        )

    def source_name(key: str) -> str:  # report names as they are in the user's file
        return key.removeprefix("image_encoder.") if prefixed else key

    if layout == "encoder":
        stray = [k for k in sd if not k.startswith("image_encoder.")]
        sd = {k: v for k, v in sd.items() if k.startswith("image_encoder.")}
    else:
        stray = []
    mapped, origin, unknown = map_to_hf(sd)
    if convert_mobile.is_tiny_vit(sd):
        config, arch_name = resolve_mobile_config(arch, sd, src)
    else:
        config, arch_name = resolve_config(arch, infer_vision_geometry(sd), src)
    notes: list[str] = []
    ignored = [
        f"{source_name(k)} ({_ignore_reason(k)})"
        for k in unknown
    ]
    ignored += [f"{k} (not an image-encoder weight)" for k in stray] + wrapper_ignored
    from_base: list[str] = []

    if layout == "full":
        tokens = sd.get("mask_decoder.mask_tokens.weight")
        decoder = config.mask_decoder_config
        if tokens is not None and tokens.shape[0] - 1 != decoder.num_multimask_outputs:
            notes.append(
                f"mask decoder has {tokens.shape[0] - 1} multimask outputs (checkpoint), "
                f"not {decoder.num_multimask_outputs}; config follows the checkpoint"
            )
            decoder.num_multimask_outputs = int(tokens.shape[0] - 1)
        if HQ_MARKER in sd:  # SAM-HQ: its decoder also reads the ViT's early features
            config = registry.sam_hq_config(config)
            arch_name += " (SAM-HQ)"
        weights = mapped
    else:
        base = load_base_model(base_model)
        vision = config.vision_config
        if isinstance(config, MobileSamConfig):  # a TinyViT encoder on SAM's decoder
            merged = MobileSamConfig(
                vision_config=vision.to_dict(),
                prompt_encoder_config=base.config.prompt_encoder_config.to_dict(),
                mask_decoder_config=base.config.mask_decoder_config.to_dict())
        else:
            merged = copy.deepcopy(base.config)
            merged.vision_config = copy.deepcopy(vision)
        grid = vision.image_size // vision.patch_size
        prompt = merged.prompt_encoder_config
        if (prompt.image_embedding_size, prompt.image_size) != (grid, vision.image_size) or (
            vision.output_channels != merged.mask_decoder_config.hidden_size
        ):
            raise SamMedftError(
                f"the encoder in {src} ({vision.image_size}px input, {grid}x{grid}x"
                f"{vision.output_channels} embedding) does not fit --base-model {base_model} "
                f"({prompt.image_size}px, {prompt.image_embedding_size}x"
                f"{prompt.image_embedding_size}x{merged.mask_decoder_config.hidden_size}); "
                "pick a base model of the same input size."
            )
        config = merged
        weights = {
            k: v for k, v in base.state_dict().items() if not k.startswith("vision_encoder.")
        }
        from_base = sorted(weights)
        weights.update(mapped)

    normalization = normalization or _guess_normalization(src, base_model)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in mapped.values()})
    if dtypes != ["float32"]:
        notes.append(f"source weights are {', '.join(dtypes)}; written as float32")
    config.sam_medft_normalization = normalization
    model = _build(
        config,
        weights,
        lambda k: source_name(origin.get(k) or hf_key_to_original(k) or k),
        src,
        layout,
    )
    report = ConversionReport(
        src=str(src),
        out_dir=str(out),
        layout=layout,
        arch=arch_name,
        converted=len([k for k in mapped if k != _PE_SHARED]),
        ignored=ignored,
        from_base=from_base,
        base_model=base_model,
        normalization=normalization,
        notes=notes,
    )
    _write_atomically(model, config, out, overwrite, report)
    return report
