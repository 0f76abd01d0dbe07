"""`model.device_map`: per-device fractions -> a placement of SAM's vision layers.

On CPU the placement is checked on meta-device models with the real ViT-B/H shapes (no
weights), and the hooks that move activations are checked with every entry on "cpu" (the
same code path as a real split, one device). The real split runs where a GPU is present
(cuda:0 + cpu).
"""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import check_device_map
from transformers import SamModel

from sam_medft.config import PeftSettings, load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.models.device_map import (
    build_device_map,
    check_devices,
    describe,
    place_model,
    split_counts,
    validate_fractions,
)
from sam_medft.models.registry import architecture_config, build_tiny


def meta_model(name: str) -> SamModel:
    with torch.device("meta"):
        return SamModel(architecture_config(name))


def layer_devices(device_map: dict[str, str], n: int) -> list[str]:
    return [device_map[f"vision_encoder.layers.{i}"] for i in range(n)]


@pytest.mark.parametrize(
    "n, fractions, counts",
    [
        (12, {"cuda:0": 0.5, "cuda:1": 0.5}, [6, 6]),
        (32, {"cuda:0": 0.5, "cuda:1": 0.5}, [16, 16]),
        (12, {"cuda:0": 0.3, "cuda:1": 0.7}, [3, 9]),  # the study: i < int(12 * 0.3)
        (12, {"cuda:0": 0.1, "cuda:1": 0.7, "cuda:2": 0.2}, [1, 8, 3]),  # 0.1 + 0.7 = 0.7999...
        (32, {"cuda:0": 0.25, "cuda:1": 0.25, "cuda:2": 0.25, "cuda:3": 0.25}, [8, 8, 8, 8]),
    ],
)
def test_fractions_to_layer_counts(n, fractions, counts):
    assert split_counts(n, validate_fractions(fractions)) == counts


@pytest.mark.parametrize(
    "fractions, message",
    [
        ({"cuda:0": 0.5, "cuda:1": 0.4}, "sum to 0.9"),
        ({"cuda:0": 1.0, "cuda:1": 0.0}, "must be > 0"),
        ({"gpu0": 1.0}, "not a device"),
        ({"0": 0.5, "cuda:0": 0.5}, "names a device twice"),
        ({}, "is empty"),
    ],
)
def test_bad_fractions_are_explained(fractions, message):
    with pytest.raises(SamMedftError, match=message):
        validate_fractions(fractions)


def test_a_device_without_layers_is_refused():
    with pytest.raises(SamMedftError, match="gives cuda:0 no vision layer"):
        build_device_map(meta_model("sam-vit-base"), {"cuda:0": 0.05, "cuda:1": 0.95})


@pytest.mark.filterwarnings("ignore:The following device_map keys")
@pytest.mark.parametrize("name, depth", [("sam-vit-base", 12), ("sam-vit-huge", 32)])
def test_placement_of_the_real_architectures(name, depth):
    model = meta_model(name)
    dm = build_device_map(model, {"cuda:0": 0.5, "cuda:1": 0.5})
    check_device_map(model, dm)  # every parameter and buffer has a device
    half = depth // 2
    assert layer_devices(dm, depth) == ["cuda:0"] * half + ["cuda:1"] * half
    assert dm["vision_encoder.patch_embed"] == dm["vision_encoder.pos_embed"] == "cuda:0"
    for later in (
        "vision_encoder.neck",
        "prompt_encoder",
        "mask_decoder",
        "shared_image_embedding",
    ):
        assert dm[later] == "cuda:1"
    assert describe(dm).startswith(
        f"cuda:0: layers 0-{half - 1} + patch_embed, pos_embed; cuda:1: layers {half}-{depth - 1}"
    )
    # the blocks stay whole: no key inside a SamVisionLayer
    assert not [k for k in dm if k.startswith("vision_encoder.layers.") and k.count(".") > 2]


def test_devices_that_are_not_here_are_named():
    n = torch.cuda.device_count()
    dm = build_device_map(meta_model("sam-vit-base"), {f"cuda:{n}": 0.5, f"cuda:{n + 1}": 0.5})
    with pytest.raises(SamMedftError, match=f"names cuda:{n} but this machine has {n} CUDA GPU"):
        check_devices(dm)


def _loss(model, x):
    out = model(pixel_values=x, multimask_output=True)
    return out.pred_masks.float().square().mean() + out.iou_scores.float().sum()


def test_hooks_keep_forward_and_backward_exact_on_one_device():
    """The split's machinery (block moves, AlignDevicesHooks, PEFT applied after placement)
    with every entry on the CPU: same outputs and gradients as the plain model."""
    from sam_medft.adapters.methods import apply_method

    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    settings = PeftSettings(method="lora", scope="encdec", extra={"init_lora_weights": "gaussian"})
    torch.manual_seed(0)
    plain, _ = apply_method(build_tiny(3), settings)
    dm = build_device_map(build_tiny(3), {"cuda:0": 0.5, "cuda:1": 0.5})
    split_base = place_model(build_tiny(3), {k: "cpu" for k in dm})
    assert hasattr(split_base.vision_encoder.layers[0], "_hf_hook")
    torch.manual_seed(0)
    split, _ = apply_method(split_base, settings)
    _loss(plain, x).backward()
    _loss(split, x).backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    other = {n: p.grad for n, p in split.named_parameters() if p.requires_grad}
    assert grads.keys() == other.keys() and len(grads) > 10
    for n in grads:
        assert torch.equal(grads[n], other[n]), n


def test_trainer_runs_a_recipe_with_a_device_map(tmp_path):
    """The trainer path (check, place, prepare without moving, checkpoint) on a 1-device map."""
    from sam_medft.training.trainer import train

    r = load_recipe(
        None,
        [
            f"output_dir={tmp_path}",
            "name=split",
            "model.name=tiny",
            "data.source=synthetic",
            "data.synthetic.n_train=4",
            "data.synthetic.n_val=2",
            "data.synthetic.n_test=1",
            "data.synthetic.size=64",
            "data.binary=true",
            "peft.method=lora",
            "train.batch_size=2",
            "train.max_steps=2",
            "train.eval_every=2",
            "train.save_every=2",
            "train.log_with=none",
            "train.warmup_steps=0",
            "model.device_map={cpu: 1.0}",
        ],
    )
    result = train(r)
    assert result.steps == 2
    log = (tmp_path / "split" / "logs" / "train.log").read_text()
    assert "model split over devices: cpu: layers 0-3 + patch_embed, neck" in log
    assert (
        tmp_path / "split" / "checkpoints" / "checkpoint-00000002" / "trainable.safetensors"
    ).is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_split_between_cuda_and_cpu_trains():
    dm = build_device_map(build_tiny(3), {"cuda:0": 0.5, "cpu": 0.5})
    split = place_model(build_tiny(3), dm)
    assert split.vision_encoder.layers[0].attn.qkv.weight.device.type == "cuda"
    assert split.vision_encoder.layers[3].attn.qkv.weight.device.type == "cpu"
    assert split.vision_encoder.pos_embed.device.type == "cuda"
    assert split.mask_decoder.iou_token.weight.device.type == "cpu"
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    ref = build_tiny(3)
    loss_ref = _loss(ref, x)
    loss = _loss(split, x.cuda())
    assert loss.device.type == "cuda"  # outputs come back to the input's device
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-4)
    loss.backward()
    assert split.vision_encoder.layers[0].attn.qkv.weight.grad.device.type == "cuda"
    assert split.vision_encoder.layers[3].attn.qkv.weight.grad.device.type == "cpu"
