"""Bottleneck adapters on real tiny SAM / SAM-HQ models: identity, training, save/load, errors."""

from __future__ import annotations

import json
from typing import get_args

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import Sam2Config, Sam2Model, SamConfig, SamHQConfig, SamHQModel, SamModel

from sam_medft.adapters.bottleneck import (
    ACTIVATIONS,
    BottleneckAttention,
    BottleneckMLP,
    BottleneckNorm,
    BottleneckSettings,
    apply_bottleneck,
    bottleneck_lora_config,
    is_bottleneck_adapter,
    load_bottleneck,
    read_bottleneck_settings,
)
from sam_medft.config import PeftSettings, load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.models.registry import TINY_CONFIG, build_tiny

HEADS = [
    "mask_decoder.mask_tokens",
    "mask_decoder.output_hypernetworks_mlps",
    "mask_decoder.iou_prediction_head",
]
ALL = BottleneckSettings(encoder_layers="all")


def _pixels(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


def _forward(model: nn.Module, px: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=px).pred_masks


def _train(model: nn.Module, steps: int = 3) -> None:
    """A few AdamW steps on a real segmentation loss (softmax CE over the class masks)."""
    px = _pixels(2, seed=2)
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:48, 20:40] = 1
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        logits = model(pixel_values=px).pred_masks[:, 0]  # (B, classes, 64, 64)
        loss = nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _adapters(model: nn.Module) -> dict[str, type]:
    wrappers = (BottleneckAttention, BottleneckMLP, BottleneckNorm)
    return {
        n.removeprefix("base_model.model."): type(m)
        for n, m in model.named_modules()
        if isinstance(m, wrappers)
    }


