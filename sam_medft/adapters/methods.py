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
from peft.config import PromptLearningConfig

from sam_medft.adapters.bottleneck import BottleneckSettings, apply_bottleneck
from sam_medft.adapters.compat import peft_call
from sam_medft.config import PeftSettings
from sam_medft.errors import SamMedftError
from sam_medft.models.loading import unwrap
from sam_medft.models.registry import model_class

#: the class-dependent heads of SAM's mask decoder (`mask_decoder.<name>`): always trained
#: and saved; `output_hypernetworks_mlps` is a list with one MLP per mask token
DECODER_HEADS = ("mask_tokens", "iou_token", "iou_prediction_head", "output_hypernetworks_mlps")

# PEFT methods that are known not to work on SAM (checked on the tiny model, PEFT 0.21):
# the SAM vision linears see 4-D (B, H, W, C) inputs and the decoder 3-D ones.
# tests/adapters/test_methods.py checks that they still fail, so a PEFT fix shows up there.
KNOWN_BROKEN = {
    "oft": "OFT treats 4-D inputs as convolution inputs; SAM's vision linears get (B,H,W,C)",
    "gralora": "GraLoRA assumes 3-D (batch, tokens, features) inputs",
    "shadow": "Shadow needs a top-level num_hidden_layers in the model config",
}
# PEFT types that are not layer adapters, so they have no meaning for a SAM model.
NOT_APPLICABLE = {
    "adaption_prompt": "it is the LLaMA-Adapter (prompts in a decoder language model)",
    "xlora": "it mixes LoRA experts of a language model",
    "trainable_tokens": "it trains token embeddings of a language model",
    "poly": "it routes per-task LoRA modules by task id",
    "adalora": "it needs update_and_allocate() every step, which this trainer does not call "
    "(it would silently train at a fixed rank); use lora",
}
# Our own names: `adapter` is the bottleneck adapter, dora/rslora are LoRA switches.
OWN_METHODS = ("vanilla", "lora", "adapter", "dora", "rslora")


@dataclass
class MethodInfo:
    method: str
    scope: str
    trainable: int
    total: int  # parameters of the fine-tuned model (PEFT's frozen head originals not counted)
    is_peft: bool


def known_methods() -> list[str]:
    """Every `peft.method` value that can work on SAM: ours, then PEFT's layer adapters."""
    peft_types = []
    for key, cls in peft.PEFT_TYPE_TO_CONFIG_MAPPING.items():
        name = str(key.value if hasattr(key, "value") else key).lower()
        if name in KNOWN_BROKEN or name in NOT_APPLICABLE or name in OWN_METHODS:
            continue
        if not issubclass(cls, PromptLearningConfig):
            peft_types.append(name)
    return list(OWN_METHODS) + sorted(peft_types)


def check_method(method: str) -> None:
    """A clear error for a method name that cannot work, before any model is loaded."""
    method = method.lower()
    if method in OWN_METHODS:
        return
    fix = "use lora, adapter or vanilla, or another layer adapter"
    if method in KNOWN_BROKEN:
        raise SamMedftError(
            f"peft.method={method} does not work on SAM: {KNOWN_BROKEN[method]}; {fix} "
            "(e.g. loha, lokr, ia3, dora, boft)"
        )
    cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING.get(method.upper())
    if cls is None:
        raise SamMedftError(
            f"peft.method={method!r} is not a known method. Use one of: "
            f"{', '.join(known_methods())}"
        )
    if method in NOT_APPLICABLE or issubclass(cls, PromptLearningConfig):
        why = NOT_APPLICABLE.get(method, "it is a prompt-learning method for token sequences")
        raise SamMedftError(
            f"peft.method={method} does not apply to SAM: {why}; {fix} (e.g. loha, lokr, ia3)"
        )


