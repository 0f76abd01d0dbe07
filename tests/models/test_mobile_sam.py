"""MobileSAM (`tiny-mobilesam`: the TinyViT architecture at test size) through the package:
save/load, original key names both ways, the six study recipes (adapters and LoRA in the
TinyViT blocks), the trainer in automatic and box-prompt mode, `train` on the command line,
the dry-run plan and the registry name `mobilesam`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel

from sam_medft.adapters.artifact import load_adapter_model
from sam_medft.adapters.bottleneck import load_bottleneck
from sam_medft.adapters.methods import apply_method, encoder_is_frozen
from sam_medft.bench import build_bench_model
from sam_medft.config import load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.models.convert import convert_checkpoint, map_to_hf, to_original_state_dict
from sam_medft.models.device_map import build_device_map
from sam_medft.models.fast_attention import enable_regional_compile
from sam_medft.models.forward import automatic_forward
from sam_medft.models.loading import resolve_model_name
from sam_medft.models.mobile_sam import MobileSamModel
from sam_medft.models.registry import build_tiny
from sam_medft.tasks.losses import segmentation_loss
from sam_medft.training.plan import estimate
from sam_medft.training.trainer import build_optimizer, train

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NAME = "tiny-mobilesam"
PAIRS = [f"{m}_{s}" for m in ("vanilla", "lora", "adapter") for s in ("decoder", "encdec")]
TINY_DATA = [
    f"model.name={NAME}", "data.source=synthetic", "data.synthetic.n_train=4",
    "data.synthetic.n_val=2", "data.synthetic.n_test=2", "data.binary=false",
    "data.labels={0: background, 128: organ_a, 255: organ_b}", "train.max_steps=2",
    "train.eval_every=2", "train.save_every=2", "train.log_with=none", "train.batch_size=2",
]


@pytest.fixture(autouse=True)
def offline_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SAM_MEDFT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(2, 3, 256, 256, generator=g),
            "labels": torch.randint(0, 3, (2, 64, 64), generator=g)}


def predict(model, pixel_values) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values=pixel_values, multimask_output=True).pred_masks


def test_tiny_mobilesam_saves_loads_and_keeps_original_names(tmp_path):
    model = build_tiny(3, NAME)
    assert isinstance(model, MobileSamModel) and len(model.vision_encoder.layers) == 5
    x = batch()["pixel_values"]
    out = predict(model, x)
    assert out.shape == (2, 1, 3, 64, 64) and out.std() > 1e-3
    assert model.get_image_embeddings(x).shape == (2, 256, 16, 16)
    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path)
    assert type(again) is MobileSamModel
    assert torch.equal(predict(again, x), out)
    original = to_original_state_dict(model)  # mobile_sam.pt's names, and back
    assert "image_encoder.layers.2.blocks.1.mlp.fc1.weight" in original
    assert "image_encoder.layers.1.downsample.conv2.bn.running_var" in original
    assert "image_encoder.layers.0.blocks.0.conv3.c.weight" in original
    mapped, _, unknown = map_to_hf(original)
    assert not unknown
    state = model.state_dict()
    assert set(mapped) == set(state)
    assert all(torch.equal(mapped[k], state[k]) for k in state)


@pytest.mark.parametrize("pair", PAIRS)
def test_study_recipe_trains_the_intended_parts(pair, tmp_path):
    """Each recipe on the tiny MobileSAM: 2 steps; the encoder changes only in encdec scope;
    LoRA/adapters sit in every TinyViT block; the saved adapter reloads to equal outputs."""
    recipe = load_recipe(RECIPES / "mobilesam" / f"{pair}.yaml", TINY_DATA)
    method, scope = pair.split("_")
    model, _ = apply_method(build_tiny(3, NAME), recipe.peft)
    names = [n for n, _ in model.named_modules()]
    if method == "lora" and scope == "encdec":
        assert sum(n.endswith(".attn.qkv.lora_A") for n in names) == 5
    if method == "adapter" and scope == "encdec":
        assert sum(n.endswith(".attn.lora_down") for n in names) == 5
        assert sum(n.endswith(".mlp.lora_down") for n in names) == 5 + 2  # + decoder blocks
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, recipe)
    b = batch()
    model.train()
    for _ in range(2):
        logits, _ = automatic_forward(model, b["pixel_values"],
                                      frozen_encoder=encoder_is_frozen(model))
        loss = segmentation_loss(logits, b["labels"], recipe.loss)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    encoder_changed = {n for n in changed if "vision_encoder." in n}
    assert bool(encoder_changed) == (scope == "encdec")
    if method != "vanilla":  # the base stays frozen: only adapter tensors change there
        assert all("lora_" in n for n in encoder_changed)
        model.save_pretrained(tmp_path)
        fresh = build_tiny(3, NAME)
        loaded = (load_bottleneck(fresh, tmp_path) if method == "adapter"
                  else PeftModel.from_pretrained(fresh, tmp_path))
        x = b["pixel_values"]
        assert torch.allclose(predict(loaded, x), predict(model, x), atol=1e-5)


def test_trainer_box_prompts_and_embedding_cache(tmp_path):
    """Box-prompt mode, decoder scope, the frozen TinyViT's embeddings cached (forced on)."""
    recipe = load_recipe(RECIPES / "mobilesam" / "vanilla_decoder.yaml",
                         [*TINY_DATA, f"output_dir={tmp_path}", "prompt.mode=box",
                          "train.cache_embeddings=true"])
    run = train(recipe).run_dir
    model, meta = load_adapter_model(run / "adapter")
    assert meta.base_model == NAME and isinstance(model, MobileSamModel)


