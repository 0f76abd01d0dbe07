"""One SAM model split over several devices, driven by one process (`model.device_map`).

The recipe gives per-device fractions of the vision encoder, the study's `gpu_fractions`:
`{"cuda:0": 0.5, "cuda:1": 0.5}` puts the patch embedding and the first half of the
vision layers on cuda:0 and the second half, the neck, the prompt encoder and the mask
decoder on cuda:1 (the study's placement, generalised to any number of devices). The
encoder layers are where the memory goes (weights and activations), and they are never
cut in half (`_no_split_modules`: `SamVisionLayer`).

Why not transformers' `device_map=` at load time: accelerate's `dispatch_model` treats a
"cpu" entry next to a GPU as CPU *offload* (weights on the meta device, copied in per
forward), which cannot be trained. Here every entry is a real execution device: each block
is moved to its device and gets an accelerate `AlignDevicesHook` that moves its inputs
there; the root hook returns the outputs to the caller's device. The devices run one after
another (no pipelining): this is for models that do not fit one GPU, not for speed.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from sam_medft.errors import SamMedftError

_DEVICE_RE = re.compile(r"^(cpu|cuda:\d+|mps|xpu:\d+)$")


def normalize_device(name: str | int) -> str:
    """`0` or `"0"` -> `"cuda:0"`, `"cuda"` -> `"cuda:0"`; others are checked as written."""
    text = str(name).strip()
    if text.isdigit():
        text = f"cuda:{text}"
    if text in ("cuda", "xpu"):
        text += ":0"
    if not _DEVICE_RE.match(text):
        raise SamMedftError(
            f"model.device_map: {name!r} is not a device; use cuda:0, cuda:1, ... "
            f"(or cpu), e.g. model.device_map={{cuda:0: 0.5, cuda:1: 0.5}}"
        )
    return text


def validate_fractions(fractions: Mapping[str | int, float]) -> list[tuple[str, float]]:
    """The recipe's `model.device_map`, checked: (device, fraction) pairs in order, summing to 1."""
    if not fractions:
        raise SamMedftError(
            "model.device_map is empty; give at least one device, e.g. "
            "{cuda:0: 0.5, cuda:1: 0.5}, or remove the key"
        )
    pairs = [(normalize_device(d), float(f)) for d, f in fractions.items()]
    bad = [f"{d}={f}" for d, f in pairs if not f > 0]
    if bad:
        raise SamMedftError(
            f"model.device_map: fractions must be > 0 (got {', '.join(bad)}); "
            f"drop a device instead of giving it 0"
        )
    if len({d for d, _ in pairs}) != len(pairs):
        raise SamMedftError(f"model.device_map names a device twice: {[d for d, _ in pairs]}")
    total = sum(f for _, f in pairs)
    if not math.isclose(total, 1.0, abs_tol=1e-3):
        raise SamMedftError(
            f"model.device_map fractions sum to {total:g}; make them sum to 1 "
            f"(e.g. {{cuda:0: 0.5, cuda:1: 0.5}})"
        )
    return pairs


def split_counts(n_layers: int, fractions: list[tuple[str, float]]) -> list[int]:
    """Layers per device. As in the study, block i goes to the first device while
    i < int(n_layers x f0); with more devices the cumulative fractions are cut the same way,
    so the counts always sum to n_layers."""
    bounds, acc = [0], 0.0
    for _, f in fractions:
        acc += f
        bounds.append(math.floor(acc * n_layers + 1e-6))
    bounds[-1] = n_layers
    counts = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    empty = [d for (d, f), c in zip(fractions, counts, strict=True) if c <= 0]
    if empty:
        raise SamMedftError(
            f"model.device_map gives {', '.join(empty)} no vision layer (the encoder "
            f"has {n_layers}); raise its fraction to at least {1 / n_layers:.3f} or "
            f"remove the device"
        )
    return counts


def vision_layer_names(model: nn.Module) -> list[str]:
    """Names of the encoder blocks that must stay whole (the class's `_no_split_modules`)."""
    no_split = set(
        getattr(model, "_no_split_modules", None) or ["SamVisionLayer", "SamHQVisionLayer"]
    )
    names = [n for n, m in model.named_modules() if type(m).__name__ in no_split]
    if not names:
        raise SamMedftError(
            f"{type(model).__name__} has no {sorted(no_split)} blocks to split; "
            f"model.device_map works with SamModel / SamHQModel only"
        )
    return names


