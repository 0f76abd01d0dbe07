"""The method builders on the real tiny SAM: targets, counts, frozen-encoder forward, other
PEFT methods by name, and the errors a recipe can cause.

The study's six method/scope pairs (training, which parameters change, save -> load) run
for every shipped recipe in tests/test_recipes_matrix.py; the bottleneck adapter itself
(identity at init, placement, round trip) in tests/adapters/test_bottleneck.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import GraloraConfig, OFTConfig, get_peft_model
from torch import nn

from sam_medft.adapters.artifact import load_adapter_model, save_adapter
from sam_medft.adapters.methods import (
    DECODER_HEADS,
    KNOWN_BROKEN,
    apply_method,
    check_settings,
    encoder_is_frozen,
    known_methods,
    meta_model,
)
from sam_medft.config import PeftSettings, load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.models.forward import automatic_forward
from sam_medft.models.loading import unwrap
from sam_medft.models.registry import architecture_config, build_tiny
from sam_medft.runs import AdapterMeta

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
HEADS = DECODER_HEADS
PREFIX = "base_model.model."


def _pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


def _labels(batch: int = 2) -> torch.Tensor:
    target = torch.zeros(batch, 64, 64, dtype=torch.long)
    target[:, 16:48, 20:40] = 1
    target[:, 40:60, 44:60] = 2
    return target


def _train(model: nn.Module, steps: int = 2) -> None:
    """AdamW steps (no weight decay: only gradients move weights) on softmax CE + an IoU term,
    through the trainer's forward (frozen encoder under no_grad)."""
    px, target = _pixels(), _labels()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    frozen = encoder_is_frozen(model)
    model.train()
    for _ in range(steps):
        logits, iou = automatic_forward(model, px, frozen_encoder=frozen)
        loss = nn.functional.cross_entropy(logits, target) + iou.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _predict(model: nn.Module, px: torch.Tensor) -> torch.Tensor:
    """pred_masks as deployed (no parameter requiring grad: torch then picks the same linear
    kernels as for a freshly loaded model)."""
    model.eval().requires_grad_(False)
    with torch.no_grad():
        return model(pixel_values=px).pred_masks


def _names(model: nn.Module, trainable: bool | None = None) -> set[str]:
    return {
        n.removeprefix(PREFIX)
        for n, p in model.named_parameters()
        if trainable is None or p.requires_grad == trainable
    }


def _meta(settings: PeftSettings) -> AdapterMeta:
    return AdapterMeta(
        base_model="tiny",
        num_classes=3,
        class_names=["bg", "a", "b"],
        method=settings.method,
        scope=settings.scope,
        normalization="sam",
        input_size=256,
        mask_size=64,
    )


# ---- targets and counts ------------------------------------------------------------------


def test_lora_targets_follow_scope_and_layers():
    def targets(**kw) -> set[str]:
        model, _ = apply_method(build_tiny(3), PeftSettings(method="lora", **kw))
        return {
            n.removeprefix(PREFIX).removesuffix(".lora_A.default.weight")
            for n, _ in model.named_parameters()
            if n.endswith("lora_A.default.weight")
        }

    decoder = targets(scope="decoder")
    assert len(decoder) == 2 * 2 * 3 + 2  # 2 blocks x 3 attentions + final, q and v each
    assert all(
        n.startswith("mask_decoder.transformer.") and n[-6:] in ("q_proj", "v_proj")
        for n in decoder
    )
    some = targets(scope="encdec", layers=[2, 1, 2])
    assert some - decoder == {f"vision_encoder.layers.{i}.attn.qkv" for i in (1, 2)}
    assert len(targets(scope="encdec", layers="all") - decoder) == 4


def test_method_info_counts_the_fine_tuned_model():
    """Totals count base + added weights; PEFT's frozen original of a trained head copy is
    not part of the fine-tuned model."""
    base = sum(p.numel() for p in build_tiny(3).parameters())
    heads = sum(
        p.numel()
        for n, p in build_tiny(3).named_parameters()
        if n.startswith("mask_decoder.") and any(f".{h}" in n for h in HEADS)
    )
    model, info = apply_method(build_tiny(3), PeftSettings(method="lora", scope="encdec", r=4))
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert lora > 0 and (info.trainable, info.total) == (lora + heads, base + lora)
    assert info.is_peft
    _, vanilla = apply_method(build_tiny(3), PeftSettings(method="vanilla", scope="decoder"))
    decoder = sum(p.numel() for p in build_tiny(3).mask_decoder.parameters())
    assert (vanilla.trainable, vanilla.total, vanilla.is_peft) == (decoder, base, False)