def check_settings(settings: PeftSettings, encoder_depth: int | None = None) -> None:
    """Validate method and encoder blocks before loading weights (`encoder_depth` from
    `registry.architecture_config(name).vision_config.num_hidden_layers` when known)."""
    check_method(settings.method)
    if encoder_depth is not None and settings.scope == "encdec":
        _layer_ids(encoder_depth, settings.layers)


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Names (suffixes) of the class-dependent decoder heads, for `modules_to_save`."""
    dec = unwrap(model).mask_decoder
    names = []
    for head in DECODER_HEADS:
        module = getattr(dec, head)
        if isinstance(module, torch.nn.ModuleList):  # one entry per mask token
            names += [f"{head}.{i}" for i in range(len(module))]
        else:
            names.append(head)
    return names


def encoder_layer_ids(model: torch.nn.Module, layers) -> list[int]:
    """The selected encoder blocks of `model`; out-of-range blocks are a user error (clipping
    would silently run a different experiment than the recipe says)."""
    return _layer_ids(len(unwrap(model).vision_encoder.layers), layers)


def _layer_ids(depth: int, layers) -> list[int]:
    if layers == "all":
        return list(range(depth))
    if not layers:
        raise SamMedftError(
            "peft.layers is empty but peft.scope is encdec: no encoder block would train; "
            "list blocks (e.g. peft.layers=[0,1,10,11]), use peft.layers=all, or "
            "peft.scope=decoder"
        )
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise SamMedftError(
            f"peft.layers {bad} out of range: this encoder has blocks 0..{depth - 1} "
            f"(use peft.layers=all or a list within that range)"
        )
    return sorted(set(layers))


def default_targets(model: torch.nn.Module, settings: PeftSettings) -> str:
    """LoRA targets as one full-match regex (a list would also hit the decoder MLPs).

    Decoder: q/v projections of every decoder attention (as the study, from SAMed).
    Encoder: the fused qkv projection of the selected blocks (q, k and v all get a delta;
    the study's SAMed code adapts q and v only).
    """
    attn = r"(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)|final_attn_token_to_image)"
    dec = rf"mask_decoder\.transformer\.{attn}\.(q_proj|v_proj)"
    if settings.scope == "decoder":
        return rf".*{dec}"
    ids = "|".join(str(i) for i in encoder_layer_ids(model, settings.layers))
    enc = rf"vision_encoder\.layers\.({ids})\.attn\.qkv"
    return rf".*({dec}|{enc})"


def apply_method(
    model: torch.nn.Module, settings: PeftSettings
) -> tuple[torch.nn.Module, MethodInfo]:
    """Freeze/wrap `model` for the method and scope in `settings`."""
    method = settings.method
    check_method(method)
    if method == "vanilla":
        model = apply_vanilla(model, settings.scope)
    elif method == "adapter":
        layers = encoder_layer_ids(model, settings.layers) if settings.scope == "encdec" else []
        bs = BottleneckSettings.from_recipe(settings, encoder_layers=layers)
        heads = [f"mask_decoder.{n}" for n in head_module_names(model)]  # it wants full names
        model = apply_bottleneck(model, bs, modules_to_save=heads)
    else:
        config = build_peft_config(model, settings)
        try:
            with peft_call():
                model = get_peft_model(model, config)
        except (TypeError, ValueError, ImportError) as e:
            raise SamMedftError(
                f"peft.method={method} could not wrap the model: {str(e).rstrip('.')}; check "
                f"peft.target_modules / peft.extra, or use lora or adapter"
            ) from None
    trainable, total = parameter_counts(model)
    return model, MethodInfo(method, settings.scope, trainable, total, isinstance(model, PeftModel))


def meta_model(config, mask_outputs: int, settings: PeftSettings,
               ) -> tuple[torch.nn.Module, MethodInfo]:
    """`config`'s model (SamModel, MobileSamModel) with `mask_outputs` mask tokens and the
    method applied, on the meta device: shapes without memory or download, for parameter
    counts and memory plans."""
    config.mask_decoder_config.num_multimask_outputs = mask_outputs
    with torch.device("meta"):  # the method's new tensors too
        return apply_method(model_class(config)(config), settings)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) of the fine-tuned model. PEFT keeps a frozen original next to each
    trained head copy (`modules_to_save`); the copy replaces it, so it is not counted."""
    trainable = total = 0
    for name, p in model.named_parameters():
        if ".original_module." in name:
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def build_peft_config(model: torch.nn.Module, settings: PeftSettings) -> peft.PeftConfig:
    """LoRA (with DoRA/rsLoRA switches) or any other PEFT type named in `peft.method`.

    `peft.r` / `peft.alpha` fill the method's own rank / alpha fields when it has them;
    `peft.extra` is passed through last, so it overrides everything.
    """
    method = settings.method
    check_method(method)
    targets = settings.target_modules or default_targets(model, settings)
    kwargs: dict = dict(target_modules=targets, modules_to_save=head_module_names(model))
    if method in ("lora", "dora", "rslora"):
        cls = LoraConfig
        kwargs |= dict(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            use_dora=settings.use_dora or method == "dora",
            use_rslora=settings.use_rslora or method == "rslora",
        )
    else:
        cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING[method.upper()]
        fields = getattr(cls, "__dataclass_fields__", {})
        if "r" in fields:
            kwargs["r"] = settings.r
        if "alpha" in fields:  # LoHa, LoKr
            kwargs["alpha"] = settings.alpha
        if method == "ia3":
            kwargs["feedforward_modules"] = []
    kwargs |= settings.extra
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SamMedftError(
            f"peft.method={method}: invalid settings {sorted(kwargs)}: {str(e).rstrip('.')}. "
            f"Pass its own keys under peft.extra (see the PEFT docs for {cls.__name__})."
        ) from None


def apply_vanilla(model: torch.nn.Module, scope: str) -> torch.nn.Module:
    """Vanilla: real weights train. decoder = the mask decoder; encdec = everything."""
    for name, p in model.named_parameters():
        p.requires_grad_(scope == "encdec" or name.startswith("mask_decoder."))
    return model


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    """True when no vision-encoder parameter trains (decoder-only scopes): the encoder can
    then run under no_grad and its embeddings can be cached."""
    m = unwrap(model)
    return not any(p.requires_grad for p in m.vision_encoder.parameters())
