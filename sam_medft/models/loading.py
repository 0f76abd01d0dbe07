"""Load a SAM-family base model with the class count the data needs.

Automatic (prompt-free) mode predicts `num_classes` masks (background included) from
`num_classes` mask tokens. A pretrained checkpoint has 3 multimask tokens; when the count
differs, the tokens, hypernetwork MLPs and IoU head are re-initialised (transformers'
`ignore_mismatched_sizes`) and the PEFT builders make them trainable and saved.

`model.name` is a registry name, a local folder or a Hub id `owner/name` (the rule for
telling a path from a Hub id is `sam_medft.hub.looks_like_path`). A Hub model is asked for
once before transformers downloads it: the client would retry a missing network or a
failing Hub for half a minute (5 retries, each warning printed), where one retry a second
later and one clear message are enough.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, PreTrainedModel, SamHQModel, SamModel

from sam_medft.data.transforms import SamGeometry
from sam_medft.errors import SamMedftError
from sam_medft.hub import (
    TRANSPORT_ERRORS,
    hub_errors,
    looks_like_path,
    missing_folder_message,
    offline_mode,
)
from sam_medft.model_names import REGISTRY, lookup
from sam_medft.models.mobile_sam import MobileSamModel
from sam_medft.models.registry import (
    RANDOM_PREFIX,
    build_random,
    build_tiny,
    random_base_name,
    random_init_names,
)
from sam_medft.models.sam_hq_decoder import use_official_decoder

log = logging.getLogger(__name__)

MODEL_CLASSES = {"sam": SamModel, "sam_hq": SamHQModel, "mobile_sam": MobileSamModel}


@dataclass(frozen=True)
class BaseModelSpec:
    """What a recipe's `model.name` resolves to."""

    name: str  # as written in the recipe
    source: str  # a built-in test model's name ("tiny"), a Hub id, or a local folder
    normalization: str
    is_tiny: bool = False
    random_init: bool = False  # the registry architecture with seeded random weights


def resolve_model_name(name: str, normalization: str | None = None, *,
                       random_init: bool = False) -> BaseModelSpec:
    """Registry name, local folder or Hub id -> where to load from. No network: a string that
    reads as a path (`./x`, `a/b/c`, `runs/typo` when `runs/` exists) must be a folder.

    `random_init` (or a name `random:<name>`, as an adapter records such a base): the
    registry architecture with seeded random weights, built without files or network."""
    arch = random_base_name(name)
    if arch is not None or random_init:
        return _random_spec(arch or name, normalization)
    entry = lookup(name)
    if entry is not None and entry.hub_id is None and not entry.is_tiny:
        raise SamMedftError(
            f"model.name {name!r} has no transformers checkpoint on the Hub: download "
            f"{entry.convert_from}, run `sam-medft convert mobile_sam.pt OUT_DIR`, then use "
            f"model.name=OUT_DIR. {RANDOM_INIT_HINT}")
    if entry is not None:
        return BaseModelSpec(name, entry.hub_id or name, normalization or entry.normalization,
                             is_tiny=entry.is_tiny)
    if Path(name).expanduser().is_dir():
        return BaseModelSpec(name, str(Path(name).expanduser()), normalization or _folder_norm(name))
    if Path(name).expanduser().is_file():
        raise SamMedftError(
            f"model.name {name!r} is a file; a model is a transformers folder: convert an "
            f"original .pth checkpoint with `sam-medft convert {name} OUT_DIR`, then use "
            f"model.name=OUT_DIR")
    if "/" in name and looks_like_path(name):
        names = ", ".join(REGISTRY)
        raise SamMedftError(missing_folder_message(
            "model", name, f"Check the path; model.name is a local transformers folder, a "
            f"registry name ({names}) or a Hub id owner/name."))
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise SamMedftError(_unknown_model_message(name, "it is not a local folder either")) from None
    if "/" not in name:
        raise SamMedftError(_unknown_model_message(name, "a Hub id looks like owner/name"))
    by_id = {e.hub_id: e for e in REGISTRY.values() if e.hub_id}
    norm = normalization or (by_id[name].normalization if name in by_id else "sam")
    return BaseModelSpec(name, name, norm)


def load_base_model(spec: BaseModelSpec, num_classes: int, *, revision: str | None = None,
                    attn_implementation: str | None = None,
                    device_map: dict | str | None = None,
                    max_memory: dict | None = None) -> PreTrainedModel:
    """Load the base model with `num_classes` output masks (fresh heads if the count differs)."""
    if spec.is_tiny:
        return build_tiny(num_classes, spec.source)
    if spec.random_init:
        arch = random_base_name(spec.source) or spec.source
        entry = lookup(arch)
        log.warning("model %s: RANDOM weights (model.random_init=true, seed-determined), no "
                    "pretrained checkpoint: for dry runs, benchmarks and smoke tests only; "
                    "the adapter records the base as %s", arch, spec.source)
        return build_random(arch, num_classes, entry.family if entry else "sam")
    try:
        cache_only = False if Path(spec.source).is_dir() else check_hub_model(spec, revision)
    except SamMedftError as e:
        if spec.name not in random_init_names():
            raise
        raise SamMedftError(f"{str(e).rstrip('.')}. {RANDOM_INIT_HINT}") from None
    try:
        config = AutoConfig.from_pretrained(spec.source, revision=revision,
                                            local_files_only=cache_only)
    except (OSError, ValueError) as e:
        raise SamMedftError(_load_failure(spec, e)) from None
    cls = MODEL_CLASSES.get(config.model_type)
    if cls is None:
        raise SamMedftError(
            f"model {spec.name!r} is a {config.model_type!r} model; sam_medft fine-tunes "
            f"{', '.join(MODEL_CLASSES)} models (SamModel, SamHQModel). SAM 2/3 are not supported yet.")
    mismatch = config.mask_decoder_config.num_multimask_outputs != num_classes
    config.mask_decoder_config.num_multimask_outputs = num_classes
    kwargs = dict(config=config, revision=revision, ignore_mismatched_sizes=mismatch,
                  local_files_only=cache_only)
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
    return use_official_decoder(model).eval()


