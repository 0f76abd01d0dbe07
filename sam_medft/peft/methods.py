"""Fine-tuning methods: which parameters train, and how they are saved.

The study's grid is method x scope: {vanilla, lora, adapter} x {decoder, encdec}. Every
PEFT method (LoRA & friends, the bottleneck adapter) goes through `peft`, so the result
saves and loads as a PEFT adapter. `vanilla` trains real model weights, so it is not a
PEFT adapter: its trainable tensors are saved by name (`trainable_model.safetensors`).

The class-dependent decoder heads (mask tokens, hypernetwork MLPs, IoU token and head) are
always trainable and saved: with a new class count they are freshly initialised, and the
study's code leaving them random and frozen is the bug not to repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from sam_medft.config import PeftSettings
from sam_medft.errors import SamMedftError
from sam_medft.models.loading import unwrap

# PEFT methods that are known not to work on SAM (checked on the tiny model, PEFT 0.21):
# the SAM vision linears see 4-D (B, H, W, C) inputs and the decoder 3-D ones.
KNOWN_BROKEN = {
    "oft": "OFT treats 4-D inputs as convolution inputs; SAM's vision linears get (B,H,W,C)",
    "gralora": "GraLoRA assumes 3-D (batch, tokens, features) inputs",
    "shadow": "Shadow needs a top-level num_hidden_layers in the model config",
}


@dataclass
class MethodInfo:
    method: str
    scope: str
    trainable: int
    total: int
    is_peft: bool


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Names (suffixes) of the class-dependent decoder heads, for `modules_to_save`."""
    dec = unwrap(model).mask_decoder
    names = ["mask_tokens", "iou_token", "iou_prediction_head"]
    names += [f"output_hypernetworks_mlps.{i}" for i in range(len(dec.output_hypernetworks_mlps))]
    return names


def encoder_layer_ids(model: torch.nn.Module, layers) -> list[int]:
    depth = len(unwrap(model).vision_encoder.layers)
    if layers == "all":
        return list(range(depth))
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise SamMedftError(f"peft.layers {bad} out of range: this encoder has blocks 0..{depth - 1} "
                            f"(use peft.layers=all or a list within that range)")
    return sorted(set(layers))


def default_targets(model: torch.nn.Module, settings: PeftSettings) -> str:
    """LoRA targets as one full-match regex (a list would also hit the decoder MLPs).

    Decoder: q/v projections of every decoder attention (as the study, from SAMed).
    Encoder: the fused qkv projection of the selected blocks (q, k and v all get a delta;
    the study's SAMed code adapts q and v only).
    """
    dec = r"mask_decoder\.transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)|final_attn_token_to_image)\.(q_proj|v_proj)"
    if settings.scope == "decoder":
        return rf".*{dec}"
    ids = "|".join(str(i) for i in encoder_layer_ids(model, settings.layers))
    enc = rf"vision_encoder\.layers\.({ids})\.attn\.qkv"
    return rf".*({dec}|{enc})"


def apply_method(model: torch.nn.Module, settings: PeftSettings) -> tuple[torch.nn.Module, MethodInfo]:
    """Freeze/wrap `model` for the method and scope in `settings`."""
    method = settings.method
    if method == "vanilla":
        model = _apply_vanilla(model, settings.scope)
    elif method == "adapter":
        from sam_medft.peft.bottleneck import BottleneckSettings, apply_bottleneck

        layers = encoder_layer_ids(model, settings.layers) if settings.scope == "encdec" else []
        bs = BottleneckSettings(ratio=settings.bottleneck_ratio, activation=settings.activation,
                                mlp_scale=settings.mlp_scale, encoder_layers=layers, decoder=True)
        model = apply_bottleneck(model, bs, modules_to_save=head_module_names(model))
    else:
        model = get_peft_model(model, build_peft_config(model, settings))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, MethodInfo(method, settings.scope, trainable, total, isinstance(model, PeftModel))


def build_peft_config(model: torch.nn.Module, settings: PeftSettings) -> peft.PeftConfig:
    """LoRA (with DoRA/rsLoRA switches) or any other PEFT type named in `peft.method`."""
    method = settings.method
    if method in KNOWN_BROKEN:
        raise SamMedftError(f"peft.method={method} does not work on SAM: {KNOWN_BROKEN[method]}. "
                            f"Use lora, adapter, loha, lokr, ia3 or another listed in the README.")
    targets = settings.target_modules or default_targets(model, settings)
    common = dict(target_modules=targets, modules_to_save=head_module_names(model))
    if method in ("lora", "dora", "rslora"):
        return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                          use_dora=settings.use_dora or method == "dora",
                          use_rslora=settings.use_rslora or method == "rslora",
                          **common, **settings.extra)
    mapping = peft.PEFT_TYPE_TO_CONFIG_MAPPING
    key = method.upper()
    if key not in mapping:
        known = sorted(k.lower() for k in mapping)
        raise SamMedftError(f"peft.method={method!r} is not a PEFT method. Use vanilla, lora, adapter "
                            f"or one of: {', '.join(known)}")
    cls = mapping[key]
    kwargs = dict(common, **settings.extra)
    fields = getattr(cls, "__dataclass_fields__", {})
    if "r" in fields and "r" not in settings.extra:
        kwargs["r"] = settings.r
    if method == "ia3" and "feedforward_modules" not in kwargs:
        kwargs["feedforward_modules"] = []
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SamMedftError(f"peft.method={method}: invalid settings {sorted(kwargs)}: {e}. Pass its own "
                            f"keys under peft.extra (see the PEFT docs for {cls.__name__}).") from None


def _apply_vanilla(model: torch.nn.Module, scope: str) -> torch.nn.Module:
    """Vanilla: real weights train. decoder = the mask decoder; encdec = everything."""
    for name, p in model.named_parameters():
        p.requires_grad_(scope == "encdec" or name.startswith("mask_decoder."))
    return model


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a vanilla model, by their SamModel names."""
    m = unwrap(model)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items() if k in names}


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    """True when no vision-encoder parameter trains (decoder-only scopes): the encoder can
    then run under no_grad and its embeddings can be cached."""
    m = unwrap(model)
    return not any(p.requires_grad for p in m.vision_encoder.parameters())