def test_train_command_runs_the_lora_encdec_recipe(tmp_path):
    """`sam-medft train recipes/mobilesam/lora_encdec.yaml` (tiny model, synthetic data)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", SAM_MEDFT_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "sam_medft", "train", str(RECIPES / "mobilesam/lora_encdec.yaml"),
         *TINY_DATA, f"output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model, meta = load_adapter_model(tmp_path / "mobilesam-lora_encdec" / "adapter")
    assert isinstance(model, PeftModel) and meta.method == "lora" and meta.scope == "encdec"
    assert isinstance(model.get_base_model(), MobileSamModel)


def test_dry_run_plans_the_real_mobilesam():
    plan = estimate(load_recipe(RECIPES / "mobilesam" / "lora_encdec.yaml"))
    assert plan.image_size == 1024 and len(plan.layer_params) == 10
    assert 9e6 < plan.total_params < 11e6 and plan.saved_bytes > 0


def test_registry_name_needs_the_converted_checkpoint():
    with pytest.raises(SamMedftError, match="sam-medft convert mobile_sam.pt"):
        resolve_model_name("mobilesam")
    spec = resolve_model_name("mobilesam", random_init=True)
    assert spec.random_init and spec.source == "random:mobilesam"


def test_activation_checkpointing_and_regional_compile_keep_the_numbers():
    """The speed/memory switches on TinyViT blocks: same loss gradients, same embeddings."""
    b = batch(1)

    def grads(model) -> dict[str, torch.Tensor]:
        model.train()
        model(pixel_values=b["pixel_values"]).pred_masks.square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain = grads(build_tiny(3, NAME))
    ckpt = build_tiny(3, NAME)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert ckpt.vision_encoder.layers[0].gradient_checkpointing
    checkpointed = grads(ckpt)
    assert set(checkpointed) == set(plain)
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=1e-5)

    model = build_tiny(3, NAME)
    expected = model.get_image_embeddings(b["pixel_values"])
    # fullgraph: a graph break inside a block would raise; the eager backend keeps it quick
    assert enable_regional_compile(model, backend="eager", fullgraph=True) == 5
    torch.testing.assert_close(model.get_image_embeddings(b["pixel_values"]), expected)


def test_device_map_splits_the_tinyvit_blocks():
    model = build_tiny(3, NAME)
    device_map = build_device_map(model, {"cuda:0": 0.4, "cuda:1": 0.6})
    layers = {n: d for n, d in device_map.items() if n.startswith("vision_encoder.layers.")}
    assert list(layers.values()) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:1"]
    assert device_map["vision_encoder.patch_embed"] == "cuda:0"
    assert device_map["vision_encoder.neck"] == "cuda:1"
    assert device_map["mask_decoder"] == "cuda:1"


def test_bench_builds_mobilesam_at_a_small_size():
    model = build_bench_model("mobilesam", 256, 2)
    assert isinstance(model, MobileSamModel)
    with torch.no_grad():
        assert model.get_image_embeddings(torch.randn(1, 3, 256, 256)).shape == (1, 256, 16, 16)


def test_incomplete_tinyvit_checkpoint_is_one_clear_error(tmp_path):
    original = to_original_state_dict(build_tiny(3, NAME))
    del original["image_encoder.layers.1.blocks.0.mlp.fc1.weight"]
    torch.save(original, tmp_path / "mobile_sam.pt")
    with pytest.raises(SamMedftError, match=r"lacks image_encoder\.layers\.1\.blocks\.0\.mlp\.fc1"):
        convert_checkpoint(tmp_path / "mobile_sam.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