@pytest.mark.parametrize("method", ["vanilla", "lora", "adapter"])
def test_meta_model_has_the_real_models_shapes(method):
    """Parameter counts and memory plans come from the meta-device model: they must be the
    real model's, without any memory."""
    settings = PeftSettings(method=method, scope="encdec", layers=[0, 2])
    model, info = meta_model(architecture_config("tiny"), 3, settings)
    _, real = apply_method(build_tiny(3), settings)
    assert all(p.is_meta for p in model.parameters())
    assert (info.trainable, info.total) == (real.trainable, real.total)
    assert unwrap(model).mask_decoder.mask_tokens.num_embeddings == 3 + 1  # + single-mask token


# ---- decoder-only scopes: the encoder runs without autograd ---------------------------------


@pytest.mark.parametrize("method", ["vanilla", "lora", "adapter"])
def test_decoder_scope_runs_the_encoder_without_autograd(method):
    calls: list[bool] = []

    def run(scope: str) -> nn.Module:
        model, _ = apply_method(build_tiny(3), PeftSettings(method=method, scope=scope))
        encoder = model.get_submodule(
            ("base_model.model." if method != "vanilla" else "") + "vision_encoder"
        )
        handle = encoder.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
        model.train()
        logits, iou = automatic_forward(model, _pixels(), frozen_encoder=encoder_is_frozen(model))
        (logits.square().mean() + iou.square().mean()).backward()
        handle.remove()
        return encoder

    encoder = run("decoder")
    assert calls == [False]  # no graph, so no encoder activations are kept
    assert all(p.grad is None for p in encoder.parameters())
    calls.clear()
    encoder = run("encdec")  # the contrast: the encoder trains, so it runs under autograd
    assert calls == [True]
    assert any(p.grad is not None for p in encoder.parameters())


# ---- other PEFT methods, by name ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "prefix"),
    [
        (["peft.type=LoHa", "peft.r=4", "peft.extra={rank_dropout: 0.0}"], "hada_"),
        (["peft.method=lokr", "peft.r=4", "peft.extra={decompose_factor: 4}"], "lokr_"),
        (["peft.method=ia3", "peft.scope=decoder"], "ia3_"),
        (["peft.method=dora", "peft.r=4"], "lora_"),
    ],
    ids=["loha", "lokr", "ia3", "dora"],
)
def test_other_peft_method_trains_and_round_trips(overrides, prefix, tmp_path):
    settings = load_recipe(None, overrides).peft
    model, info = apply_method(build_tiny(3), settings)
    assert info.is_peft and type(model.base_model).prefix == prefix
    adapters = {n for n in _names(model, trainable=True) if prefix in n}
    heads = _names(model, trainable=True) - adapters
    assert adapters and all(".modules_to_save.default." in n for n in heads)
    assert {n.split(".modules_to_save")[0].split(".")[1] for n in heads} == set(HEADS)
    if settings.scope == "encdec":
        assert any(n.startswith("vision_encoder.") for n in adapters)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model)
    changed = {
        n.removeprefix(PREFIX) for n, p in model.named_parameters() if not torch.equal(p, before[n])
    }
    assert changed <= adapters | heads  # frozen weights are bit-identical
    assert changed & adapters and changed & heads

    px = _pixels(1, seed=3)
    trained = _predict(model, px)
    assert not torch.equal(trained, _predict(build_tiny(3), px))
    folder = save_adapter(model, _meta(settings), tmp_path / "adapter")
    loaded, meta = load_adapter_model(folder)
    assert meta.method == settings.method
    assert torch.equal(_predict(loaded, px), trained)


