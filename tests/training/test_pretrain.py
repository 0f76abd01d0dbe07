"""Setup 3: masked image modelling pretrains the encoder, and fine-tuning starts from it.

Real parts throughout: the tiny SamModel's encoder, the one Trainer (accelerate, checkpoint,
run folder), the synthetic data set on disk, the saved safetensors files.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from launching import accelerate_bin, free_port, run_env
from safetensors.torch import load_file

from sam_medft.adapters.artifact import BASE_ENCODER_FILE, load_adapter_model
from sam_medft.config import PretrainConfig, load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.models.masked_image import MaskedImageModel
from sam_medft.models.registry import build_tiny
from sam_medft.tasks.masked_image import MaskedImageTask, random_patch_masks
from sam_medft.training.pretrain import pretrain
from sam_medft.training.step import optimizer_step
from sam_medft.training.trainer import build_model, train

SETUPS = Path(__file__).resolve().parents[2] / "recipes" / "setups"
SMALL = ["data.synthetic.n_train=8", "data.synthetic.n_val=4", "data.synthetic.n_test=4",
         "train.log_with=none", "train.batch_size=4", "train.warmup_steps=0"]


def test_masks_cover_the_ratio_in_squares():
    cfg = PretrainConfig(mask_ratio=0.6, mask_patch_size=32)
    m = random_patch_masks(3, 16, 16, cfg, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 16, 16) and m.dtype == torch.bool
    # 8 x 8 squares of 2 x 2 patches, round(0.6 * 64) = 38 of them masked in every image
    assert (m.flatten(1).sum(1) == 38 * 4).all()
    assert torch.equal(m[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2), m)


def test_mask_token_replaces_only_masked_patches():
    """No mask: the encoder's own output; masked patches: the learned token reaches the
    loss (it gets a gradient), the encoder's patch embedding of them does not matter."""
    tiny = build_tiny(2)
    mim = MaskedImageModel(tiny.vision_encoder)
    x = torch.randn(2, 3, 256, 256)
    none = torch.zeros(2, 16, 16, dtype=torch.bool)
    with torch.no_grad():
        plain = tiny.vision_encoder(x).last_hidden_state
        mim(x, none)
        hooked = mim.vision_encoder(x).last_hidden_state  # hook inactive outside forward
    assert torch.allclose(plain, hooked)
    task = MaskedImageTask(PretrainConfig())
    out = task.forward(mim, {"pixel_values": x})
    task.loss(out, {"pixel_values": x}).backward()
    assert mim.mask_token.grad is not None and mim.mask_token.grad.abs().sum() > 0
    # changing the pixels inside one masked square leaves the tokens there unseen
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, :2, :2] = True
    y = x[:1].clone()
    y[..., :32, :32] += 5.0
    with torch.no_grad():
        assert torch.allclose(mim(x[:1], mask), mim(y, mask), atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-mobilesam"])
def test_training_steps_lower_the_masked_reconstruction_loss(name):
    """SAM's ViT (channels-last patch tokens) and MobileSAM's TinyViT (a channels-first map at
    1/4 resolution) both learn to reconstruct the masked squares."""
    torch.manual_seed(0)
    mim = MaskedImageModel(build_tiny(2, name=name).vision_encoder).train()
    # smooth images (the reconstruction is learnable): low-frequency noise, upsampled
    x = torch.nn.functional.interpolate(torch.randn(4, 3, 8, 8), size=256, mode="bilinear")
    batch = {"pixel_values": x, "index": torch.arange(4)}
    fixed = MaskedImageTask(PretrainConfig(), seed=0)
    train_task = MaskedImageTask(PretrainConfig())
    opt = torch.optim.AdamW(mim.parameters(), lr=1e-3)

    def val_loss() -> float:
        with torch.no_grad():
            return float(fixed.loss(fixed.forward(mim, batch), batch))

    before = val_loss()
    for _ in range(25):
        optimizer_step(train_task, mim, batch, opt, frozen_encoder=False)
    after = val_loss()
    assert after < 0.7 * before, (before, after)


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    recipe = load_recipe(SETUPS / "setup3_pretrain.yaml", [
        f"output_dir={out}", "name=pre", *SMALL, "train.max_steps=12", "train.eval_every=6",
        "train.save_every=6", "pretrain.splits=[train, test]"])
    return pretrain(recipe), recipe


def test_pretrain_run_writes_the_encoder_and_lowers_the_loss(pretrain_run):
    result, recipe = pretrain_run
    run = result.run_dir
    summary = json.loads((run / "train_summary.json").read_text())
    losses = [h["val_recon_loss"] for h in summary["history"]]
    assert [h["step"] for h in summary["history"]] == [6, 12]
    assert losses[-1] < losses[0]
    meta = json.loads((run / "encoder" / "sam_medft_encoder.json").read_text())
    assert meta["base_model"] == "tiny" and meta["step"] == 12
    tensors = load_file(str(run / "encoder" / "model.safetensors"))
    assert set(tensors) == {f"vision_encoder.{k}" for k in build_tiny(3).vision_encoder.state_dict()}
    assert (run / "checkpoints").is_dir() and (run / "recipe.yaml").is_file()


def test_pretrain_resumes(pretrain_run, tmp_path):
    """`--resume` continues the same run from its last checkpoint (the Trainer's machinery)."""
    result, recipe = pretrain_run
    more = recipe.model_copy(deep=True)
    more.train.max_steps = 14
    resumed = pretrain(more, resume=True)
    assert resumed.steps == 14
    assert [h["step"] for h in resumed.history][:2] == [6, 12]


def test_fine_tuning_starts_from_the_pretrained_encoder(pretrain_run, tmp_path):
    result, _ = pretrain_run
    saved = load_file(str(result.run_dir / "encoder" / "model.safetensors"))
    recipe = load_recipe(SETUPS / "setup3_finetune.yaml", [
        f"output_dir={tmp_path}", "name=ft", *SMALL, "train.max_steps=2", "train.eval_every=2",
        f"model.encoder_weights={result.run_dir}"])
    from sam_medft.data.labels import LabelMap

    model, _, _ = build_model(recipe, LabelMap({0: "background", 128: "a", 255: "b"}))
    base = model.get_base_model().vision_encoder.state_dict()
    random_init = build_tiny(3).vision_encoder.state_dict()
    key = "layers.0.attn.qkv.base_layer.weight"  # LoRA wraps qkv; the frozen weight underneath
    assert torch.equal(base[key], saved["vision_encoder.layers.0.attn.qkv.weight"])
    assert not torch.equal(base[key], random_init["layers.0.attn.qkv.weight"])
    assert torch.equal(base["patch_embed.projection.weight"],
                       saved["vision_encoder.patch_embed.projection.weight"])
    # the trained artifact carries that encoder: reloading rebuilds it, not the random one
    run = train(recipe).run_dir
    assert (run / "adapter" / BASE_ENCODER_FILE).is_file()
    loaded, _ = load_adapter_model(run / "adapter")
    again = loaded.get_base_model().vision_encoder.state_dict()
    assert torch.equal(again["patch_embed.projection.weight"],
                       saved["vision_encoder.patch_embed.projection.weight"])


def test_encoder_weights_mistakes_are_one_message(tmp_path, pretrain_run):
    from sam_medft.data.labels import LabelMap

    labels = LabelMap({0: "background", 128: "a", 255: "b"})
    missing = load_recipe(SETUPS / "setup3_finetune.yaml",
                          [f"model.encoder_weights={tmp_path / 'nope'}"])
    with pytest.raises(SamMedftError, match="no model.safetensors"):
        build_model(missing, labels)
    other = load_recipe(SETUPS / "setup3_finetune.yaml", [
        "model.name=sam-vit-base", "model.random_init=true",
        f"model.encoder_weights={pretrain_run[0].run_dir}"])
    with pytest.raises(SamMedftError, match="does not fit model.name's image encoder"):
        build_model(other, labels)
    both = load_recipe(SETUPS / "setup3_finetune.yaml", ["model.adapter=runs/x"])
    with pytest.raises(SamMedftError, match="set only one of them"):
        build_model(both, labels)


def test_pretrain_on_a_folder_of_unlabelled_images(tmp_path):
    """`pretrain.images`: image files without any mask (here the synthetic images/ folder
    alone); a file that is not an image is named before training starts."""
    from sam_medft.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "synth", n_train=4, n_val=0, n_test=0, size=64, seed=3)
    scans = tmp_path / "scans"
    (tmp_path / "synth" / "images").rename(scans)  # no masks anywhere near
    recipe = load_recipe(SETUPS / "setup3_pretrain.yaml", [
        f"output_dir={tmp_path / 'runs'}", "name=scans", f"pretrain.images={scans}",
        "pretrain.splits=[]", "train.max_steps=1", "train.batch_size=2",
        "train.log_with=none"])
    result = pretrain(recipe)
    assert (result.run_dir / "encoder" / "model.safetensors").is_file()
    assert "4 images (pretrain.images)" in (result.run_dir / "logs" / "train.log").read_text()
    (scans / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SamMedftError, match="unreadable image.*broken.png"):
        pretrain(recipe, overwrite=True)