def build_device_map(model: nn.Module, fractions: Mapping[str | int, float]) -> dict[str, str]:
    """Module/parameter name -> device for `model` (a base SamModel, before PEFT; meta is fine).

    Everything before the first block (patch embedding, `pos_embed`) goes with the first
    device, the blocks by fraction, and everything after them (neck, prompt encoder, mask
    decoder, shared positional embedding) with the last device.
    """
    pairs = validate_fractions(fractions)
    layers = vision_layer_names(model)
    counts = split_counts(len(layers), pairs)
    device_map: dict[str, str] = {}
    i = 0
    for (device, _), n in zip(pairs, counts, strict=True):
        for name in layers[i : i + n]:
            device_map[name] = device
        i += n
    first, last = pairs[0][0], pairs[-1][0]
    encoder = layers[0].rsplit(".", 2)[0]  # "vision_encoder" from "vision_encoder.layers.0"
    container = layers[0].rsplit(".", 1)[0]  # "vision_encoder.layers"
    enc_module = model.get_submodule(encoder)
    seen_layers = False
    for child, _ in enc_module.named_children():
        full = f"{encoder}.{child}"
        if full == container:
            seen_layers = True
            continue
        device_map[full] = last if seen_layers else first
    for pname, _ in enc_module.named_parameters(recurse=False):
        device_map[f"{encoder}.{pname}"] = first
    for bname, _ in enc_module.named_buffers(recurse=False):
        device_map[f"{encoder}.{bname}"] = first
    for child, _ in model.named_children():
        if child != encoder:
            device_map[child] = last
    for pname, _ in model.named_parameters(recurse=False):
        device_map[pname] = first
    return device_map


def check_devices(device_map: Mapping[str, str]) -> None:
    """Every device in the map exists here (before any weights move)."""
    n_cuda = torch.cuda.device_count()
    for device in sorted(set(device_map.values())):
        if device.startswith("cuda") and int(device.split(":")[1]) >= n_cuda:
            raise SamMedftError(
                f"model.device_map names {device} but this machine has {n_cuda} "
                f"CUDA GPU(s) (CUDA_VISIBLE_DEVICES={_visible()}); use devices "
                f"cuda:0..cuda:{max(0, n_cuda - 1)} or remove model.device_map"
            )


def place_model(model: nn.Module, device_map: Mapping[str, str]) -> nn.Module:
    """Move each entry to its device and attach the hooks that move activations between them.

    Sets `model.hf_device_map`, which is how `Accelerator.prepare` knows not to move the model.
    """
    from accelerate.hooks import attach_align_device_hook_on_blocks
    from accelerate.utils import check_device_map

    with warnings.catch_warnings():  # it warns about parameter-level keys, which are fine here
        warnings.simplefilter("ignore", UserWarning)
        check_device_map(model, dict(device_map))
    first = next(iter(device_map.values()))
    modules = dict(model.named_modules())
    direct = {}
    for name, device in device_map.items():
        if name in modules:
            continue
        owner, _, attr = name.rpartition(".")  # a parameter or buffer held by a split module
        direct[name] = device
        module = modules[owner]
        tensor = getattr(module, attr)
        with torch.no_grad():
            if isinstance(tensor, nn.Parameter):
                setattr(
                    module,
                    attr,
                    nn.Parameter(tensor.to(device), requires_grad=tensor.requires_grad),
                )
            else:
                module._buffers[attr] = tensor.to(device)
    blocks = {n: d for n, d in device_map.items() if n not in direct}
    attach_align_device_hook_on_blocks(
        model, execution_device={"": first, **blocks}, offload=dict.fromkeys(blocks, False)
    )
    model.hf_device_map = dict(device_map)
    return model


def describe(device_map: Mapping[str, str]) -> str:
    """'cuda:0: layers 0-5 + patch_embed, pos_embed; cuda:1: layers 6-11 + ...' for the log."""
    parts = []
    for device in dict.fromkeys(device_map.values()):
        names = [n for n, d in device_map.items() if d == device]
        ids = [int(n.rsplit(".", 1)[1]) for n in names if re.search(r"layers\.\d+$", n)]
        other = [n.rsplit(".", 1)[-1] for n in names if not re.search(r"layers\.\d+$", n)]
        span = (
            (f"layers {min(ids)}-{max(ids)}" if len(ids) > 1 else f"layer {ids[0]}")
            if ids
            else "no layers"
        )
        parts.append(f"{device}: {span}" + (f" + {', '.join(other)}" if other else ""))
    return "; ".join(parts)


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


__all__ = [
    "build_device_map",
    "place_model",
    "validate_fractions",
    "split_counts",
    "check_devices",
    "normalize_device",
    "vision_layer_names",
    "describe",
]
