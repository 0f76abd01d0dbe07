"""Load a SAM-family base model with the class count the data needs.

Automatic (prompt-free) mode predicts `num_classes` masks (background included) from
`num_classes` mask tokens. A pretrained checkpoint has 3 multimask tokens; when the count
differs, the tokens, hypernetwork MLPs and IoU head are re-initialised (transformers'
`ignore_mismatched_sizes`) and the PEFT builders make them trainable and saved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, PreTrainedModel, SamHQModel, SamModel

from sam_medft.errors import SamMedftError
from sam_medft.models import registry

log = logging.getLogger(__name__)

MODEL_CLASSES = {"sam": SamModel, "sam_hq": SamHQModel}


@dataclass(frozen=True)
class BaseModelSpec:
    """What a recipe's `model.name` resolves to."""

    name: str  # as written in the recipe
    source: str  # "tiny", a Hub id, or a local folder
    normalization: str
    is_tiny: bool = False


def resolve_model_name(name: str, normalization: str | None = None) -> BaseModelSpec:
    """Registry name, local folder or Hub id -> where to load from. Checks syntax only."""
    entry = registry.lookup(name)
    if entry is not None:
        return BaseModelSpec(name, entry.hub_id or "tiny", normalization or entry.normalization,
                             is_tiny=entry.hub_id is None)
    if Path(name).expanduser().is_dir():
        return BaseModelSpec(name, str(Path(name).expanduser()), normalization or _folder_norm(name))
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise SamMedftError(_unknown_model_message(name, "it is not a local folder either")) from None
    if "/" not in name:
        raise SamMedftError(_unknown_model_message(name, "a Hub id looks like owner/name"))
    by_id = {e.hub_id: e for e in registry.REGISTRY.values() if e.hub_id}
    norm = normalization or (by_id[name].normalization if name in by_id else "sam")
    return BaseModelSpec(name, name, norm)


def load_base_model(spec: BaseModelSpec, num_classes: int, *, revision: str | None = None,
                    attn_implementation: str | None = None,
                    device_map: dict | str | None = None,
                    max_memory: dict | None = None) -> PreTrainedModel:
    """Load the base model with `num_classes` output masks (fresh heads if the count differs)."""
    if spec.is_tiny:
        return registry.build_tiny(num_classes)
    try:
        config = AutoConfig.from_pretrained(spec.source, revision=revision)
    except (OSError, ValueError) as e:
        raise SamMedftError(_load_failure(spec, e)) from None
    cls = MODEL_CLASSES.get(config.model_type)
    if cls is None:
        raise SamMedftError(
            f"model {spec.name!r} is a {config.model_type!r} model; sam_medft fine-tunes "
            f"{', '.join(MODEL_CLASSES)} models (SamModel, SamHQModel). SAM 2/3 are not supported yet.")
    mismatch = config.mask_decoder_config.num_multimask_outputs != num_classes
    config.mask_decoder_config.num_multimask_outputs = num_classes
    kwargs = dict(config=config, revision=revision, ignore_mismatched_sizes=mismatch)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs.update(device_map=device_map, max_memory=max_memory)
    try:
        model = cls.from_pretrained(spec.source, **kwargs)
    except OSError as e:
        raise SamMedftError(_load_failure(spec, e)) from None
    if mismatch:
        log.info("%s: new mask tokens, hypernetwork MLPs and IoU head for %d classes",
                 spec.name, num_classes)
    return model.eval()


def model_geometry(model: torch.nn.Module):
    """The SamGeometry a (possibly PEFT-wrapped) model expects."""
    from sam_medft.data.transforms import SamGeometry

    cfg = unwrap(model).config
    return SamGeometry(input_size=cfg.vision_config.image_size,
                       mask_size=4 * cfg.prompt_encoder_config.image_embedding_size)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The SamModel inside PEFT / DDP / compile wrappers."""
    m = model
    for _ in range(6):
        if hasattr(m, "module"):
            m = m.module
        elif hasattr(m, "_orig_mod"):
            m = m._orig_mod
        elif hasattr(m, "get_base_model"):
            m = m.get_base_model()
        else:
            break
    return m


def _folder_norm(folder: str) -> str:
    """A converted folder records its preset (`sam-medft convert` writes it in config.json)."""
    import json

    p = Path(folder) / "config.json"
    if p.is_file():
        return json.loads(p.read_text()).get("sam_medft_normalization", "sam")
    return "sam"


def _unknown_model_message(name: str, why: str) -> str:
    names = ", ".join(registry.REGISTRY)
    return (f"unknown model.name {name!r} ({why}). Use a registry name ({names}), "
            f"a Hub id such as facebook/sam-vit-base, or a local transformers folder.")


def _load_failure(spec: BaseModelSpec, err: Exception) -> str:
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    hint = ("HF_HUB_OFFLINE is set and the model is not in the local cache"
            if offline else "check the id, your network and `hf auth login` for gated models")
    return (f"could not load model {spec.name!r} from {spec.source!r}: {first}. {hint}; "
            f"or use a local folder (model.name=/path/to/model) or model.name=tiny for a "
            f"test run.")