def test_pretrain_under_two_process_ddp(tmp_path):
    """`accelerate launch` with 2 gloo processes (DDP): every rank trains, the main process
    writes the encoder and the summary once."""
    cmd = [accelerate_bin(), "launch", "--config_file",
           str(SETUPS.parents[1] / "accelerate_configs" / "cpu.yaml"), "--multi_gpu",
           "--num_processes", "2", "--main_process_port", str(free_port()),
           "-m", "sam_medft", "pretrain", str(SETUPS / "setup3_pretrain.yaml"),
           f"output_dir={tmp_path}", "name=ddp", *SMALL, "train.max_steps=2",
           "train.eval_every=2", "train.save_every=2", "train.batch_size=2"]
    done = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["history"][0]["n_images"] == 4
    assert (tmp_path / "ddp" / "encoder" / "model.safetensors").is_file()


def test_pretrain_run_on_mobilesam_records_its_base(tmp_path):
    """The TinyViT encoder pretrains through the same command, and the encoder file names
    its own base (not the ViT `tiny`), so fine-tuning refuses a mismatched model.name."""
    recipe = load_recipe(SETUPS / "setup3_pretrain.yaml", [
        f"output_dir={tmp_path}", "name=pre_mobile", *SMALL, "model.name=tiny-mobilesam",
        "train.max_steps=2", "train.eval_every=2", "train.save_every=2"])
    run = pretrain(recipe).run_dir
    meta = json.loads((run / "encoder" / "sam_medft_encoder.json").read_text())
    assert meta["base_model"] == "tiny-mobilesam"
    tensors = load_file(str(run / "encoder" / "model.safetensors"))
    expected = build_tiny(3, name="tiny-mobilesam").vision_encoder.state_dict()
    assert set(tensors) == {f"vision_encoder.{k}" for k in expected}