def _tiny_hq() -> SamHQModel:
    """TINY_CONFIG's sizes as a SAM-HQ (its HQ head reads the 64-wide encoder features)."""
    torch.manual_seed(0)
    config = SamHQConfig(**TINY_CONFIG, mask_decoder_config=dict(vit_dim=64))
    return SamHQModel(config).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained encoder+decoder adapter with the decoder heads, saved once."""
    model = apply_bottleneck(build_tiny(2), ALL, modules_to_save=HEADS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return model, before, path


def test_fresh_adapter_is_identity():
    px = _pixels(2)
    ref = _forward(build_tiny(2), px)
    model = apply_bottleneck(build_tiny(2), ALL, modules_to_save=HEADS)
    assert len(_adapters(model)) == 4 * 2 + 2 * 3
    torch.testing.assert_close(_forward(model, px), ref, atol=1e-6, rtol=0)


def test_placement_formulas_match_the_study():
    """Each wrapper computes the study's formula (checked with non-zero adapter weights)."""
    model = apply_bottleneck(build_tiny(2), ALL)
    for layer in _adapters(model):
        module = model.base_model.model.get_submodule(layer)
        nn.init.normal_(module.lora_up["default"].weight, std=0.1)

    def adapter(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.lora_up["default"](nn.functional.gelu(m.lora_down["default"](x)))

    inner = model.base_model.model
    x = torch.randn(1, 8, 8, 64)
    attn = inner.vision_encoder.layers[0].attn
    a = attn.base_layer(x)[0]
    torch.testing.assert_close(attn(x)[0], a + adapter(attn, a))
    mlp = inner.vision_encoder.layers[1].mlp
    torch.testing.assert_close(mlp(x), mlp.base_layer(x) + 0.5 * adapter(mlp, x))
    q = torch.randn(1, 1, 5, 256)
    for name in ("layer_norm2", "layer_norm4"):
        norm = getattr(inner.mask_decoder.transformer.layers[1], name)
        torch.testing.assert_close(norm(q), norm.base_layer(q + adapter(norm, q)))
    dmlp = inner.mask_decoder.transformer.layers[0].mlp
    torch.testing.assert_close(dmlp(q), dmlp.base_layer(q) + 0.5 * adapter(dmlp, q))


def test_dims_and_scales_follow_settings():
    settings = BottleneckSettings(ratio=0.5, mlp_scale=0.3, encoder_layers=[0])
    model = apply_bottleneck(build_tiny(2), settings)
    inner = model.base_model.model
    enc_attn, enc_mlp = inner.vision_encoder.layers[0].attn, inner.vision_encoder.layers[0].mlp
    dec = inner.mask_decoder.transformer.layers[0]
    assert enc_attn.lora_down["default"].out_features == 32  # round(0.5 * 64)
    assert dec.layer_norm2.lora_down["default"].out_features == 128  # round(0.5 * 256)
    assert enc_attn.scaling["default"] == 1.0 and dec.layer_norm4.scaling["default"] == 1.0
    assert enc_mlp.scaling["default"] == pytest.approx(0.3)
    assert dec.mlp.scaling["default"] == pytest.approx(0.3)


def test_training_changes_only_adapters_and_heads(trained):
    model, before, _ = trained
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    assert any(".mask_tokens.modules_to_save." in n for n in trainable)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable  # nothing frozen moved
    assert {n for n in trainable if ".lora_" in n} <= changed  # every adapter weight trained
    # the heads that reach this loss trained too (mask token 0 / IoU head are unused by it)
    for head in ("mask_tokens.", "output_hypernetworks_mlps.1.", "output_hypernetworks_mlps.2."):
        assert any(head + "modules_to_save" in n for n in changed), head


def test_saved_files_hold_only_the_adapter(trained):
    model, _, path = trained
    assert (path / "adapter_config.json").is_file()
    weights = path / "adapter_model.safetensors"
    keys = set(load_file(weights))
    expected = {
        n.replace(".modules_to_save.default", "").replace(".default", "")
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert keys == expected
    assert not any("qkv" in k or "patch_embed" in k or "lin1" in k for k in keys)
    base_bytes = sum(p.numel() * 4 for p in build_tiny(2).parameters())
    assert weights.stat().st_size < 0.2 * base_bytes
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["bottleneck"]["encoder_layers"] == "all"


def test_load_into_fresh_base_gives_identical_output(trained):
    model, _, path = trained
    px = _pixels(1, seed=5)
    loaded = load_bottleneck(build_tiny(2), path)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(_forward(loaded, px), _forward(model, px))
    assert not torch.equal(_forward(loaded, px), _forward(build_tiny(2), px))
    resumed = load_bottleneck(build_tiny(2), path, is_trainable=True)
    assert any(p.requires_grad for p in resumed.parameters())


def test_disable_adapter_gives_base_output(trained):
    model, _, _ = trained
    px = _pixels(1, seed=6)
    with model.disable_adapter():
        off = _forward(model, px)
    assert torch.equal(off, _forward(build_tiny(2), px))


def test_settings_round_trip_and_detection(trained, tmp_path):
    _, _, path = trained
    assert is_bottleneck_adapter(path)
    assert read_bottleneck_settings(path) == ALL
    lora = get_peft_model(build_tiny(2), LoraConfig(r=2, target_modules=["qkv"]))
    lora.save_pretrained(tmp_path / "lora")
    assert not is_bottleneck_adapter(tmp_path / "lora")
    with pytest.raises(SamMedftError, match="not a bottleneck adapter"):
        load_bottleneck(build_tiny(2), tmp_path / "lora")
    with pytest.raises(SamMedftError, match="adapter_config.json"):
        is_bottleneck_adapter(tmp_path / "missing")


def test_activation_survives_save_load(tmp_path):
    settings = BottleneckSettings(activation="relu", encoder_layers=[2], decoder=False)
    model = apply_bottleneck(build_tiny(2), settings)
    model.save_pretrained(tmp_path)
    loaded = load_bottleneck(build_tiny(2), tmp_path)
    assert read_bottleneck_settings(tmp_path) == settings
    acts = [m.lora_act["default"] for m in loaded.modules() if isinstance(m, BottleneckMLP)]
    assert acts and all(isinstance(a, nn.ReLU) for a in acts)


def test_study_default_blocks_on_a_12_block_encoder():
    """[0, 1, 10, 11] (two-digit indices) on a narrow 12-block encoder, like ViT-B's depth."""
    vision = dict(TINY_CONFIG["vision_config"], num_hidden_layers=12)
    vision["global_attn_indexes"] = [2, 5, 8, 11]
    torch.manual_seed(0)
    model = SamModel(SamConfig(**dict(TINY_CONFIG, vision_config=vision))).eval()
    peft_model = apply_bottleneck(model, BottleneckSettings())
    enc = {n.rsplit(".", 1)[0] for n in _adapters(peft_model) if n.startswith("vision_")}
    assert enc == {f"vision_encoder.layers.{i}" for i in (0, 1, 10, 11)}


def test_encoder_layer_selection():
    model = apply_bottleneck(build_tiny(2), BottleneckSettings(encoder_layers=[1, 2]))
    enc = {n for n in _adapters(model) if n.startswith("vision_encoder")}
    assert enc == {f"vision_encoder.layers.{i}.{p}" for i in (1, 2) for p in ("attn", "mlp")}
    assert len(_adapters(model)) == 4 + 6

    enc_only = apply_bottleneck(
        build_tiny(2), BottleneckSettings(encoder_layers=[3], decoder=False)
    )
    assert set(_adapters(enc_only)) == {
        "vision_encoder.layers.3.attn",
        "vision_encoder.layers.3.mlp",
    }

    dec_only = apply_bottleneck(build_tiny(2), BottleneckSettings(encoder_layers=[]))
    assert set(_adapters(dec_only)) == {
        f"mask_decoder.transformer.layers.{i}.{p}"
        for i in (0, 1)
        for p in ("layer_norm2", "mlp", "layer_norm4")
    }
    # only the two decoder norms per block are wrapped, never another LayerNorm
    norms = [n for n, t in _adapters(dec_only).items() if t is BottleneckNorm]
    assert sorted(n.rsplit(".", 1)[1] for n in norms) == ["layer_norm2"] * 2 + ["layer_norm4"] * 2


def test_sam_hq_round_trip(tmp_path):
    px = _pixels(1)
    ref = _forward(_tiny_hq(), px)
    model = apply_bottleneck(_tiny_hq(), ALL, modules_to_save=HEADS)
    assert len(_adapters(model)) == 4 * 2 + 2 * 3
    torch.testing.assert_close(_forward(model, px), ref, atol=1e-6, rtol=0)
    _train(model, steps=2)
    trained_out = _forward(model, px)
    assert not torch.equal(trained_out, ref)
    model.save_pretrained(tmp_path)
    assert torch.equal(_forward(load_bottleneck(_tiny_hq(), tmp_path), px), trained_out)


def test_models_without_sam_blocks_raise_clear_error():
    with pytest.raises(SamMedftError, match=r"vision_encoder\.layers.*Sequential"):
        bottleneck_lora_config(nn.Sequential(nn.Linear(4, 4)), ALL)
    sam2 = Sam2Model(Sam2Config())
    with pytest.raises(SamMedftError, match=r"Sam2Model.*backbone"):
        apply_bottleneck(sam2, ALL)
    with pytest.raises(SamMedftError, match=r"mask_decoder\.transformer\.layers"):
        apply_bottleneck(sam2, BottleneckSettings(encoder_layers=None))


def test_bad_settings_and_indices_raise_clear_errors():
    with pytest.raises(SamMedftError, match=r"\[10, 11\].*4 blocks"):
        apply_bottleneck(build_tiny(2), BottleneckSettings())  # study default on a 4-block model
    with pytest.raises(SamMedftError, match="activation 'tanh'"):
        BottleneckSettings(activation="tanh")
    with pytest.raises(SamMedftError, match="ratio"):
        BottleneckSettings(ratio=0)
    with pytest.raises(SamMedftError, match="select no module"):
        BottleneckSettings(encoder_layers=[], decoder=False)
    with pytest.raises(SamMedftError, match="'mask_decoder.nope'"):
        apply_bottleneck(build_tiny(2), ALL, modules_to_save=["mask_decoder.nope"])
    with pytest.raises(SamMedftError, match="contains bottleneck adapter targets"):
        apply_bottleneck(build_tiny(2), ALL, modules_to_save=["mask_decoder"])


def test_settings_take_defaults_and_ranges_from_the_recipe_schema():
    """`peft:` in the recipe schema is the one home of the bottleneck defaults and ranges."""
    assert BottleneckSettings.from_recipe(PeftSettings(), (0, 1, 10, 11)) == BottleneckSettings()
    assert set(get_args(PeftSettings.model_fields["activation"].annotation)) == set(ACTIVATIONS)
    with pytest.raises(SamMedftError, match="mlp_scale inf is invalid: it should be a finite"):
        BottleneckSettings(mlp_scale=float("inf"))
    with pytest.raises(SamMedftError, match="invalid recipe"):
        load_recipe(None, ["peft.mlp_scale=.inf"])
    assert BottleneckSettings(ratio="0.5").ratio == 0.5  # parsed as the schema does


def test_merge_is_refused_but_unload_restores_base():
    px = _pixels(1)
    model = apply_bottleneck(build_tiny(2), ALL)
    with pytest.raises(SamMedftError, match="cannot be merged"):
        model.merge_and_unload()
    base = model.unload()
    assert not _adapters(base)
    assert torch.equal(_forward(base, px), _forward(build_tiny(2), px))
