"""`sam-medft train --dry-run` and `train.preset: auto`: memory plans from model configs.

Everything here runs on the meta device: no weights, no network (HF_HUB_OFFLINE=1), and no
GPU; the real ViT-B/H shapes come from `architecture_config`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam_medft.config import load_recipe
from sam_medft.recipes_index import count_parameters
from sam_medft.training.plan import GiB, estimate
from sam_medft.training.presets import HEADROOM, apply_preset, choose

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


def recipe(name: str, *overrides: str):
    return load_recipe(RECIPES / f"{name}.yaml", list(overrides))


def bf16_b4(name: str, *extra: str):
    return recipe(
        name,
        "train.batch_size=4",
        "train.mixed_precision=bf16",
        "train.activation_checkpointing=false",
        *extra,
    )


def test_dry_run_prints_vit_h_plan_offline_without_weights(tmp_path):
    """A real `sam-medft` process with HF_HUB_OFFLINE=1: nothing to download, nothing written."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="160")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam_medft",
            "train",
            str(RECIPES / "sam-vit-huge/vanilla_encdec.yaml"),
            f"output_dir={tmp_path}",
            "--dry-run",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "sam-vit-huge  vanilla/encdec" in out
    assert "parameters 640,950,543  trainable 640,950,543" in out  # ViT-H: 641M
    for row in ("weights fp32", "AdamW state", "activations", "total", "FSDP2 over 2"):
        assert row in out
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_dry_run_vit_b_lora(tmp_path):
    from typer.testing import CliRunner

    from sam_medft.cli import app

    res = CliRunner().invoke(
        app,
        [
            "train",
            str(RECIPES / "sam-vit-base/lora_encdec.yaml"),
            f"output_dir={tmp_path}",
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "sam-vit-base  lora/encdec" in res.output
    assert "parameters 93,937,423  trainable 894,819" in res.output  # ViT-B: 93.7M
    assert "activation checkpointing on (train.activation_checkpointing=true)" in res.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        ("auto", "4.06 MiB each at 1024 px, in memory up to 4032 images"),
        ("disk", "memory-mapped under runs/sam-vit-base-lora_encdec/cache/"),
        ("off", "every image is decoded and resized every epoch"),
    ],
)
def test_dry_run_says_what_the_preprocessed_images_cost(cache, expected):
    from sam_medft.training.plan import host_memory_line

    r = load_recipe(RECIPES / "sam-vit-base/lora_encdec.yaml", [f"train.preprocess_cache={cache}"])
    # 1024^2 x (3 image bytes + 1 mask byte) + 256^2 low-res mask bytes + 16 = 4.06 MiB
    assert expected in host_memory_line(r, 1024, 2)


def test_plan_matches_parameter_counts_and_scales_with_batch():
    r = bf16_b4("sam-vit-base/lora_encdec")
    plan = estimate(r)
    counts = count_parameters(r, num_classes=plan.num_classes)
    assert (plan.total_params, plan.trainable_params) == (counts.total, counts.trainable)
    assert plan.image_size == 1024 and len(plan.layer_saved) == 12
    assert plan.optimizer == 8 * plan.trainable_params and plan.weights == 4 * plan.total_params
    double = estimate(bf16_b4("sam-vit-base/lora_encdec", "train.batch_size=8"))
    assert double.saved_bytes == pytest.approx(2 * plan.saved_bytes, rel=0.01)
    assert plan.at_batch(8).saved_bytes == pytest.approx(double.saved_bytes, rel=0.01)
    # the four global-attention blocks (2, 5, 8, 11) hold the most
    top4 = sorted(range(12), key=lambda i: -plan.layer_saved[i])[:4]
    assert sorted(top4) == [2, 5, 8, 11]
    # checkpointing keeps one input per block plus one block's activations
    assert plan.activations(True) < plan.activations(False) / 3


@pytest.mark.parametrize(
    "name, measured_gib",
    [
        ("sam-vit-base/lora_encdec", 12.7),
        ("sam-vit-base/vanilla_encdec", 15.1),
        ("sam-vit-base/lora_decoder", 3.7),
    ],
)
def test_plan_is_close_to_the_measured_h200_peaks(name, measured_gib):
    """DESIGN.md's measured peaks (H200, vit-b, batch 4, bf16, SDPA, 1024^2): the estimate
    is within 15% (it says 13.7 / 16.5 / 3.5 GiB)."""
    total = estimate(bf16_b4(name)).per_gpu("single")["total"] / GiB
    assert total == pytest.approx(measured_gib, rel=0.15)


