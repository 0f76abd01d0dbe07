"""The fine-tuned artifact: an `adapter/` folder that rebuilds the model on any machine.

`sam_medft.json` (`AdapterMeta`, defined with the other run-folder paths in
`sam_medft.runs`, torch-free) says what the base model is, how many classes there are, their
names and raw label values, the method, the preprocessing, the prompt mode and multimask; the
weights are a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) or, for vanilla
fine-tuning, the trainable tensors by name (`trainable_model.safetensors`). The frozen base is
never saved. Here, above the method builders: loading rebuilds the method the meta names.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from sam_medft.adapters.bottleneck import load_bottleneck
from sam_medft.adapters.compat import peft_call
from sam_medft.adapters.methods import apply_vanilla
from sam_medft.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sam_medft.errors import SamMedftError
from sam_medft.files import apply_umask_modes, disk_error, make_temp_dir
from sam_medft.hub import is_hub_run, resolve_run
from sam_medft.models.encoder_weights import load_encoder_weights
from sam_medft.models.loading import load_base_model, resolve_model_name, trainable_tensors, unwrap
from sam_medft.models.registry import RANDOM_INIT_SEED, seeded_model
from sam_medft.runs import ADAPTER_DIR, META_FILE, AdapterMeta, find_adapter_folder

log = logging.getLogger("sam_medft.adapters")

VANILLA_FILE = "trainable_model.safetensors"
# Setup 3: the self-supervised encoder the run started from (`model.encoder_weights`); it is
# not the named base, so the artifact carries it (`vision_encoder.*` tensors)
BASE_ENCODER_FILE = "base_encoder.safetensors"


def save_adapter(model: torch.nn.Module, meta: AdapterMeta, out_dir: Path, *,
                 state_dict: dict[str, torch.Tensor] | None = None,
                 base_encoder: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter folder atomically (temp folder, then rename over the old one), with
    the modes the user's umask gives. A full disk or an unwritable folder is one
    SamMedftError; the temporary folder is removed and the previous adapter stays as it was.

    `state_dict`: the model's full state when its parameters are sharded (FSDP2 gathers it).
    `base_encoder`: the pretrained encoder the base was given (`model.encoder_weights`)."""
    out_dir = Path(out_dir)
    old = out_dir.with_name(out_dir.name + ".old")
    tmp = None
    try:
        _finish_interrupted_swap(out_dir, old)
        tmp = make_temp_dir(out_dir.parent, prefix=f".{out_dir.name}.tmp-")
        if isinstance(model, PeftModel):
            model.save_pretrained(tmp, state_dict=state_dict)
            (tmp / "README.md").unlink(missing_ok=True)  # PEFT's stub card; `push` writes ours
        else:
            tensors = trainable_tensors(unwrap(model) if state_dict is None else model, state_dict)
            save_file(tensors, str(tmp / VANILLA_FILE))
        if base_encoder is not None:
            save_file(base_encoder, str(tmp / BASE_ENCODER_FILE))
        (tmp / META_FILE).write_text(meta.to_json())
        _write_processor_config(tmp, meta)
        apply_umask_modes(tmp)  # safetensors writes 0600 files
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        # asked before the clean-up: torch's and safetensors' write errors hide the cause,
        # and a probe write tells a full disk only while it is still full
        friendly = disk_error(e, tmp or out_dir.parent, f"the adapter {out_dir}")
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if friendly is not None:
            raise friendly from e
        raise
    return out_dir


def _finish_interrupted_swap(out_dir: Path, old: Path) -> None:
    """A kill between the two renames of a save leaves `adapter.old` (the previous adapter)
    and maybe no `adapter`: put it back, or drop it when the new one is in place."""
    if not old.exists():
        return
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, out_dir)


