"""`sam-medft pretrain`: self-supervised pretraining of the image encoder (Setup 3).

The one `Trainer` runs it (accelerate, bf16, multi-GPU, resume, checkpoints, tensorboard,
progress): this subclass only swaps the set-up steps that differ. The data are the images of
`pretrain.splits` (masks are never used), the model is the encoder with a mask token and a
pixel decoder (`models.masked_image`), the task is masked image modelling
(`tasks.masked_image`), validation is the reconstruction loss on the val split with fixed
masks, and the kept artifact is `runs/<name>/encoder/` (the encoder alone, as SamModel names
it), which fine-tuning starts from with `model.encoder_weights=runs/<name>`.
"""

from __future__ import annotations

import logging
import math

import torch
from accelerate.utils import set_seed

from sam_medft.config import Recipe
from sam_medft.data.labels import LabelMap
from sam_medft.data.mixture import ConcatSource, check_data, data_splits
from sam_medft.data.sources import SampleSource
from sam_medft.data.unlabelled import UnlabelledSource
from sam_medft.errors import SamMedftError
from sam_medft.models.encoder_weights import load_encoder_weights, save_encoder
from sam_medft.models.loading import load_base_model, model_geometry, resolve_model_name
from sam_medft.models.masked_image import MaskedImageModel
from sam_medft.runs import ENCODER_DIR
from sam_medft.tasks.masked_image import MaskedImageTask, check_mask_geometry
from sam_medft.training.presets import apply_preset
from sam_medft.training.trainer import Trainer, TrainResult, enable_speedups

log = logging.getLogger("sam_medft.training")


def pretrain(recipe: Recipe, *, resume: bool = False, overwrite: bool = False,
             splits: dict[str, SampleSource] | None = None) -> TrainResult:
    """Pretrain the image encoder as `recipe` says (its `pretrain` section); -> the run.
    `best_dice` of the result is minus the best validation reconstruction loss."""
    return PretrainTrainer(recipe, resume=resume, overwrite=overwrite, splits=splits).run()


def pretrain_splits(recipe: Recipe, splits: dict[str, SampleSource],
                    unlabelled: SampleSource | None = None) -> dict[str, SampleSource]:
    """train: the images of every split in `pretrain.splits` (plus `unlabelled`, the
    `pretrain.images`); val: the val split when it is not among them (else no validation:
    it would score images the encoder saw)."""
    wanted = recipe.pretrain.splits
    missing = [s for s in wanted if s not in splits or not len(splits[s])]
    if missing:
        raise SamMedftError(f"pretrain.splits names {missing}, which the data section does not "
                            f"provide (it has {sorted(splits)}); e.g. pretrain.splits=[train]")
    parts = [(s, splits[s]) for s in wanted]
    if unlabelled is not None:
        parts.append(("unlabelled", unlabelled))
    if not parts:
        raise SamMedftError("nothing to pretrain on: pretrain.splits is empty and "
                            "pretrain.images is not set")
    train = parts[0][1] if len(parts) == 1 else ConcatSource(
        [src for _, src in parts], [name for name, _ in parts])
    out = {"train": train}
    if "val" in splits and "val" not in wanted and len(splits["val"]):
        out["val"] = splits["val"]
    return out


