"""Original segment-anything checkpoints <-> transformers SamModel folders.

The tiny SamModel stands in for SAM: it is turned into an original-format state dict with
`to_original_state_dict`, saved as a real `.pth`, converted, and reloaded; outputs must be
identical. The mapping itself is pinned to the real segment-anything names and shapes on a
ViT-B built on the meta device.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import SamConfig, SamHQConfig, SamHQModel, SamModel, SamProcessor

from sam_medft.errors import SamMedftError
from sam_medft.models import convert
from sam_medft.models.convert import (
    convert_checkpoint,
    hf_key_to_original,
    original_key_to_hf,
    to_original_state_dict,
)
from sam_medft.models.registry import TINY_CONFIG, architecture_config, build_tiny

BOX = torch.tensor([[[20.0, 30.0, 180.0, 200.0]]])


class TrainingArgs:
    """Stands for the argparse/config objects training scripts pickle next to the weights."""

    lr = 1e-3


@pytest.fixture(scope="module")
def tiny() -> SamModel:
    return build_tiny()


@pytest.fixture(scope="module")
def original(tiny) -> dict[str, torch.Tensor]:
    return to_original_state_dict(tiny)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))


def _outputs(model: SamModel, pixels: torch.Tensor, boxes: torch.Tensor | None = None):
    with torch.no_grad():
        out = model(pixel_values=pixels, input_boxes=boxes)
    return out.pred_masks, out.iou_scores


def _assert_same_outputs(a: SamModel, b: SamModel, pixels: torch.Tensor) -> None:
    for boxes in (None, BOX):
        (ma, ia), (mb, ib) = _outputs(a, pixels, boxes), _outputs(b, pixels, boxes)
        assert ma.abs().max() > 0  # a dead model would make equality meaningless
        torch.testing.assert_close(mb, ma, rtol=0, atol=1e-6)
        torch.testing.assert_close(ib, ia, rtol=0, atol=1e-6)


def _nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]


# --- the mapping ------------------------------------------------------------------------


def test_original_names_and_shapes_match_segment_anything_vit_b():
    """Names and shapes as in sam_vit_b_01ec64.pth (segment_anything/modeling/*.py)."""
    with torch.device("meta"):
        model = SamModel(architecture_config("vit_b"))
    sd = to_original_state_dict(model)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert len(sd) == 314  # encoder 177 + prompt encoder 17 + mask decoder 120
    expected = {
        "image_encoder.pos_embed": (1, 64, 64, 768),
        "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
        "image_encoder.blocks.0.norm1.weight": (768,),
        "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),  # windowed, 14x14
        "image_encoder.blocks.2.attn.rel_pos_w": (127, 64),  # global, 64x64
        "image_encoder.blocks.11.mlp.lin2.weight": (768, 3072),
        "image_encoder.neck.0.weight": (256, 768, 1, 1),
        "image_encoder.neck.1.bias": (256,),
        "image_encoder.neck.2.weight": (256, 256, 3, 3),
        "image_encoder.neck.3.weight": (256,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        "prompt_encoder.point_embeddings.3.weight": (1, 256),
        "prompt_encoder.not_a_point_embed.weight": (1, 256),
        "prompt_encoder.no_mask_embed.weight": (1, 256),
        "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.1.weight": (4,),
        "prompt_encoder.mask_downscaling.3.weight": (16, 4, 2, 2),
        "prompt_encoder.mask_downscaling.4.bias": (16,),
        "prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
        "mask_decoder.iou_token.weight": (1, 256),
        "mask_decoder.mask_tokens.weight": (4, 256),
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight": (256, 128),
        "mask_decoder.transformer.layers.0.norm4.bias": (256,),
        "mask_decoder.transformer.norm_final_attn.weight": (256,),
        "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
        "mask_decoder.output_upscaling.1.weight": (64,),
        "mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
        "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight": (256, 256),
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
        "mask_decoder.iou_prediction_head.layers.1.weight": (256, 256),
        "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert not any("shared_image_embedding" in k or "vision_encoder" in k for k in sd)


@pytest.mark.parametrize(
    ("original", "hf"),
    [
        ("prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embed.2.weight"),
        ("prompt_encoder.mask_downscaling.4.bias", "prompt_encoder.mask_embed.layer_norm2.bias"),
        ("prompt_encoder.mask_downscaling.6.weight", "prompt_encoder.mask_embed.conv3.weight"),
        (
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            "prompt_encoder.shared_embedding.positional_embedding",
        ),
        ("image_encoder.neck.3.bias", "vision_encoder.neck.layer_norm2.bias"),
        ("image_encoder.blocks.7.norm2.weight", "vision_encoder.layers.7.layer_norm2.weight"),
        (
            "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight",
            "mask_decoder.output_hypernetworks_mlps.1.proj_in.weight",
        ),
        (
            "mask_decoder.output_hypernetworks_mlps.1.layers.1.bias",
            "mask_decoder.output_hypernetworks_mlps.1.layers.0.bias",
        ),
        (
            "mask_decoder.iou_prediction_head.layers.2.weight",
            "mask_decoder.iou_prediction_head.proj_out.weight",
        ),
        ("mask_decoder.output_upscaling.1.weight", "mask_decoder.upscale_layer_norm.weight"),
        (
            "mask_decoder.transformer.norm_final_attn.bias",
            "mask_decoder.transformer.layer_norm_final_attn.bias",
        ),
    ],
)
def test_tricky_keys_map_both_ways(original, hf):
    assert original_key_to_hf(original) == hf
    assert hf_key_to_original(hf) == original


def test_unknown_keys_are_not_renamed():
    for key in ("mask_token", "image_encoder.blocks.0.Adapter.fc1.weight", "decoder_pred.bias"):
        assert original_key_to_hf(key) is None


def test_mapping_is_an_exact_inverse(tiny, original):
    mapped, _, unknown = convert.map_to_hf(original)
    assert unknown == []
    state = tiny.state_dict()
    assert set(mapped) == set(state)
    assert all(torch.equal(mapped[k], state[k]) for k in state)


# --- full checkpoints -------------------------------------------------------------------


def test_full_checkpoint_round_trip_identical_outputs(tmp_path, tiny, original, pixels):
    src = tmp_path / "sam_tiny.pth"
    torch.save(original, src)
    out = tmp_path / "converted"
    report = convert_checkpoint(src, out)  # arch inferred from the shapes
    assert (report.layout, report.arch, report.converted, report.ignored) == (
        "full",
        "tiny",
        202,
        [],
    )
    assert {"config.json", "model.safetensors", "processor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert "converted" in str(report) and str(src) in str(report)
    loaded = SamModel.from_pretrained(out).eval()
    _assert_same_outputs(tiny, loaded, pixels)
    processor = SamProcessor.from_pretrained(out)
    assert processor.image_processor.size["longest_edge"] == 256
    assert json.loads((out / "config.json").read_text())["sam_medft_normalization"] == "sam"


def test_model_wrapper_module_prefix_and_unknown_keys(tmp_path, tiny, original):
    sd = {f"module.{k}": v for k, v in original.items()}
    sd["module.image_encoder.blocks.0.Adapter.fc1.weight"] = torch.zeros(3)
    src = tmp_path / "medsam_vit_tiny.pth"
    torch.save({"model": sd, "epoch": 7}, src)
    out = tmp_path / "out"
    report = convert_checkpoint(src, out, arch="tiny")
    assert any(k.startswith("image_encoder.blocks.0.Adapter.fc1.weight") for k in report.ignored)
    assert any(k.startswith("epoch") for k in report.ignored)
    assert report.normalization == "medsam"  # guessed from the file name
    state = SamModel.from_pretrained(out).state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny.state_dict().items())


def test_half_precision_safetensors_and_config_arch(tmp_path, original):
    half = {k: v.to(torch.bfloat16) for k, v in original.items()}
    src = tmp_path / "sam.safetensors"
    save_file(half, str(src))
    report = convert_checkpoint(src, tmp_path / "out", arch=SamConfig(**TINY_CONFIG))
    assert report.layout == "full"
    assert any("bfloat16" in n for n in report.notes)
    back = to_original_state_dict(SamModel.from_pretrained(tmp_path / "out"))
    assert all(
        back[k].dtype == torch.float32 and torch.equal(back[k], v.float()) for k, v in half.items()
    )


def test_multiclass_decoder_follows_the_checkpoint(tmp_path):
    model = build_tiny(num_classes=2)
    src = tmp_path / "study_ckpt.pth"
    torch.save(to_original_state_dict(model), src)
    report = convert_checkpoint(src, tmp_path / "out", arch="tiny")
    assert any("2 multimask outputs" in n for n in report.notes)
    loaded = SamModel.from_pretrained(tmp_path / "out")
    assert loaded.config.mask_decoder_config.num_multimask_outputs == 2
    assert torch.equal(
        loaded.mask_decoder.mask_tokens.weight, model.mask_decoder.mask_tokens.weight
    )


# --- encoder-only weights ---------------------------------------------------------------


def test_encoder_only_takes_decoder_from_base(tmp_path, tiny):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ssl = SamModel(SamConfig(**TINY_CONFIG))  # stands for an MAE-pretrained encoder
    encoder = {
        k.removeprefix("image_encoder."): v
        for k, v in to_original_state_dict(ssl).items()
        if k.startswith("image_encoder.")
    }
    encoder["mask_token"] = torch.zeros(1, 1, 64)
    encoder["decoder_pred.weight"] = torch.zeros(8, 64)
    encoder["norm.weight"] = torch.ones(64)
    src = tmp_path / "mae_encoder.pth"
    torch.save({"model": encoder}, src)
    base = tmp_path / "base"
    tiny.save_pretrained(base)

    with pytest.raises(SamMedftError, match="--base-model"):
        convert_checkpoint(src, tmp_path / "nobase")
    _nothing_written(tmp_path, tmp_path / "nobase")

    report = convert_checkpoint(src, tmp_path / "out", base_model=str(base))
    assert report.layout == "encoder"
    assert {"mask_token (no SamModel counterpart)", "norm.weight (no SamModel counterpart)"} <= set(
        report.ignored
    )
    assert any(k.startswith("decoder_pred.weight") for k in report.ignored)
    assert report.from_base and not any(k.startswith("vision_encoder.") for k in report.from_base)
    got = SamModel.from_pretrained(tmp_path / "out").state_dict()
    for k, v in ssl.state_dict().items():
        if k.startswith("vision_encoder."):
            assert torch.equal(got[k], v), k
    for k, v in tiny.state_dict().items():
        if not k.startswith("vision_encoder."):
            assert torch.equal(got[k], v), k


def test_encoder_missing_weights_is_an_error(tmp_path, tiny, original):
    encoder = {k: v for k, v in original.items() if k.startswith("image_encoder.")}
    del encoder["image_encoder.neck.2.weight"]
    src = tmp_path / "enc.pth"
    torch.save(encoder, src)
    base = tmp_path / "base"
    tiny.save_pretrained(base)
    with pytest.raises(SamMedftError, match=r"image_encoder\.neck\.2\.weight"):
        convert_checkpoint(src, tmp_path / "out", base_model=str(base))
    _nothing_written(tmp_path, tmp_path / "out")


def test_base_model_must_exist_and_be_plain_sam(tmp_path, original):
    encoder = {k: v for k, v in original.items() if k.startswith("image_encoder.")}
    src = tmp_path / "enc.pth"
    torch.save(encoder, src)
    with pytest.raises(SamMedftError, match="does not exist"):
        convert_checkpoint(src, tmp_path / "out", base_model=str(tmp_path / "no_such_folder"))
    hq = tmp_path / "hq"
    SamHQModel(SamHQConfig(**TINY_CONFIG)).save_pretrained(hq)
    with pytest.raises(SamMedftError, match="sam_hq model"):
        convert_checkpoint(src, tmp_path / "out", base_model=str(hq))
    _nothing_written(tmp_path, tmp_path / "out")


def test_inverse_refuses_unmerged_adapters(tiny, original):
    peft_model = get_peft_model(
        copy.deepcopy(tiny), LoraConfig(r=2, target_modules=r".*vision_encoder.*\.qkv")
    )
    with pytest.raises(SamMedftError, match="merge_and_unload"):
        to_original_state_dict(peft_model.base_model.model)
    merged = to_original_state_dict(peft_model.merge_and_unload())  # B=0: still the original
    assert merged.keys() == original.keys()
    assert all(torch.equal(merged[k], v) for k, v in original.items())


# --- errors leave nothing behind ----------------------------------------------------------


def test_missing_keys_are_an_error(tmp_path, original):
    sd = dict(original)
    del sd["mask_decoder.iou_token.weight"]
    del sd["prompt_encoder.point_embeddings.1.weight"]
    src = tmp_path / "cut.pth"
    torch.save(sd, src)
    out = tmp_path / "out"
    with pytest.raises(SamMedftError) as err:
        convert_checkpoint(src, out)
    assert "mask_decoder.iou_token.weight" in str(err.value)
    assert "prompt_encoder.point_embeddings.1.weight" in str(err.value)
    _nothing_written(tmp_path, out)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, original):
    sd = dict(original)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    src = tmp_path / "bad.pth"
    torch.save(sd, src)
    out = tmp_path / "out"
    with pytest.raises(SamMedftError) as err:
        convert_checkpoint(src, out)
    msg = str(err.value)
    assert "prompt_encoder.no_mask_embed.weight" in msg
    assert "(1, 128)" in msg and "(1, 256)" in msg
    _nothing_written(tmp_path, out)


def test_arch_mismatch_names_both(tmp_path, original):
    src = tmp_path / "sam.pth"
    torch.save(original, src)
    out = tmp_path / "out"
    with pytest.raises(SamMedftError) as err:
        convert_checkpoint(src, out, arch="vit_b")
    msg = str(err.value)
    assert (
        "vit_b" in msg and "tiny" in msg and "hidden_size: checkpoint 64 vs --arch vit_b 768" in msg
    )
    with pytest.raises(SamMedftError, match="unknown --arch"):
        convert_checkpoint(src, out, arch="vit_x")
    _nothing_written(tmp_path, out)


def test_pickled_code_is_refused(tmp_path, original):
    src = tmp_path / "checkpoint_best.pth"
    torch.save({"model": original, "args": TrainingArgs()}, src)
    out = tmp_path / "out"
    with pytest.raises(SamMedftError) as err:
        convert_checkpoint(src, out)
    msg = str(err.value)
    assert str(src) in msg and "arbitrary code execution" in msg
    assert "TrainingArgs" in msg and "safetensors" in msg and "state dict" in msg
    _nothing_written(tmp_path, out)


def test_not_a_checkpoint(tmp_path):
    src = tmp_path / "sam.pth"
    src.write_bytes(b"<html>not found</html>")
    with pytest.raises(SamMedftError, match="not a readable PyTorch checkpoint"):
        convert_checkpoint(src, tmp_path / "out")
    with pytest.raises(SamMedftError, match="does not exist"):
        convert_checkpoint(tmp_path / "nope.pth", tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path, original):
    src = tmp_path / "sam.pth"
    torch.save(original, src)
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    first = (out / "model.safetensors").read_bytes()
    with pytest.raises(SamMedftError, match="holds an earlier conversion.*--overwrite"):
        convert_checkpoint(src, out)
    (out / "model.safetensors").write_bytes(b"stale")
    convert_checkpoint(src, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sam.pth"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_overwrite_never_replaces_a_folder_of_the_users(tmp_path, original, overwrite):
    """A folder convert did not write (no conversion.json), or the one holding the checkpoint,
    is refused whatever --overwrite says, and left as it was."""
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("keep me")
    src = mine / "sam.pth"
    torch.save(original, src)
    with pytest.raises(SamMedftError, match="holds the checkpoint") as e:
        convert_checkpoint(src, mine, overwrite=overwrite)
    assert "--overwrite" not in str(e.value)
    other = tmp_path / "models"
    other.mkdir()
    (other / "notes.txt").write_text("mine too")
    with pytest.raises(SamMedftError, match="not written by `sam-medft convert`") as e:
        convert_checkpoint(src, other, overwrite=overwrite)
    assert "--overwrite" not in str(e.value)
    assert (mine / "thesis.txt").read_text() == "keep me" and src.is_file()
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_failure_while_writing_leaves_nothing(tmp_path, original, monkeypatch):
    """A write that dies half-way (disk full) removes its partial folder."""
    src = tmp_path / "sam.pth"
    torch.save(original, src)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "_processor", disk_full)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(src, out)
    _nothing_written(tmp_path, out)
