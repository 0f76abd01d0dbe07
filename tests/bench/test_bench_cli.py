"""`sam-medft bench`: the real command on tiny sizes, its JSON record and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from sam_medft.bench import BenchSettings, build_bench_model, run_bench
from sam_medft.cli import app
from sam_medft.config import PeftSettings, Recipe, load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.models.forward import automatic_forward

FIELDS = {
    "images_per_s",
    "step_mean_s",
    "step_median_s",
    "peak_rss_mib",
    "peak_gpu_mem_gib",
    "device_name",
    "torch",
    "attn_implementation",
    "fast_attention",
    "compile",
    "precision",
    "method",
    "scope",
    "mode",
    "batch",
    "image_size",
    "final_loss",
}


def test_bench_json_in_a_subprocess() -> None:
    cmd = [
        sys.executable,
        "-m",
        "sam_medft",
        "bench",
        "--model",
        "tiny",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--json",
        "--batch",
        "2",
        "--image-size",
        "128",
        "--threads",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert FIELDS <= record.keys()
    assert record["mode"] == "train" and record["method"] == "lora" and record["scope"] == "encdec"
    assert record["steps"] == 3 and record["batch"] == 2 and record["image_size"] == 128
    assert record["images_per_s"] > 0 and record["step_median_s"] > 0
    assert record["fast_attention"] is True and record["fast_attention_modules"] == 4
    assert record["device"] == "cpu" and record["peak_gpu_mem_gib"] is None
    assert record["peak_rss_mib"] > 100
    assert math.isfinite(record["final_loss"])


def _invoke(*args: str):
    return CliRunner().invoke(
        app,
        [
            "bench",
            "--model",
            "tiny",
            "--image-size",
            "64",
            "--batch",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            *args,
        ],
    )


def test_predict_mode_prints_a_table() -> None:
    result = _invoke("--mode", "predict", "--plain")
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output and "fast path off" in result.output
    assert "predict" in result.output


def test_decoder_cached_mode_reads_embeddings_from_the_cache() -> None:
    result = _invoke("sam-vit-base/lora_decoder", "--mode", "decoder-cached", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert record["scope"] == "decoder" and record["mode"] == "decoder-cached"
    # the cache is filled once before timing; every warm-up and timed step is a hit
    assert record["cache"] == {"items": 2, "hits": 2 * 3, "disk_hits": 0, "misses": 2}


@pytest.mark.parametrize(
    ("extra", "where"),
    [((), "loader"), (("--transform-device", "accelerator", "--workers", "1"), "accelerator")],
)
def test_epoch_mode_feeds_the_step_from_the_data_pipeline(extra, where) -> None:
    """The end-to-end figure: synthetic slices preprocessed once, batches through the real
    DataLoader and finishing step; the ratio is end-to-end over step-only images/s."""
    result = _invoke("--mode", "epoch", "--classes", "3", "--json", *extra)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    epoch = record["epoch"]
    assert epoch["transform_device"] == where
    assert epoch["preprocessed_images"] == 2 * (1 + 2)  # batch x (warm-up + steps)
    assert epoch["images_per_s"] > 0 and epoch["preprocess_s"] > 0
    assert epoch["step_images_per_s"] == pytest.approx(record["images_per_s"])
    assert epoch["ratio"] == pytest.approx(epoch["images_per_s"] / record["images_per_s"])
    assert math.isfinite(record["final_loss"])


def test_vanilla_full_training_from_a_recipe() -> None:
    result = _invoke("sam-vit-base/vanilla_encdec", "--json", "--activation-checkpointing")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert record["method"] == "vanilla" and record["activation_checkpointing"] is True
    assert record["trainable_params"] == record["total_params"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (BenchSettings(model="tiny", mode="decoder-cached"), "needs a decoder-only scope"),
        (BenchSettings(model="tiny", mode="fit"), "--mode 'fit' is unknown"),
        (BenchSettings(model="tiny", image_size=100), "multiple of 16"),
        (BenchSettings(model="tiny", steps=0), "--steps 0 is too small"),
        (BenchSettings(model="facebook/unknown"), "has no built-in architecture"),
        (BenchSettings(model="tiny", precision="fp8"), "--precision 'fp8' is unknown"),
        (BenchSettings(model="tiny", mode="epoch", num_classes=5), "2 or 3 classes"),
        (BenchSettings(model="tiny", transform_device="gpu"), "auto, accelerator or loader"),
        (BenchSettings(model="tiny", num_workers=-1), "--workers -1"),
    ],
)
def test_mistakes_fail_before_any_work(settings: BenchSettings, message: str) -> None:
    with pytest.raises(SamMedftError, match=message):
        run_bench(settings)


def test_settings_come_from_the_recipe_then_the_flags() -> None:
    """The recipe schema is the one home of the shared defaults; flags given win, 0 included."""
    assert BenchSettings.from_recipe(Recipe(), num_workers=0) == BenchSettings.from_recipe(None)
    recipe = load_recipe(None, ["model.name=tiny", "peft.method=adapter", "train.batch_size=3",
                                "train.fast_attention=false", "train.num_workers=2"])
    s = BenchSettings.from_recipe(recipe, steps=3, compile=None)
    assert (s.model, s.peft.method, s.batch, s.fast, s.num_workers, s.steps) == (
        "tiny", "adapter", 3, False, 2, 3)
    flags = BenchSettings.from_recipe(recipe, batch=0, fast=True)
    assert (flags.batch, flags.fast) == (0, True)


def test_small_image_size_builds_a_consistent_model() -> None:
    model = build_bench_model("slimsam-77", 128, num_classes=3)
    cfg = model.config
    assert cfg.vision_config.image_size == 128
    assert cfg.prompt_encoder_config.image_embedding_size == 8
    assert model.vision_encoder.pos_embed.shape == (1, 8, 8, 168)
    assert model.vision_encoder.layers[2].attn.rel_pos_h.shape[0] == 2 * 8 - 1  # a global layer
    with torch.no_grad():
        logits, iou = automatic_forward(model, torch.randn(1, 3, 128, 128))
    assert logits.shape == (1, 3, 32, 32) and iou.shape == (1, 3)


def test_run_bench_reports_the_measured_setting() -> None:
    s = BenchSettings(
        model="tiny",
        peft=PeftSettings(method="adapter", scope="encdec"),
        batch=1,
        image_size=64,
        steps=2,
        warmup=0,
        fast=False,
    )
    r = run_bench(s)
    assert (r.method, r.scope, r.fast_attention, r.fast_attention_modules) == (
        "adapter",
        "encdec",
        False,
        0,
    )
    assert r.images_per_s == pytest.approx(1 * 2 / (r.step_mean_s * 2))
    assert 0 < r.trainable_params < r.total_params


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--batch", "0"), "bench --batch 0 is too small; use 1 or more"),
        (("--batch", "-2"), "bench --batch -2 is too small"),
        (("--steps", "0"), "bench --steps 0 is too small"),
        (("--warmup", "-1"), "bench --warmup -1 is too small; use 0 or more"),
        (("--classes", "1"), "bench --classes 1 is too small; use 2 or more"),
        (("--image-size", "0"), "bench --image-size 0: use a multiple of 16"),
        (("--threads", "0"), "bench --threads 0 is too small; use 1 or more"),
        (("--workers", "-1"), "bench --workers -1: use 0 or more"),
    ],
)
def test_the_command_refuses_non_positive_numbers(args, message) -> None:
    """`--batch 0` once meant "the default" (8 or the recipe's) without a word."""
    result = CliRunner().invoke(app, ["bench", "--model", "tiny", "--json", *args])
    assert isinstance(result.exception, SamMedftError), result.output
    assert message in str(result.exception)
    assert result.output == ""  # refused before anything was measured or printed
