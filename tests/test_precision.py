"""`mixed_precision` resolution: one rule for trainer, plan, bench and prediction."""

from __future__ import annotations

import logging

import pytest

from sam_medft.errors import SamMedftError
from sam_medft.precision import resolve_precision


@pytest.mark.parametrize(
    ("setting", "device", "bf16", "used"),
    [
        ("auto", "cpu", None, "no"),
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "no"),
        ("bf16", "cpu", None, "bf16"),  # CPU autocast supports bf16: honoured as asked
        ("fp16", "cuda", True, "fp16"),
        ("no", "cuda", True, "no"),
        ("fp32", "cpu", None, "no"),
    ],
)
def test_resolution(setting, device, bf16, used):
    assert resolve_precision(setting, device, bf16_supported=bf16) == used


def test_fp16_on_cpu_says_what_is_used(caplog):
    with caplog.at_level(logging.WARNING, logger="sam_medft"):
        assert resolve_precision("fp16", "cpu") == "no"
    assert "train.mixed_precision=fp16 needs a CUDA GPU" in caplog.text
    assert "uses fp32" in caplog.text


def test_unknown_setting_is_one_message():
    with pytest.raises(SamMedftError, match="'fp8' is not a precision; use auto, bf16, fp16 or no"):
        resolve_precision("fp8", "cuda")