class PretrainTrainer(Trainer):
    """The Trainer with the masked-image-modelling model, task, validation and artifact."""

    def setup_data(self) -> None:
        self.recipe, note = apply_preset(self.recipe)
        if note:
            log.info("%s", note)
        cfg = self.recipe.pretrain
        unlabelled = (UnlabelledSource.from_path(cfg.images, self.recipe.data.intensity)
                      if cfg.images is not None else None)
        if cfg.splits or self.given_splits:
            report = check_data(self.recipe.data, sources=self.given_splits)
            report.raise_for_errors()  # unreadable images fail now; masks only need to decode
            self.label_map = report.label_map
            splits = self.given_splits or data_splits(self.recipe.data)
        else:  # the unlabelled images alone: the data section is not read
            self.label_map, splits = LabelMap(binary=True), {}
        self.splits = pretrain_splits(self.recipe, splits, unlabelled)
        log.info("pretraining on %d images (%s), masks unused", len(self.splits["train"]),
                 "+".join([*cfg.splits, *(["pretrain.images"] if unlabelled else [])]))

    def setup_model(self) -> None:
        recipe, m = self.recipe, self.recipe.model
        if m.adapter:
            raise SamMedftError(f"model.adapter={m.adapter}: pretraining starts from model.name "
                                f"(and model.encoder_weights to continue an earlier "
                                f"pretraining), not from a fine-tuned adapter; remove it")
        set_seed(recipe.train.seed)
        spec = resolve_model_name(m.name, m.normalization, random_init=m.random_init)
        base = load_base_model(spec, 1, revision=m.revision,
                               attn_implementation=m.attn_implementation)
        if m.encoder_weights:  # continue from an earlier pretraining
            load_encoder_weights(base, m.encoder_weights)
        vcfg = base.config.vision_config
        check_mask_geometry(recipe.pretrain, vcfg.patch_size, vcfg.image_size)
        self.geometry = model_geometry(base)
        self.model = MaskedImageModel(base.vision_encoder)
        if recipe.train.activation_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        enable_speedups(self.model, recipe)
        self.base_id = spec.source  # tiny, tiny-mobilesam: their own names
        self.normalization = spec.normalization
        self.task = MaskedImageTask(recipe.pretrain)
        self.val_task = MaskedImageTask(recipe.pretrain, seed=recipe.train.seed)
        self.frozen_encoder = False
        n = sum(p.numel() for p in self.model.parameters())
        log.info("masked image modelling: %d trainable parameters (encoder + mask token + "
                 "decoder), mask ratio %.2f, %d px squares", n, recipe.pretrain.mask_ratio,
                 recipe.pretrain.mask_patch_size)

    @torch.no_grad()
    def reconstruction_loss(self) -> dict:
        """The masked L1 error over the val split (the same masks at every validation)."""
        model, accelerator = self.model, self.accelerator
        was = model.training
        model.eval()
        scores = []
        for batch in self.val_dl:
            batch = self.data.finish_val(batch)
            with accelerator.autocast():
                out = self.val_task.forward(model, batch)
            scores.append(accelerator.gather_for_metrics(self.val_task.score(out, batch)).cpu())
        model.train(was)
        return self.val_task.summarize(torch.cat(scores))

    def evaluate_and_select(self, step: int) -> bool:
        s, accelerator = self.state, self.accelerator
        metrics = self.reconstruction_loss()
        loss = metrics["recon_loss"]
        s.history.append({"step": step, "val_recon_loss": loss, "n_images": metrics["n_images"]})
        accelerator.log({"val/recon_loss": loss}, step=step)
        # best_dice holds minus the best loss (higher is better, as the loop expects); the
        # first validation is the best so far whatever its loss (an L1 may exceed 1)
        if not math.isnan(loss) and (not s.best_step or -loss > s.best_dice):
            s.best_dice, s.best_step, s.bad_evals = -loss, step, 0
            self.save_adapter()
        else:
            s.bad_evals += 1
        log.info("step %d: validation masked-reconstruction L1 %.4f over %d images; best %.4f "
                 "at step %d", step, loss, metrics["n_images"], -s.best_dice, s.best_step)
        patience = self.recipe.train.patience
        return patience is not None and s.bad_evals > patience

    def final_class_report(self) -> dict:
        return {}

    def save_adapter(self) -> None:
        """The encoder (not an adapter): `runs/<name>/encoder/`."""
        accelerator = self.accelerator
        inner = accelerator.unwrap_model(self.model)
        if not accelerator.is_main_process:
            return
        meta = {"kind": "sam_medft pretrained image encoder", "base_model": self.base_id,
                "normalization": self.normalization, "input_size": self.geometry.input_size,
                "step": self.state.step, "objective": "masked image modelling (SimMIM, L1)",
                "pretrain": self.recipe.pretrain.model_dump(mode="json"),
                "val_recon_loss": -self.state.best_dice if self.state.best_step else None,
                "use": f"fine-tune with model.name={self.recipe.model.name} "
                       f"model.encoder_weights={self.run_folder.root}"}
        save_encoder(inner.encoder_state_dict(), self.run_folder.root / ENCODER_DIR, meta)

    def summary(self, seconds: float, classes: dict) -> dict:
        s = self.state
        return {"objective": "masked image modelling", "best_val_recon_loss":
                -s.best_dice if s.best_step and self.val_dl is not None else None,
                "best_step": s.best_step, "steps": s.step, "train_seconds": round(seconds, 2),
                "encoder": str(self.run_folder.root / ENCODER_DIR), "history": s.history}