def test_dora_switch_equals_dora_method():
    named, _ = apply_method(build_tiny(3), PeftSettings(method="dora", scope="decoder"))
    switch, _ = apply_method(
        build_tiny(3), PeftSettings(method="lora", use_dora=True, scope="decoder")
    )
    assert named.peft_config["default"].use_dora and switch.peft_config["default"].use_dora


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["oft", "OFT", "gralora"])
def test_known_broken_method_gives_a_clear_error(method):
    settings = load_recipe(None, [f"peft.method={method}"]).peft
    with pytest.raises(
        SamMedftError, match=rf"peft.method={method.lower()} does not work on SAM.*use lora"
    ):
        apply_method(build_tiny(3), settings)
    with pytest.raises(SamMedftError, match="does not work on SAM"):
        check_settings(settings)  # the same check, before any model is loaded


@pytest.mark.parametrize(
    "config",
    [
        lambda: OFTConfig(target_modules=["qkv", "q_proj"]),
        lambda: GraloraConfig(target_modules=["qkv", "q_proj"], r=8),
    ],
    ids=["oft", "gralora"],
)
def test_known_broken_methods_still_fail_in_peft(config):
    """Keeps KNOWN_BROKEN honest: when PEFT fixes one, this fails and the entry can go."""
    with pytest.raises((RuntimeError, ValueError)):
        model = get_peft_model(build_tiny(3), config())
        model(pixel_values=_pixels(1))


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(SamMedftError, match=r"'lorra' is not a known method") as err:
        apply_method(build_tiny(3), PeftSettings(method="lorra"))
    listed = str(err.value).split("Use one of: ")[1].split(", ")
    assert listed == known_methods()
    assert {"vanilla", "lora", "adapter", "dora", "loha", "lokr", "ia3", "boft"} <= set(listed)
    assert not set(listed) & (set(KNOWN_BROKEN) | {"prompt_tuning", "p_tuning", "xlora"})


@pytest.mark.parametrize("method", ["prompt_tuning", "adaption_prompt"])
def test_methods_for_language_models_are_refused(method):
    with pytest.raises(SamMedftError, match=f"peft.method={method} does not apply to SAM"):
        apply_method(build_tiny(3), PeftSettings(method=method))


def test_bad_extra_key_names_the_method_and_peft_extra():
    settings = PeftSettings(method="loha", extra={"nonsense": 1})
    with pytest.raises(
        SamMedftError, match=r"peft.method=loha: invalid settings.*nonsense.*peft\.extra"
    ):
        apply_method(build_tiny(3), settings)


def test_study_block_indices_out_of_range_on_tiny():
    """The ViT-B adapter recipe's [0, 1, 10, 11] on tiny's 4 blocks is a user error with the
    fix in the message (never clipped: that would train other blocks than the recipe says)."""
    recipe = load_recipe(RECIPES_DIR / "sam-vit-base/adapter_encdec.yaml", ["model.name=tiny"])
    for method in ("adapter", "lora"):
        settings = recipe.peft.model_copy(update={"method": method})
        with pytest.raises(
            SamMedftError, match=r"peft.layers \[10, 11\] out of range.*0\.\.3.*peft.layers=all"
        ):
            apply_method(build_tiny(3), settings)
    with pytest.raises(SamMedftError, match="peft.layers is empty but peft.scope is encdec"):
        apply_method(build_tiny(3), PeftSettings(method="adapter", scope="encdec", layers=[]))
    # an empty list is fine when the encoder is not adapted anyway
    apply_method(build_tiny(3), PeftSettings(method="lora", scope="decoder", layers=[]))


def test_check_settings_uses_the_real_depths_before_loading():
    for path in sorted(RECIPES_DIR.rglob("*.yaml")):
        recipe = load_recipe(path)
        depth = architecture_config(recipe.model.name).vision_config.num_hidden_layers
        check_settings(recipe.peft, depth)
    huge = load_recipe(RECIPES_DIR / "sam-vit-huge/adapter_encdec.yaml").peft
    assert huge.layers == [0, 1, 30, 31]
    with pytest.raises(SamMedftError, match=r"\[30, 31\] out of range.*0\.\.11"):
        check_settings(huge, architecture_config("sam-vit-base").vision_config.num_hidden_layers)


def test_peft_type_is_an_alias_of_peft_method():
    assert load_recipe(None, ["peft.type=LoKr"]).peft.method == "lokr"
    assert load_recipe(None, ["peft.type=lora", "peft.method=LoRA"]).peft.method == "lora"
    with pytest.raises(SamMedftError, match="peft.type='loha' and peft.method='lora' disagree"):
        load_recipe(None, ["peft.type=loha", "peft.method=lora"])
