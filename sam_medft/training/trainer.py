"""The training loop, driven by accelerate (one CPU, one GPU, DDP, FSDP2 or a split model).

Order matters for users: the run folder, the data check and the model load all happen
before the first step, so every mistake a user can make fails in seconds and leaves only
the log behind. Only the main process writes files (adapter, checkpoints, logs), and it
holds the run folder's lock (`sam_medft.runs`) from the first check to the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from accelerate import (
    Accelerator,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    PartialState,
)
from accelerate.utils import (
    DistributedType,
    ProjectConfiguration,
    broadcast_object_list,
    parse_flag_from_env,
    set_seed,
)
from tqdm.auto import tqdm

from sam_medft.adapters.artifact import (
    base_from_run,
    is_run_model,
    load_adapter_model,
    save_adapter,
)
from sam_medft.adapters.methods import (
    DECODER_HEADS,
    apply_method,
    check_settings,
    encoder_is_frozen,
)
from sam_medft.config import Recipe
from sam_medft.data.check import RARE_IMAGE_SHARE, RARE_PIXEL_SHARE, RareClass
from sam_medft.data.dataset import ModelFrameSpec
from sam_medft.data.mixture import ConcatSource, check_data, data_splits
from sam_medft.data.sources import SampleSource
from sam_medft.data.volume_source import volume_settings
from sam_medft.errors import Interrupted, SamMedftError
from sam_medft.files import disk_errors, write_text_atomic
from sam_medft.hub import resolve_run
from sam_medft.models.device_map import (
    build_device_map,
    check_devices,
    describe,
    place_model,
    validate_fractions,
)
from sam_medft.models.encoder_weights import load_encoder_weights, read_encoder_tensors
from sam_medft.models.fast_attention import enable_fast_attention, enable_regional_compile
from sam_medft.models.loading import load_base_model, model_geometry, resolve_model_name
from sam_medft.models.registry import architecture_config
from sam_medft.precision import device_type, resolve_precision
from sam_medft.runs import AdapterMeta, RunFolder, RunLock, find_adapter_folder
from sam_medft.tasks import task_for
from sam_medft.training.checkpoint import (
    is_sharded,
    list_checkpoints,
    resume_checkpoint,
    save_checkpoint,
)
from sam_medft.training.data_pipeline import (
    build_stores,
    build_train_data,
    remove_disk_stores,
    transform_on_accelerator,
)
from sam_medft.training.embedding_cache import embedding_cache
from sam_medft.training.presets import apply_preset
from sam_medft.training.schedules import build_scheduler
from sam_medft.training.step import optimizer_step
from sam_medft.training.validate import validate

log = logging.getLogger("sam_medft.training")


class TrainingInterrupted(Interrupted):
    """SIGTERM or Ctrl-C arrived: the step finished, a checkpoint was written, the run can be
    resumed (exit status 3)."""


@dataclass
class TrainResult:
    run_dir: Path
    best_dice: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


# ---- set-up -----------------------------------------------------------------------------


def prepare_run_dir(recipe: Recipe, *, resume: bool, overwrite: bool,
                    state) -> tuple[RunFolder, RunLock | None]:
    """The run folder, ready and locked (main process; the lock is None elsewhere). The main
    process decides and tells the others, so every process stops with the same message."""
    run = RunFolder.for_recipe(recipe)
    lock, failure = None, None
    if state.is_main_process:
        try:
            lock = run.open_for_training(resume=resume, overwrite=overwrite)
        except BaseException as e:
            failure = e
    message = None if failure is None else str(failure)
    if state.num_processes > 1:
        message = broadcast_object_list([message])[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise SamMedftError(message)
    return run, lock


def attach_log_file(path: Path) -> logging.Handler:
    with disk_errors(path, "the training log"):
        handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("sam_medft").addHandler(handler)
    logging.getLogger("sam_medft").setLevel(logging.INFO)
    return handler


def build_accelerator(recipe: Recipe, run_dir: Path, model: torch.nn.Module | None = None):
    t = recipe.train
    mp = resolve_precision(t.mixed_precision, device_type())
    unused = trains_prompt_encoder(model) if model is not None else (
        recipe.peft.method == "vanilla" and recipe.peft.scope == "encdec")
    log_with = None if t.log_with == "none" else t.log_with
    # pinned batches are copied to the GPU without blocking the host (a blocking copy would
    # wait for the queued step and stall the pipeline once per batch)
    loader_config = DataLoaderConfiguration(non_blocking=torch.cuda.is_available())
    return Accelerator(
        mixed_precision=mp,
        dataloader_config=loader_config,
        gradient_accumulation_steps=t.grad_accum,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
        step_scheduler_with_optimizer=False,
    )


def trains_prompt_encoder(model: torch.nn.Module) -> bool:
    """DDP must look for unused parameters when the prompt encoder trains: automatic mode
    uses only its no-mask embedding, point mode never its box corners or mask convs. Every
    other trainable tensor reaches the loss (the IoU head through the IoU loss)."""
    return any(p.requires_grad for n, p in model.named_parameters() if "prompt_encoder." in n)


def init_state():
    """accelerate's process state, created first with the CPU flag: `PartialState()` reads
    ACCELERATE_USE_CPU only through `Accelerator`, so a torchrun-launched CPU run (gloo)
    would otherwise come up as N separate single-process runs. Several processes on a
    machine without any accelerator are a CPU run too."""
    has_accelerator = getattr(torch, "accelerator", None)
    has_accelerator = has_accelerator.is_available() if has_accelerator else torch.cuda.is_available()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not has_accelerator))


def check_launch(recipe: Recipe) -> None:
    """Launch-mode mistakes, before any model loads."""
    state = PartialState()
    if recipe.model.device_map:
        validate_fractions(recipe.model.device_map)
        if state.num_processes > 1:
            raise SamMedftError(
                f"model.device_map splits one model over several GPUs inside ONE process, but this "
                f"launch has {state.num_processes} processes; launch with "
                f"accelerate_configs/split_gpus.yaml, or remove model.device_map to use "
                f"multi_gpu.yaml (DDP) / fsdp2.yaml")
    if state.distributed_type == DistributedType.FSDP and recipe.peft.scope == "decoder":
        raise SamMedftError(
            "FSDP2 shards the image encoder for encoder fine-tuning; peft.scope=decoder trains only "
            "the mask decoder (the encoder runs outside the sharded forward). Launch with "
            "accelerate_configs/multi_gpu.yaml (DDP) instead, or use peft.scope=encdec")


def build_model(recipe: Recipe, label_map):
    """Base model + method, or a shared adapter to continue (its base and classes win)."""
    m = recipe.model
    if m.adapter and m.encoder_weights:
        raise SamMedftError(f"model.adapter={m.adapter} continues a fine-tuned model (its encoder "
                            f"included); model.encoder_weights={m.encoder_weights} starts a new "
                            f"one from a pretrained encoder: set only one of them")
    if m.adapter:
        folder = find_adapter_folder(resolve_run(m.adapter))
        model, meta = load_adapter_model(folder, is_trainable=True)
        if meta.num_classes != label_map.num_classes:
            raise SamMedftError(f"model.adapter {m.adapter} predicts {meta.num_classes} classes "
                                f"({meta.class_names}) but the data has {label_map.num_classes} "
                                f"({label_map.class_names}); map the labels to the adapter's classes")
        # the shared adapter decides what is trained; the resolved recipe.yaml records it
        recipe.peft.method, recipe.peft.scope = meta.method, meta.scope
        recipe.model.name = meta.base_model
        log.info("continuing from adapter %s (base %s, %s/%s)", m.adapter, meta.base_model,
                 meta.method, meta.scope)
        return model, meta.base_model, meta.normalization
    outputs = task_for(recipe.prompt).mask_outputs(label_map.num_classes)
    if is_run_model(m.name):  # a fine-tuned run as the base (Setup 2's model -> one target)
        _check_method_before_loading(recipe)
        base, run_meta = base_from_run(m.name, outputs)
        base_id, normalization = m.name, m.normalization or run_meta.normalization
    else:
        spec = resolve_model_name(m.name, m.normalization, random_init=m.random_init)
        _check_method_before_loading(recipe)
        base = load_base_model(spec, outputs, revision=m.revision,
                               attn_implementation=m.attn_implementation)
        base_id = spec.source
        normalization = spec.normalization
    if m.encoder_weights:
        load_encoder_weights(base, m.encoder_weights)
    if m.device_map:
        device_map = build_device_map(base, m.device_map)
        check_devices(device_map)
        place_model(base, device_map)
        log.info("model split over devices: %s", describe(device_map))
    if recipe.train.activation_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, info = apply_method(base, recipe.peft)
    log.info("method %s/%s: %d trainable of %d parameters", info.method, info.scope,
             info.trainable, info.total)
    return model, base_id, normalization


def _check_method_before_loading(recipe: Recipe) -> None:
    """A bad method or block list fails before a multi-GB download, not after it."""
    try:
        depth = architecture_config(recipe.model.name).vision_config.num_hidden_layers
    except KeyError:
        depth = None  # a Hub id or folder: checked once the model is loaded
    check_settings(recipe.peft, depth)


def enable_speedups(model, recipe: Recipe) -> None:
    """Fast vision attention (exact; rel-pos folded into q/k, one fused SDPA call) and
    optional regional torch.compile of the vision layers."""
    if recipe.train.fast_attention:
        log.info("fast vision attention in %d modules", enable_fast_attention(model))
    if recipe.train.compile:
        log.info("compiled %d vision layers", enable_regional_compile(model))


def build_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    t = recipe.train
    heads = DECODER_HEADS  # fresh class heads: their own lr (train.head_lr)
    head_params, other = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (head_params if any(h in n for h in heads) else other).append(p)
    groups = [g for g in ({"params": other, "lr": t.lr},
                          {"params": head_params, "lr": t.head_lr or t.lr}) if g["params"]]
    fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


# ---- the run ----------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run is and what it has found: exactly what a checkpoint's trainer_state.json
    holds next to the tensors, so a resumed run continues the same loop."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_dice: float = -1.0
    best_step: int = 0
    bad_evals: int = 0
    accelerator_step: int = 0
    history: list[dict] = field(default_factory=list)
    num_processes: int = 1
    batch_size: int = 1
    # foreground class -> the step of the first validation that predicted any of its pixels
    first_predicted: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        """A checkpoint's state (older ones may lack the layout fields: this run's stand)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False,
          splits: dict[str, SampleSource] | None = None) -> TrainResult:
    """Fine-tune as `recipe` says. `splits`: data handed over in Python (`train`, optional
    `val`), used instead of the recipe's data source (`sam_medft.train` builds them)."""
    return Trainer(recipe, resume=resume, overwrite=overwrite, splits=splits).run()