RANDOM_INIT_HINT = ("For a smoke test, benchmark or dry run without the weights: "
                    "model.random_init=true builds this architecture with random weights "
                    "and needs no network.")
HUB_RETRY_WAIT_S = 1.0  # one retry, this long after a 5xx or a network error


def check_hub_model(spec: BaseModelSpec, revision: str | None = None) -> bool:
    """Ask the Hub for the model's config.json once (one retry a second later for a server or
    network error), so a missing, private, gated or unreachable model is one message in
    seconds. Returns True when the Hub cannot be reached but the model is in the Hub cache:
    then it must load with `local_files_only` (transformers' probes for optional files would
    each be retried 5 times). Skipped (False) with HF_HUB_OFFLINE=1."""
    if offline_mode():
        return False
    where = f"loading model {spec.name!r}"
    url = hf_hub_url(spec.source, "config.json", revision=revision)
    with hub_errors(where, spec.source, constants.ENDPOINT, push=False):
        for attempt in (1, 2):
            try:
                get_hf_file_metadata(url)
                return False
            except RemoteEntryNotFoundError:
                raise SamMedftError(
                    f"{where}: Hub repo {spec.source!r} has no config.json, so it is not a "
                    f"transformers model: give a SAM model repo (e.g. facebook/sam-vit-base), or "
                    f"convert an original .pth checkpoint with `sam-medft convert`") from None
            except (HfHubHTTPError, *TRANSPORT_ERRORS) as e:
                status = getattr(getattr(e, "response", None), "status_code", None)
                if isinstance(e, HfHubHTTPError) and (status is None or status < 500):
                    raise  # not found, private, gated, bad revision: no retry helps
                cached = try_to_load_from_cache(spec.source, "config.json", revision=revision)
                if isinstance(cached, str):
                    log.warning("%s: the Hub cannot be reached (%s); using the copy in the Hub "
                                "cache", where, f"HTTP {status}" if status else e.__class__.__name__)
                    return True
                if attempt == 2:
                    raise
                what = (f"the Hub answered {status}" if status is not None else
                        f"no answer from {constants.ENDPOINT} ({e.__class__.__name__})")
                log.warning("%s: %s; trying once more in %.0f s", where, what, HUB_RETRY_WAIT_S)
            time.sleep(HUB_RETRY_WAIT_S)


def model_geometry(model: torch.nn.Module):
    """The SamGeometry a (possibly PEFT-wrapped) model expects."""
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


def trainable_tensors(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None,
                      ) -> dict[str, torch.Tensor]:
    """The trainable parameters by `model`'s names, as contiguous CPU tensors: what checkpoints
    and vanilla adapters save (never the frozen base). `state_dict`: take the values from
    this full state dict instead (FSDP2's gathered one; the parameters are shards)."""
    values = dict(model.named_parameters()) if state_dict is None else state_dict
    return {n: values[n].detach().cpu().contiguous()
            for n, p in model.named_parameters() if p.requires_grad}


def _random_spec(name: str, normalization: str | None) -> BaseModelSpec:
    if name == "tiny":  # already random and seeded
        return BaseModelSpec("tiny", "tiny", normalization or "sam", is_tiny=True)
    if name not in random_init_names():
        raise SamMedftError(
            f"model.random_init=true needs a model.name whose architecture sam_medft knows "
            f"({', '.join(random_init_names())}, tiny); {name!r} is not one of them")
    entry = lookup(name)
    norm = normalization or (entry.normalization if entry else "sam")
    return BaseModelSpec(name, RANDOM_PREFIX + name, norm, random_init=True)


def _folder_norm(folder: str) -> str:
    """A converted folder records its preset (`sam-medft convert` writes it in config.json)."""
    p = Path(folder) / "config.json"
    if p.is_file():
        return json.loads(p.read_text()).get("sam_medft_normalization", "sam")
    return "sam"


def _unknown_model_message(name: str, why: str) -> str:
    names = ", ".join(REGISTRY)
    return (f"unknown model.name {name!r} ({why}). Use a registry name ({names}), "
            f"a Hub id such as facebook/sam-vit-base, or a local transformers folder.")


def _load_failure(spec: BaseModelSpec, err: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    hint = ("HF_HUB_OFFLINE is set and the model is not in the local cache"
            if offline else "check the id, your network and `hf auth login` for gated models")
    smoke = f" {RANDOM_INIT_HINT}" if spec.name in random_init_names() else ""
    return (f"could not load model {spec.name!r} from {spec.source!r}: {first}. {hint}; "
            f"or use a local folder (model.name=/path/to/model) or model.name=tiny for a "
            f"test run.{smoke}")