def test_frozen_encoder_keeps_no_encoder_activations():
    dec = estimate(bf16_b4("sam-vit-base/lora_decoder"))
    enc = estimate(bf16_b4("sam-vit-base/lora_encdec"))
    assert not any(dec.layer_saved) and dec.saved_bytes < enc.saved_bytes / 20
    assert dec.activations(True) == dec.activations(False)


def test_strategies_and_split_add_up():
    plan = estimate(bf16_b4("sam-vit-huge/vanilla_encdec", "train.batch_size=1"))
    single, ddp, fsdp = (plan.per_gpu("single"), plan.per_gpu("ddp"), plan.per_gpu("fsdp2", 4))
    assert ddp["total"] == single["total"] + plan.gradients
    assert fsdp["AdamW state"] == pytest.approx(single["AdamW state"] / 4, abs=1)
    split = plan.split({"cuda:0": 0.5, "cuda:1": 0.5})
    assert sum(d["weights fp32"] for d in split.values()) == single["weights fp32"]
    assert sum(d["activations"] for d in split.values()) == single["activations"]
    assert max(d["total"] for d in split.values()) < single["total"]


def test_preset_keeps_the_effective_batch_and_fits_the_card():
    plan = estimate(bf16_b4("sam-vit-base/vanilla_encdec", "train.batch_size=8"))
    big = choose(plan, 80 * GiB, effective_batch=8)
    assert (big.batch_size, big.grad_accum, big.activation_checkpointing, big.fits) == (
        8,
        1,
        False,
        True,
    )
    small = choose(plan, 16 * GiB, effective_batch=8)
    assert small.fits and small.batch_size * small.grad_accum == 8
    assert small.batch_size < 8 and small.need_bytes <= HEADROOM * 16 * GiB
    # a card too small even for batch 1 without checkpointing: checkpointing comes on
    tiny_card = choose(
        plan, int(plan.at_batch(1).per_gpu("single")["total"] / HEADROOM) - 1, effective_batch=8
    )
    assert tiny_card.activation_checkpointing and tiny_card.fits
    hopeless = choose(plan, 1 * GiB, effective_batch=8)
    assert not hopeless.fits and hopeless.batch_size == 1 and hopeless.grad_accum == 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_preset_on_cpu_leaves_the_recipe_and_says_so():
    r = recipe("demo", "train.preset=auto")
    same, note = apply_preset(r)
    assert same == r
    assert "no CUDA GPU" in note and "batch_size=8" in note
    assert apply_preset(recipe("demo")) == (recipe("demo"), None)


def test_dry_run_names_the_model_it_runs_and_warns_nothing(tmp_path):
    """A LoRA recipe run with `model.name=tiny`: the plan says tiny (and that the recipe's run
    folder name says sam-vit-base), and PEFT's wrap prints no transformers FutureWarning."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")
    env["PYTHONWARNINGS"] = "default"  # every warning shown, once per place
    proc = subprocess.run(
        [sys.executable, "-m", "sam_medft", "train", str(RECIPES / "sam-vit-base/lora_encdec.yaml"),
         "model.name=tiny", f"output_dir={tmp_path}", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("model tiny  lora/encdec"), first
    assert "sam-vit-base" not in first
    assert "run folder name 'sam-vit-base-lora_encdec' comes from the recipe" in proc.stdout
    assert "trains model.name=tiny" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    # the run named after its model: no note
    named = subprocess.run(
        [sys.executable, "-m", "sam_medft", "train", str(RECIPES / "sam-vit-base/lora_encdec.yaml"),
         "model.name=tiny", "name=tiny_lora", f"output_dir={tmp_path}", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert named.returncode == 0, named.stderr[-3000:]
    assert "comes from the recipe" not in named.stdout
    assert f"run folder {tmp_path / 'tiny_lora'}" in named.stdout.replace("\n", "")


def test_plan_says_when_the_base_is_random():
    plan = estimate(recipe("slimsam-77/lora_encdec", "model.random_init=true"))
    assert plan.model == "slimsam-77"
    assert any("model.random_init=true: slimsam-77 with RANDOM weights" in n for n in plan.notes)
    plain = estimate(recipe("slimsam-77/lora_encdec"))
    assert not any("random_init" in n for n in plain.notes)