class Trainer:
    """One fine-tuning run. `run` takes the named set-up steps in order (each fails fast
    with one clear message, before the first step), then `fit`s; `step` is the one
    training step, which `sam-medft bench` and the `--dry-run` plan also run
    (`training.step`)."""

    def __init__(self, recipe: Recipe, *, resume: bool = False, overwrite: bool = False,
                 splits: dict[str, SampleSource] | None = None) -> None:
        self.recipe = recipe
        self.resume = resume
        self.overwrite = overwrite
        self.given_splits = splits
        self.state = TrainState()
        self.rare: list[RareClass] = []
        self.warned_unpredicted: set[str] = set()

    def run(self) -> TrainResult:
        process = init_state()
        check_launch(self.recipe)
        self.run_folder, lock = prepare_run_dir(self.recipe, resume=self.resume,
                                                overwrite=self.overwrite, state=process)
        handler = None
        try:
            process.wait_for_everyone()
            handler = attach_log_file(self.run_folder.train_log) if process.is_main_process else None
            self.setup_data()
            self.setup_model()
            self.setup_accelerator()
            self.setup_loaders()
            self.setup_optimizer()
            self.restore()
            return self.fit()
        finally:
            if handler is not None:
                logging.getLogger("sam_medft").removeHandler(handler)
                handler.close()
            if lock is not None:
                lock.release()

    # -- set-up steps ----------------------------------------------------------------------

    def setup_data(self) -> None:
        """The hardware preset, the data check (every file, before any model loads), the
        splits and the label map."""
        self.recipe, preset_note = apply_preset(self.recipe)
        if preset_note:
            log.info("%s", preset_note)
        report = check_data(self.recipe.data, sources=self.given_splits)
        report.raise_for_errors()
        self.label_map = report.label_map
        train_report = report.splits.get("train")
        if train_report is not None:
            self.rare = train_report.rare_classes(self.label_map.class_names)
        for rare in self.rare if PartialState().is_main_process else []:  # once, not per rank
            log.warning("%s", rare_class_warning(rare, self.recipe, self.label_map.num_classes))
        self.splits = self.given_splits or data_splits(self.recipe.data)
        if "train" not in self.splits or len(self.splits["train"]) == 0:
            raise SamMedftError("the training split is empty: check data.train_list / data.folder")

    def setup_model(self) -> None:
        """Seeded base model + fine-tuning method, speed-ups, and the task of the mode."""
        recipe = self.recipe
        set_seed(recipe.train.seed)
        self.model, self.base_id, self.normalization = build_model(recipe, self.label_map)
        enable_speedups(self.model, recipe)
        self.task = task_for(recipe.prompt, recipe.loss)
        self.frozen_encoder = encoder_is_frozen(self.model)
        self.geometry = model_geometry(self.model)

    def setup_accelerator(self) -> None:
        self.accelerator = build_accelerator(self.recipe, self.run_folder.root, self.model)

    def setup_loaders(self) -> None:
        """Embedding cache, preprocessed stores, datasets and loaders."""
        t, accelerator = self.recipe.train, self.accelerator
        spec = ModelFrameSpec(self.geometry, self.normalization, self.label_map)
        self.cache = embedding_cache(t, self.task, self.model, self.frozen_encoder, self.base_id,
                                     self.normalization)
        self.train_cache = None if self.recipe.augment.enabled else self.cache
        stores = build_stores(self.recipe, self.splits, spec, run_dir=self.run_folder.root,
                              accelerator=accelerator)
        on_accelerator = transform_on_accelerator(t, self.task, accelerator.device)
        self.data = build_train_data(
            self.recipe, self.splits, spec, stores=stores, num_processes=accelerator.num_processes,
            on_accelerator=on_accelerator, prompts=self.task.prompt_settings(),
            train_keys=self.train_cache is not None, val_keys=self.cache is not None)
        log.info("normalisation and augmentation %s", "on the accelerator, per batch"
                 if on_accelerator else "in the data loader, per image")

    def setup_optimizer(self) -> None:
        """Optimizer, schedule, `accelerator.prepare`, and the artifact's metadata."""
        recipe, t, accelerator = self.recipe, self.recipe.train, self.accelerator
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler = build_scheduler(self.optimizer, warmup=t.warmup_steps, total=t.max_steps,
                                         kind=t.schedule)
        self.model, self.optimizer, self.train_dl = accelerator.prepare(
            self.model, self.optimizer, self.data.train_dl)
        if len(self.train_dl) == 0:
            raise SamMedftError(
                f"the training split has {len(self.data.train_ds)} images, fewer than one global "
                f"batch ({t.batch_size} x {accelerator.num_processes} processes); lower "
                f"train.batch_size or add data")
        self.val_dl = None if self.data.val_dl is None else accelerator.prepare(self.data.val_dl)
        label_map, geometry, task = self.label_map, self.geometry, self.task
        normalization, base_id = self.normalization, self.base_id
        self.meta = AdapterMeta(
            base_model=base_id, num_classes=label_map.num_classes, class_names=label_map.class_names,
            method=recipe.peft.method, scope=recipe.peft.scope, normalization=normalization,
            input_size=geometry.input_size, mask_size=geometry.mask_size,
            mask_outputs=task.mask_outputs(label_map.num_classes),
            labels=label_map.to_dict()["values"],
            binary=recipe.data.binary, prompt_mode=task.mode,
            multimask=recipe.prompt.multimask,
            intensity=recipe.data.intensity.model_dump(mode="json"),
            volume=volume_settings(recipe.data, self.splits.get("train")),
            data_description=describe_data(recipe), base_revision=recipe.model.revision)

    def restore(self) -> None:
        """The state of a fresh run, or of the newest whole checkpoint with `--resume`; then
        the resolved recipe and the trackers."""
        t, accelerator = self.recipe.train, self.accelerator
        self.state = TrainState(num_processes=accelerator.num_processes, batch_size=t.batch_size)
        if self.resume:
            last, loaded = resume_checkpoint(accelerator, self.run_folder.checkpoints, self.model,
                                             self.optimizer, self.scheduler)
            self.state = TrainState.from_dict({**self.state.to_dict(), **loaded})
            accelerator.step = self.state.accelerator_step
            self._continue_layout(last)
            log.info("resumed from %s (step %d)", last, self.state.step)
        if accelerator.is_main_process:
            run = self.run_folder
            with disk_errors(run.recipe_file, "the resolved recipe"):
                write_text_atomic(run.recipe_file, self.recipe.to_yaml())
        if t.log_with != "none":
            accelerator.init_trackers("train", config=_flat(self.recipe.model_dump(mode="json")))

    def _continue_layout(self, ckpt: Path) -> None:
        """The data position is counted in per-process batches: a different layout (processes
        x batch size) than the checkpoint's moves it to the same sample count."""
        s, now = self.state, (self.accelerator.num_processes, self.recipe.train.batch_size)
        was = (s.num_processes, s.batch_size)
        if was != now and s.batches_in_epoch:
            samples = s.batches_in_epoch * was[0] * was[1]
            s.batches_in_epoch = samples // (now[0] * now[1])
            log.warning("%s was written with %d process(es) x batch %d, this run has %d x %d: the "
                        "epoch continues after %d samples instead of %d", ckpt, was[0], was[1],
                        now[0], now[1], s.batches_in_epoch * now[0] * now[1], samples)
        s.num_processes, s.batch_size = now

    # -- the loop ----------------------------------------------------------------------------

    def step(self, batch: dict) -> torch.Tensor:
        """One training step on a finished batch (accumulating when asked) -> its loss."""
        accelerator, t = self.accelerator, self.recipe.train

        def clip() -> None:
            if accelerator.sync_gradients and t.grad_clip:
                accelerator.clip_grad_norm_(self.model.parameters(), t.grad_clip)

        with accelerator.accumulate(self.model):
            return optimizer_step(
                self.task, self.model, batch, self.optimizer, frozen_encoder=self.frozen_encoder,
                cache=self.train_cache, autocast=accelerator.autocast,
                backward=accelerator.backward, before_update=clip)

    def fit(self) -> TrainResult:
        """Steps until `train.max_steps`, early stopping or a stop request; validation picks
        the best adapter, checkpoints make it resumable."""
        t, accelerator, s = self.recipe.train, self.accelerator, self.state
        data, train_dl, run = self.data, self.train_dl, self.run_folder
        progress = _progress(accelerator, t.max_steps, s.step)
        t0, seen, log_every = time.perf_counter(), 0, 10
        running = None
        self.model.train()
        stop = s.step >= t.max_steps
        interrupted = None
        with graceful_stop() as stop_request:
            while not stop:
                data.sampler.set_epoch(s.epoch)
                data.train_ds.set_epoch(s.epoch)
                # accelerate's loader re-seeds its sampler with its own iteration count on
                # every pass; set it to the epoch so a resumed run replays the same order
                train_dl.set_epoch(s.epoch)
                dl = train_dl
                if s.batches_in_epoch:
                    dl = accelerator.skip_first_batches(train_dl, s.batches_in_epoch)
                    dl.set_epoch(s.epoch)
                for batch in dl:
                    batch = data.finish_train(batch)
                    loss = self.step(batch)
                    s.batches_in_epoch += 1
                    seen += batch["pixel_values"].shape[0] * accelerator.num_processes
                    running = loss if running is None else running + loss
                    if not accelerator.sync_gradients:
                        continue
                    self.scheduler.step()
                    s.step += 1
                    step = s.step
                    if step % log_every == 0 or step == t.max_steps:
                        mean_loss = float(running / max(1, log_every * t.grad_accum))  # one sync
                        running = None
                        ips = seen / (time.perf_counter() - t0)
                        lr = self.scheduler.get_last_lr()[0]
                        accelerator.log({"train/loss": mean_loss, "train/lr": lr,
                                         "train/images_per_s": ips}, step=step)
                        progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}",
                                             img_s=f"{ips:.1f}")
                    progress.update(1)
                    last_step = step >= t.max_steps
                    if self.val_dl is not None and (step % t.eval_every == 0 or last_step):
                        stop = self.evaluate_and_select(step)
                    # a stop request during the last step (or an early stop) changes nothing:
                    # finish. Several processes agree at steps that sync the host anyway
                    # (logging, checkpoints), so the flag costs the step no extra host sync.
                    check = (accelerator.num_processes == 1 or step % log_every == 0
                             or step % t.save_every == 0)
                    interrupted = (check and stop_request.agreed(accelerator)
                                   and not (last_step or stop))
                    if step % t.save_every == 0 or last_step or stop or interrupted:
                        s.accelerator_step = accelerator.step
                        save_checkpoint(accelerator, run.checkpoints, step, self.model,
                                        self.optimizer, self.scheduler, s.to_dict(),
                                        keep_last=t.keep_last)
                    if last_step or stop or interrupted:
                        stop = True
                        break
                else:
                    s.epoch += 1
                    s.batches_in_epoch = 0
        progress.close()
        if interrupted:
            accelerator.end_training()
            ckpt = list_checkpoints(run.checkpoints)[-1]
            why = stop_request.signal_name or "a stop request"
            log.warning("%s: stopped after step %d; checkpoint %s written", why, s.step, ckpt)
            raise TrainingInterrupted(
                f"training stopped by {why} after step {s.step} of {t.max_steps}; checkpoint "
                f"{ckpt} written. Continue with the same command plus --resume")
        if self.val_dl is None:
            self.save_adapter()
            s.best_step = s.step
        elif not s.best_step:
            # every validation was undefined (NaN): the last step's adapter, so the run has one
            self.save_adapter()
            s.best_step = s.step
        classes = (self.final_class_report()
                   if self.val_dl is not None and accelerator.is_main_process else {})
        accelerator.wait_for_everyone()
        seconds = time.perf_counter() - t0
        if accelerator.is_main_process:
            remove_disk_stores(run.root)
            with disk_errors(run.summary, "the training summary"):
                write_text_atomic(run.summary, json.dumps(self.summary(seconds, classes),
                                                          indent=2))
        accelerator.end_training()
        return TrainResult(run.root, s.best_dice, s.best_step, s.step, seconds, s.history)

    def summary(self, seconds: float, classes: dict) -> dict:
        """train_summary.json: what the run found."""
        s = self.state
        return {"best_val_dice": s.best_dice, "best_step": s.best_step, "steps": s.step,
                "train_seconds": round(seconds, 2),
                "val_dice_on": VAL_DICE_ON if self.val_dl is not None else None,
                "foreground_segmented": (s.best_dice > 0) if self.val_dl is not None else None,
                "classes": classes,
                "never_predicted": [n for n, c in classes.items()
                                    if c["first_predicted_step"] is None],
                "rare_classes": [r.to_dict() for r in self.rare],
                "rare_thresholds": {"image_share_at_most": RARE_IMAGE_SHARE,
                                    "pixel_share_below": RARE_PIXEL_SHARE},
                "history": s.history}

    def evaluate_and_select(self, step: int) -> bool:
        """Validate, keep the best adapter, and say whether early stopping triggers."""
        s, accelerator = self.state, self.accelerator
        val = self.splits.get("val")
        mixture = isinstance(val, ConcatSource)
        metrics = validate(self.model, self.val_dl, accelerator, task=self.task,
                           frozen_encoder=self.frozen_encoder, cache=self.cache,
                           finish=self.data.finish_val,
                           groups=torch.from_numpy(val.part_of()) if mixture else None,
                           group_names=val.part_names if mixture else None)
        dice = metrics["dice"]
        s.history.append({"step": step, "val_dice": dice, "per_class": metrics.get("per_class"),
                          "predicted_pixels": metrics.get("predicted_pixels"),
                          "n_images": metrics["n_images"]})
        accelerator.log({"val/dice": dice}, step=step)
        if "per_dataset" in metrics:
            per = {n: m["dice"] for n, m in metrics["per_dataset"].items()}
            s.history[-1]["per_dataset"] = per
            accelerator.log({f"val/dice/{n}": d for n, d in per.items()}, step=step)
            log.info("step %d: validation Dice per data set: %s", step,
                     ", ".join(f"{n} {d:.4f}" for n, d in per.items()))
        if not math.isnan(dice) and dice > s.best_dice:
            s.best_dice, s.best_step, s.bad_evals = dice, step, 0
            self.save_adapter()
        else:
            s.bad_evals += 1
        for name, n in zip(self.class_names(), metrics.get("predicted_pixels") or [], strict=False):
            if n and name not in s.first_predicted:
                s.first_predicted[name] = step
        log.info("%s", self.validation_line(step, metrics))
        self.warn_unpredicted(step, metrics)
        patience = self.recipe.train.patience
        return patience is not None and s.bad_evals > patience

    def class_names(self) -> list[str]:
        """The foreground classes validation scores one by one (automatic mode; the prompt
        modes score objects, not classes: none)."""
        return [] if self.task.prompted else list(self.label_map.class_names[1:])

    def validation_line(self, step: int, metrics: dict) -> str:
        """The log line of one validation; never calls a foreground Dice of 0 "best"."""
        s = self.state
        per_class = metrics.get("per_class") or []
        names = self.class_names()
        classes = ""
        if names and len(per_class) == len(names):
            classes = " (" + ", ".join(f"{n} {d:.4f}" for n, d in zip(names, per_class,
                                                                     strict=True)) + ")"
        line = (f"step {step}: validation Dice on the low-res grid (picks the best adapter): "
                f"foreground {metrics['dice']:.4f}{classes} over {metrics['n_images']} images")
        if s.best_dice > 0:
            return line + f"; best {s.best_dice:.4f} at step {s.best_step}"
        return line + "; " + self.nothing_segmented()

    def nothing_segmented(self) -> str:
        """What a run whose every validation had foreground Dice 0 (or NaN) has kept."""
        s = self.state
        predicted = any(sum(h.get("predicted_pixels") or []) for h in s.history)
        what = ("its foreground predictions all miss the reference" if predicted
                else "it predicted no foreground pixel")
        if not s.best_step:
            return f"no validation so far has segmented any foreground ({what}); no adapter kept yet"
        return (f"no validation so far has segmented any foreground (Dice 0 at each; {what}): "
                f"the adapter kept (step {s.best_step}) is a placeholder that segments nothing, "
                f"not a best one")

    def warn_unpredicted(self, step: int, metrics: dict) -> None:
        """Once per class: a class no validation so far has predicted a pixel of."""
        predicted = metrics.get("predicted_pixels") or []
        reference = metrics.get("reference_pixels") or []
        names = self.class_names()
        if len(predicted) != len(names) or not self.accelerator.is_main_process:
            return
        for i, name in enumerate(names):
            if name in self.state.first_predicted or name in self.warned_unpredicted:
                continue
            self.warned_unpredicted.add(name)
            if not reference[i]:
                log.warning("class %s: the validation images hold no %s pixel and none was "
                            "predicted (step %d): its validation Dice is undefined and cannot "
                            "tell whether it is learned", name, name, step)
                continue
            log.warning("class %s: not predicted on any validation image so far (step %d: 0 "
                        "pixels predicted, %d in the reference); its validation Dice 0 scores no "
                        "segmentation at all. %s", name, step, reference[i],
                        remedies(self.recipe, self.label_map.num_classes, i + 1))

    def final_class_report(self) -> dict:
        """The end-of-run reminder (log) and the train summary's per-class record."""
        s, names = self.state, self.class_names()
        saved = next((h for h in s.history if h["step"] == s.best_step), None)
        steps = [h["step"] for h in s.history]
        classes = {}
        for i, name in enumerate(names):
            first = s.first_predicted.get(name)
            pixels = (saved or {}).get("predicted_pixels") or []
            by_saved = bool(pixels[i]) if i < len(pixels) else None
            classes[name] = {"first_predicted_step": first, "predicted_by_saved_adapter": by_saved}
            if first is None and steps:
                log.warning("class %s was never predicted at any of the %d validations (steps "
                            "%d..%d): the saved adapter (step %d) never segmented %s. %s", name,
                            len(steps), steps[0], steps[-1], s.best_step, name,
                            remedies(self.recipe, self.label_map.num_classes, i + 1))
            elif by_saved is False:
                log.warning("class %s: the saved adapter (step %d) predicted no %s pixel on the "
                            "validation images (a later adapter first predicted it at step %d, "
                            "with a lower foreground Dice)", name, s.best_step, name, first)
        if steps and s.best_dice <= 0:
            log.warning("no validation segmented any foreground (foreground Dice 0 or undefined "
                        "at all %d validations): the adapter saved in %s (step %d) segments "
                        "nothing; it is kept only so the run has an artifact", len(steps),
                        self.run_folder.adapter, s.best_step)
        return classes

    def save_adapter(self) -> None:
        """The main process writes the adapter; under FSDP2 every rank helps gather it first."""
        accelerator, out_dir = self.accelerator, self.run_folder.adapter
        inner = accelerator.unwrap_model(self.model)
        if is_sharded(inner):
            state_dict = accelerator.get_state_dict(self.model)  # a collective: all ranks
            if accelerator.is_main_process:
                save_adapter(inner, self.meta, out_dir, state_dict=state_dict,
                             base_encoder=self.base_encoder())
            return
        if accelerator.is_main_process:
            save_adapter(inner, self.meta, out_dir, base_encoder=self.base_encoder())

    def base_encoder(self) -> dict[str, torch.Tensor] | None:
        """The pretrained encoder the run started from (`model.encoder_weights`), which the
        artifact must carry: its base name alone would rebuild the original encoder."""
        path = self.recipe.model.encoder_weights
        if not path:
            return None
        return {f"vision_encoder.{k}": v for k, v in read_encoder_tensors(path).items()}