def load_adapter_model(folder: Path, *, is_trainable: bool = False,
                       revision: str | None = None) -> tuple[torch.nn.Module, AdapterMeta]:
    """Rebuild base + adapter from an adapter folder (base model and classes from its meta)."""
    folder = Path(folder)
    meta = AdapterMeta.read(folder)
    if is_run_model(meta.base_model, ask_hub=False):  # from another run (Setup 2 -> a target)
        base, _ = base_from_run(meta.base_model, meta.mask_outputs or meta.num_classes)
    else:
        spec = resolve_model_name(meta.base_model, meta.normalization)
        base = load_base_model(spec, meta.mask_outputs or meta.num_classes,
                               revision=revision or meta.base_revision)
    if (folder / BASE_ENCODER_FILE).is_file():
        load_encoder_weights(base, folder / BASE_ENCODER_FILE)
    if (folder / VANILLA_FILE).is_file():
        state = load_file(str(folder / VANILLA_FILE))
        missing = set(state) - set(base.state_dict())
        if missing:
            raise SamMedftError(f"{folder / VANILLA_FILE} has tensors the base model "
                                f"{meta.base_model} lacks: {sorted(missing)[:5]}")
        base.load_state_dict(state, strict=False)
        if is_trainable:
            apply_vanilla(base, meta.scope)
        else:
            base.requires_grad_(False)  # inference: same kernels as a frozen PEFT model
        return base, meta
    if meta.method == "adapter":
        return load_bottleneck(base, folder, is_trainable=is_trainable), meta
    with peft_call():
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable)
    return model, meta


def is_run_model(name: str, *, ask_hub: bool = True) -> bool:
    """Whether `model.name` is a sam_medft run (a run or adapter folder, or the Hub id of a
    pushed run), not a base checkpoint. `ask_hub=False`: the Hub cache only (loading an
    artifact makes no extra request for its base)."""
    p = Path(name).expanduser()
    if p.is_dir():
        return any((c / META_FILE).is_file() for c in (p, p / ADAPTER_DIR))
    return not p.exists() and is_hub_run(name, ask_hub=ask_hub)


# the decoder tensors whose shape follows the class count (fresh for another class count)
CLASS_HEADS = ("mask_decoder.mask_tokens", "mask_decoder.iou_prediction_head",
               "mask_decoder.output_hypernetworks_mlps")


def base_from_run(name: str, mask_outputs: int) -> tuple[torch.nn.Module, AdapterMeta]:
    """A fine-tuned run as the base model of a new fine-tuning (Setup 2's mixture model, then
    one target data set): its adapter merged into the weights; for another class count the
    class heads are fresh (seeded), everything else is the run's."""
    folder = find_adapter_folder(resolve_run(name))  # a local folder, or the Hub's copy
    model, meta = load_adapter_model(folder)
    if meta.method == "adapter":
        raise SamMedftError(
            f"model.name={name}: a bottleneck-adapter run cannot be merged into the model's "
            f"weights; continue it with model.adapter={name} (same classes), or train the "
            f"first run with peft.method=lora or vanilla")
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if (meta.mask_outputs or meta.num_classes) != mask_outputs:
        cfg = copy.deepcopy(model.config)
        cfg.mask_decoder_config.num_multimask_outputs = mask_outputs
        fresh = seeded_model(type(model), cfg, RANDOM_INIT_SEED)
        kept = {k: v for k, v in model.state_dict().items() if not k.startswith(CLASS_HEADS)}
        fresh.load_state_dict(kept, strict=False)
        log.info("%s: %d classes -> %d: fresh class heads, the rest from the run", name,
                 meta.mask_outputs or meta.num_classes, mask_outputs)
        model = fresh
    return model.eval(), meta


def _write_processor_config(folder: Path, meta: AdapterMeta) -> None:
    """The preprocessing as a transformers image-processor config, for users of SamProcessor."""
    medsam = meta.normalization == "medsam"
    cfg = {
        "image_processor_type": "SamImageProcessor",
        "do_resize": True, "size": {"longest_edge": meta.input_size},
        "mask_size": {"longest_edge": meta.mask_size},
        "do_pad": True, "pad_size": {"height": meta.input_size, "width": meta.input_size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": not medsam,
        "image_mean": [0.0, 0.0, 0.0] if medsam else list(IMAGENET_MEAN),
        "image_std": [1.0, 1.0, 1.0] if medsam else list(IMAGENET_STD),
        "do_convert_rgb": True,
        "sam_medft_normalization": meta.normalization,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))


def unwrap_for_save(model: torch.nn.Module) -> torch.nn.Module:
    """The PeftModel (or plain model) inside DDP/compile wrappers."""
    m = model
    while hasattr(m, "module") or hasattr(m, "_orig_mod"):
        m = getattr(m, "module", None) or m._orig_mod
    return m


__all__ = ["BASE_ENCODER_FILE", "VANILLA_FILE", "load_adapter_model", "save_adapter", "unwrap_for_save"]
