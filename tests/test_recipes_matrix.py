"""Every shipped study recipe (3 models x {vanilla, lora, adapter} x {decoder, encdec}) on the
tiny SAM: it builds, trains 2 optimizer steps, only the intended parameters change, and the
saved adapter reloads into a fresh base with identical predictions.

The real checkpoints cannot be downloaded here, so `model.name=tiny` replaces the model and
the synthetic set replaces the study's lists; everything else (method, scope, rank, ratio,
learning rate, weight decay) is the recipe's own. All 18 recipes go through the method
builders with the trainer's optimizer and loss; the full trainer runs the 6 method/scope
pairs once each (on tiny the three models' recipes differ only in their name and block
indices, which `test_models_share_their_method_settings` checks).
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import pytest
import torch

from sam_medft.adapters.artifact import load_adapter_model, save_adapter
from sam_medft.adapters.methods import apply_method, encoder_is_frozen
from sam_medft.config import Recipe, load_recipe
from sam_medft.models.forward import automatic_forward
from sam_medft.models.registry import architecture_config, build_tiny
from sam_medft.recipes_index import ParamCount, count_parameters
from sam_medft.runs import AdapterMeta
from sam_medft.tasks.losses import iou_head_loss, segmentation_loss
from sam_medft.training.trainer import build_optimizer, train

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
MODELS = ("sam-vit-base", "sam-vit-huge", "slimsam-77")
PAIRS = [f"{m}_{s}" for m in ("vanilla", "lora", "adapter") for s in ("decoder", "encdec")]
RECIPES = [f"{model}/{pair}" for model in MODELS for pair in PAIRS]
# the full trainer: each method/scope pair once, the models taking turns
TRAINER_RUNS = [f"{MODELS[i % 3]}/{pair}" for i, pair in enumerate(PAIRS)]

CLASSES = ["background", "organ_a", "organ_b"]
TINY_DATA = [
    "model.name=tiny",
    "data.source=synthetic",
    "data.synthetic.n_train=8",
    "data.synthetic.n_val=4",
    "data.synthetic.n_test=4",
    "data.binary=false",
    "data.labels={0: background, 128: organ_a, 255: organ_b}",  # the synthetic raw values
    "train.max_steps=2",
    "train.eval_every=2",
    "train.save_every=2",
    "train.log_with=none",
    "train.batch_size=2",
]
# one mask token + hypernetwork MLP per class, plus SAM's single-mask token 0
HEADS = ["mask_tokens", "iou_token", "iou_prediction_head"] + [
    f"output_hypernetworks_mlps.{i}" for i in range(len(CLASSES) + 1)
]
DECODER_ATTN = [
    f"layers.{i}.{a}"
    for i in (0, 1)
    for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
]
DECODER_ATTN += ["final_attn_token_to_image"]
PEFT_PREFIX = "base_model.model."


@pytest.fixture(scope="module", autouse=True)
def synthetic_cache(tmp_path_factory):
    """The synthetic set is generated into this module's own cache folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAM_MEDFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def tiny_layers(recipe_path: Path) -> list[int] | None:
    """The recipe's encoder blocks at the same relative depth of tiny's 4 blocks
    ([0, 1, 10, 11] of ViT-B's 12 and [0, 1, 30, 31] of ViT-H's 32 both become [0, 3])."""
    study = load_recipe(recipe_path)
    if study.peft.layers == "all":
        return None
    depth = architecture_config(study.model.name).vision_config.num_hidden_layers
    return sorted({i * 4 // depth for i in study.peft.layers})


def tiny_recipe(name: str, out: Path) -> Recipe:
    path = RECIPES_DIR / f"{name}.yaml"
    overrides = [*TINY_DATA, f"output_dir={out}"]
    layers = tiny_layers(path)
    if layers is not None:
        overrides.append(f"peft.layers={layers}")
    return load_recipe(path, overrides)


@pytest.fixture(scope="module")
def batch(synthetic_cache) -> dict:
    """Two real training items of the synthetic set, through the data pipeline."""
    from sam_medft.data.check import check_dataset
    from sam_medft.data.dataset import ModelFrameSpec, SamSegmentationDataset, collate
    from sam_medft.data.sources import build_splits
    from sam_medft.models.loading import model_geometry

    data = load_recipe(None, TINY_DATA).data
    label_map = check_dataset(data).label_map
    assert label_map.class_names == CLASSES
    spec = ModelFrameSpec(model_geometry(build_tiny(3)), "sam", label_map)
    ds = SamSegmentationDataset(build_splits(data)["train"], spec)
    out = collate([ds[0], ds[1]])
    assert (out["labels"] > 0).any()
    return out


@pytest.fixture(scope="module")
def base_out(batch) -> torch.Tensor:
    return predict(build_tiny(3), batch)


@functools.cache
def tiny_count(peft_json: str) -> ParamCount:
    """count_parameters on tiny depends only on the peft section (same for the 3 models)."""
    return count_parameters(Recipe(model={"name": "tiny"}, peft=json.loads(peft_json)), 3)


def predict(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """pred_masks as deployed: eval mode, no parameter requiring grad. (torch picks another,
    equally valid linear kernel when a weight requires grad: outputs ~1e-8 apart.)"""
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval().requires_grad_(False)
    try:
        with torch.no_grad():
            return model(pixel_values=batch["pixel_values"], multimask_output=True).pred_masks
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def train_two_steps(model: torch.nn.Module, recipe: Recipe, batch: dict) -> set[str]:
    """The trainer's optimizer and loss, 2 steps; -> names with a non-zero last gradient."""
    optimizer = build_optimizer(model, recipe)
    frozen = encoder_is_frozen(model)
    model.train()
    for _ in range(2):
        logits, iou = automatic_forward(model, batch["pixel_values"], frozen_encoder=frozen)
        loss = segmentation_loss(logits, batch["labels"], recipe.loss)["loss"]
        loss = loss + iou_head_loss(iou, logits.detach(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
        optimizer.step()
    return {n.removeprefix(PEFT_PREFIX) for n in grads}


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix(PEFT_PREFIX): p for n, p in model.named_parameters()}


@functools.cache
def _all_base_names() -> tuple[str, ...]:
    return tuple(n for n, _ in build_tiny(3).named_parameters())


def base_names(prefix: str = "") -> list[str]:
    return [n for n in _all_base_names() if n.startswith(prefix)]


def head_copies() -> set[str]:
    """Trainable copies PEFT makes of the class-dependent heads (`modules_to_save`)."""
    out = set()
    for head in HEADS:
        module = f"mask_decoder.{head}"
        for n in base_names(module + "."):
            out.add(f"{module}.modules_to_save.default.{n.removeprefix(module + '.')}")
    return out


def adapter_targets(method: str, scope: str, layers: list[int]) -> list[str]:
    """Modules that get a LoRA delta / bottleneck adapter, spelled out independently."""
    if method == "lora":
        dec = [
            f"mask_decoder.transformer.{a}.{p}" for a in DECODER_ATTN for p in ("q_proj", "v_proj")
        ]
        enc = [f"vision_encoder.layers.{i}.attn.qkv" for i in layers]
    else:
        dec = [
            f"mask_decoder.transformer.layers.{i}.{p}"
            for i in (0, 1)
            for p in ("layer_norm2", "mlp", "layer_norm4")
        ]
        enc = [f"vision_encoder.layers.{i}.{p}" for i in layers for p in ("attn", "mlp")]
    return dec + (enc if scope == "encdec" else [])


def adapter_params(method: str, scope: str, layers: list[int]) -> set[str]:
    if method == "lora":
        tensors = ("lora_A.default.weight", "lora_B.default.weight")
    else:
        tensors = tuple(
            f"{p}.default.{t}" for p in ("lora_down", "lora_up") for t in ("weight", "bias")
        )
    return {f"{m}.{t}" for m in adapter_targets(method, scope, layers) for t in tensors}


def expected(recipe: Recipe) -> tuple[set[str], set[str]]:
    """(exactly the trainable names, names that must have changed after 2 steps)."""
    method, scope = recipe.peft.method, recipe.peft.scope
    if method == "vanilla":
        trainable = set(base_names("mask_decoder." if scope == "decoder" else ""))
        moved = set(base_names("mask_decoder.transformer.")) | set(
            base_names("mask_decoder.mask_tokens")
        )
        if scope == "encdec":
            moved |= set(base_names("vision_encoder."))
        return trainable, moved
    layers = list(range(4)) if recipe.peft.layers == "all" else recipe.peft.layers
    adapters = adapter_params(method, scope, layers)
    heads = head_copies()
    # mask token 0 / hypernetwork 0 are the unused single-mask output of automatic mode
    moved_heads = {n for n in heads if "output_hypernetworks_mlps.0." not in n}
    return adapters | heads, adapters | moved_heads


def weight_bytes(path: Path) -> int:
    """Tensor bytes of a safetensors file: its size less the 8-byte length and the header."""
    with path.open("rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    return path.stat().st_size - 8 - header


def meta_for(recipe: Recipe) -> AdapterMeta:
    return AdapterMeta(
        base_model="tiny",
        num_classes=3,
        class_names=CLASSES,
        method=recipe.peft.method,
        scope=recipe.peft.scope,
        normalization="sam",
        input_size=256,
        mask_size=64,
    )


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_only_its_parameters_and_round_trips(name, batch, base_out, tmp_path):
    recipe = tiny_recipe(name, tmp_path)
    method = recipe.peft.method
    model, info = apply_method(build_tiny(3), recipe.peft)
    if method != "vanilla":  # a fresh LoRA / adapter is the identity
        torch.testing.assert_close(predict(model, batch), base_out, atol=1e-6, rtol=0)

    before = {n: p.detach().clone() for n, p in params(model).items()}
    trainable = {n for n, p in params(model).items() if p.requires_grad}
    want_trainable, want_moved = expected(recipe)
    assert trainable == want_trainable
    with_grad = train_two_steps(model, recipe, batch)
    changed = {n for n, p in params(model).items() if not torch.equal(p, before[n])}
    assert changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:5]}"
    assert want_moved <= changed, f"did not train: {sorted(want_moved - changed)[:5]}"
    if method != "vanilla":  # gradients reach every adapter tensor (B/up non-zero by step 2)
        adapters = {n for n in trainable if ".lora_" in n}
        assert adapters <= with_grad, sorted(adapters - with_grad)[:5]

    # the meta-device count (`recipes --params`) is what the real model has
    count = tiny_count(recipe.peft.model_dump_json())
    assert (count.trainable, count.total) == (info.trainable, info.total)

    trained_out = predict(model, batch)
    assert not torch.equal(trained_out, base_out)
    folder = save_adapter(model, meta_for(recipe), tmp_path / "adapter")
    weights = folder / (
        "trainable_model.safetensors" if method == "vanilla" else "adapter_model.safetensors"
    )
    assert weight_bytes(weights) == count.adapter_bytes
    assert count.adapter_mb == pytest.approx(weights.stat().st_size / 1e6, rel=0.03)

    loaded, meta = load_adapter_model(folder)
    assert (meta.method, meta.scope, meta.num_classes) == (method, recipe.peft.scope, 3)
    assert torch.equal(predict(loaded, batch), trained_out)


@pytest.mark.parametrize("name", TRAINER_RUNS)
def test_recipe_trains_with_the_trainer(name, batch, tmp_path):
    recipe = tiny_recipe(name, tmp_path)
    result = train(recipe)
    assert result.steps == 2 and result.run_dir == tmp_path / recipe.name
    assert [h["step"] for h in result.history] == [2]
    summary = json.loads((result.run_dir / "train_summary.json").read_text())
    assert summary["steps"] == 2

    folder = result.run_dir / "adapter"
    model, meta = load_adapter_model(folder)
    assert (meta.method, meta.scope, meta.class_names) == (
        recipe.peft.method,
        recipe.peft.scope,
        CLASSES,
    )
    out = predict(model, batch)
    assert out.shape == (2, 1, 3, 64, 64) and torch.isfinite(out).all()
    vanilla = recipe.peft.method == "vanilla"
    weights = folder / ("trainable_model.safetensors" if vanilla else "adapter_model.safetensors")
    assert weight_bytes(weights) == tiny_count(recipe.peft.model_dump_json()).adapter_bytes


def test_models_share_their_method_settings():
    """The three models' recipes of one method/scope differ only in name, model and (the
    model's depth) encoder blocks, so the trainer runs above cover all 18."""

    def core(name: str) -> dict:
        d = load_recipe(RECIPES_DIR / f"{name}.yaml").model_dump(mode="json")
        d.pop("name")
        d["model"].pop("name")
        d["peft"].pop("layers")
        return d

    for pair in PAIRS:
        first, *others = (core(f"{m}/{pair}") for m in MODELS)
        assert all(o == first for o in others), pair
    for name in RECIPES:
        recipe = load_recipe(RECIPES_DIR / f"{name}.yaml")
        assert (recipe.model.name, f"{recipe.peft.method}_{recipe.peft.scope}") == tuple(
            name.split("/")
        )
        assert recipe.name == name.replace("/", "-")
