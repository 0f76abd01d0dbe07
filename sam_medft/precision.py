"""What `mixed_precision` means on a given device: the one place that decides it.

`auto` is bf16 autocast on a CUDA GPU that supports it, and full fp32 elsewhere (CPU
autocast is slower than fp32 on most CPUs). A setting that cannot apply on the device
(fp16 without CUDA) falls back to fp32 and says so, instead of being silently ignored.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from sam_medft.errors import SamMedftError

log = logging.getLogger("sam_medft")

Precision = Literal["bf16", "fp16", "no"]
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16,
                                  "no": torch.float32}


def resolve_precision(setting: str, device_type: str, *, bf16_supported: bool | None = None,
                      what: str = "train.mixed_precision") -> Precision:
    """`auto|bf16|fp16|no` (`fp32` = `no`) on `device_type` ("cuda", "cpu", ...) -> the
    precision used. `bf16_supported`: for a GPU other than this machine's (the plan's)."""
    setting = "no" if setting == "fp32" else setting
    cuda = device_type == "cuda"
    if bf16_supported is None:
        bf16_supported = cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if setting == "auto":
        return "bf16" if cuda and bf16_supported else "no"
    if setting == "fp16" and not cuda:
        log.warning("%s=fp16 needs a CUDA GPU; this %s run uses fp32 (no mixed precision)",
                    what, device_type)
        return "no"
    if setting not in DTYPES:
        raise SamMedftError(f"{what}={setting!r} is not a precision; use auto, bf16, fp16 or no")
    return setting  # type: ignore[return-value]


def device_type() -> str:
    """The accelerator this process trains on by default."""
    return "cuda" if torch.cuda.is_available() else "cpu"