VAL_DICE_ON = ("the model's low-res mask grid (picks the best adapter); `sam-medft eval` "
               "scores at each image's original size")


def remedies(recipe: Recipe, num_classes: int, index: int) -> str:
    """The remedies for a rare or unpredicted class that sam_medft offers, for this recipe."""
    weights = list(recipe.loss.class_weights or [1] * num_classes)
    if len(weights) == num_classes:
        weights[index] = max(5, 5 * weights[index])
    example = "[" + ", ".join(f"{w:g}" for w in weights) + "]"
    return (f"Remedies sam_medft offers: weight the class in the loss (loss.class_weights, one "
            f"weight per class, background first, e.g. loss.class_weights={example}) and train "
            f"longer (train.max_steps, now {recipe.train.max_steps}); it has no sampling of the "
            f"images that hold a class (adding more such images to the training split is the "
            f"remaining remedy)")


def rare_class_warning(rare: RareClass, recipe: Recipe, num_classes: int) -> str:
    """The start-of-training warning about one rare class (`SplitReport.rare_classes`)."""
    if not rare.images:
        return (f"class {rare.name} is in none of the {rare.of_images} training images: it "
                f"cannot be learned; add images that hold it or map it away in data.labels")
    return (f"class {rare.name} is rare in the training data: in {rare.images} of "
            f"{rare.of_images} training images ({100 * rare.images / rare.of_images:.1f}%), "
            f"{100 * rare.pixel_share:.2f}% of all labelled pixels and "
            f"{100 * rare.foreground_share:.1f}% of the foreground pixels (rare: in at most "
            f"{RARE_IMAGE_SHARE:.0%} of the images or under {RARE_PIXEL_SHARE:.0%} of the pixels). "
            f"Such a class is often never predicted (validation Dice 0). "
            f"{remedies(recipe, num_classes, rare.index)}")


class _StopFlag:
    """Set by the SIGTERM/SIGINT handler; read once per optimizer step."""

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}

    def __init__(self) -> None:
        self.received = False
        self.signal_name: str | None = None
        self.previous_sigint = None

    def __call__(self, signum, frame) -> None:
        self.received = True
        self.signal_name = self.signal_name or self.NAMES.get(signum, f"signal {signum}")
        if signum == signal.SIGINT:
            # the next Ctrl-C gets the handler from before (Python's: KeyboardInterrupt, at once)
            signal.signal(signal.SIGINT, self.previous_sigint or signal.default_int_handler)
            log.warning("Ctrl-C: finishing the current step, then writing a checkpoint and "
                        "stopping; press Ctrl-C again to abort at once (without a checkpoint of "
                        "this step: --resume then continues from the last one written)")

    def agreed(self, accelerator) -> bool:
        """True on every rank once any rank got SIGTERM/SIGINT (one scalar all-reduce), so all
        ranks stop after the same step and write the checkpoint together. Called by every rank
        at the same steps (every step for one process, every log/save step for several)."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


@contextlib.contextmanager
def graceful_stop():
    """SIGTERM (a scheduler's pre-emption, `kill`, torchrun forwarding it) and the first
    Ctrl-C finish the step, write a checkpoint and raise TrainingInterrupted, instead of
    dying mid-step. A second Ctrl-C aborts at once (the handler from before is back)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous_term = signal.signal(signal.SIGTERM, flag)
    flag.previous_sigint = signal.signal(signal.SIGINT, flag)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, flag.previous_sigint)


def _progress(accelerator, total: int, initial: int):
    return tqdm(total=total, initial=initial, desc="train", unit="step",
                disable=not accelerator.is_local_main_process, dynamic_ncols=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


def describe_data(recipe: Recipe) -> str:
    d = recipe.data
    if d.source == "synthetic":
        return "sam_medft's built-in synthetic MRI/CT-like slices (demo data)"
    if d.source == "hf" and d.hf:
        return f"datasets: {d.hf.path}"
    if d.source == "nnunet":
        return f"nnU-Net raw data set {d.folder.name} ({d.volumes.axis} slices)"
    if d.source == "folder":
        return f"image/mask folder {d.folder.name}"
    if d.source == "python":
        return "data handed over in Python (sam_medft.train)"
    if d.source == "mixture":
        return "a mixture of data sets: " + ", ".join(
            f"{e.name} (weight {e.weight:g})" for e in d.datasets)
    return f"file lists {d.train_list.name if d.train_list else ''}"
