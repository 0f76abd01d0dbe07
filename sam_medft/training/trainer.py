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
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sam_medft.adapters.methods import DECODER_HEADS
from sam_medft.config import Recipe
from sam_medft.errors import Interrupted, SamMedftError
from sam_medft.files import disk_errors, write_text_atomic
from sam_medft.precision import device_type, resolve_precision
from sam_medft.runs import RunFolder, RunLock
from sam_medft.tasks import Task, task_for
from sam_medft.training.checkpoint import list_checkpoints, resume_checkpoint, save_checkpoint
from sam_medft.training.embedding_cache import embedding_cache
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
        from accelerate.utils import broadcast_object_list

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
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

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
    import os

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    has_accelerator = getattr(torch, "accelerator", None)
    has_accelerator = has_accelerator.is_available() if has_accelerator else torch.cuda.is_available()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not has_accelerator))


def check_launch(recipe: Recipe) -> None:
    """Launch-mode mistakes, before any model loads."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if recipe.model.device_map:
        from sam_medft.models.device_map import validate_fractions

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
    from sam_medft.adapters.methods import apply_method
    from sam_medft.models.loading import load_base_model, resolve_model_name

    m = recipe.model
    if m.adapter:
        from sam_medft.hub import resolve_run
        from sam_medft.models.artifact import find_adapter_folder, load_adapter_model

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
    spec = resolve_model_name(m.name, m.normalization)
    _check_method_before_loading(recipe)
    base = load_base_model(spec, task_for(recipe.prompt).mask_outputs(label_map.num_classes),
                           revision=m.revision,
                           attn_implementation=m.attn_implementation)
    if m.device_map:
        from sam_medft.models.device_map import (
            build_device_map,
            check_devices,
            describe,
            place_model,
        )

        device_map = build_device_map(base, m.device_map)
        check_devices(device_map)
        place_model(base, device_map)
        log.info("model split over devices: %s", describe(device_map))
    if recipe.train.activation_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, info = apply_method(base, recipe.peft)
    log.info("method %s/%s: %d trainable of %d parameters", info.method, info.scope,
             info.trainable, info.total)
    return model, spec.source if not spec.is_tiny else "tiny", spec.normalization


def _check_method_before_loading(recipe: Recipe) -> None:
    """A bad method or block list fails before a multi-GB download, not after it."""
    from sam_medft.adapters.methods import check_settings
    from sam_medft.models.registry import architecture_config

    try:
        depth = architecture_config(recipe.model.name).vision_config.num_hidden_layers
    except KeyError:
        depth = None  # a Hub id or folder: checked once the model is loaded
    check_settings(recipe.peft, depth)


def enable_speedups(model, recipe: Recipe) -> None:
    """Fast vision attention (exact; rel-pos folded into q/k, one fused SDPA call) and
    optional regional torch.compile of the vision layers."""
    from sam_medft.models.fast_attention import enable_fast_attention, enable_regional_compile

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


# ---- the loop ---------------------------------------------------------------------------


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    from accelerate.utils import set_seed

    from sam_medft.data.check import check_dataset
    from sam_medft.data.sources import build_splits
    from sam_medft.training.presets import apply_preset

    state = init_state()
    is_main = state.is_main_process
    check_launch(recipe)
    run, lock = prepare_run_dir(recipe, resume=resume, overwrite=overwrite, state=state)
    handler = None
    try:
        state.wait_for_everyone()
        handler = attach_log_file(run.train_log) if is_main else None
        recipe, preset_note = apply_preset(recipe)
        if preset_note:
            log.info("%s", preset_note)
        report = check_dataset(recipe.data)
        report.raise_for_errors()
        label_map = report.label_map
        splits = build_splits(recipe.data)
        if "train" not in splits or len(splits["train"]) == 0:
            raise SamMedftError("the training split is empty: check data.train_list / data.folder")
        set_seed(recipe.train.seed)
        model, base_id, normalization = build_model(recipe, label_map)
        enable_speedups(model, recipe)
        accelerator = build_accelerator(recipe, run.root, model)
        return _run(recipe, run, accelerator, model, base_id, normalization, label_map,
                    splits, resume=resume)
    finally:
        if handler is not None:
            logging.getLogger("sam_medft").removeHandler(handler)
            handler.close()
        if lock is not None:
            lock.release()


def _run(recipe, run: RunFolder, accelerator, model, base_id, normalization, label_map, splits,
         *, resume):
    from sam_medft.adapters.methods import encoder_is_frozen
    from sam_medft.data.dataset import ModelFrameSpec
    from sam_medft.models.artifact import AdapterMeta
    from sam_medft.models.loading import model_geometry
    from sam_medft.training.data_pipeline import (
        build_stores,
        build_train_data,
        transform_on_accelerator,
    )

    t = recipe.train
    run_dir = run.root
    geometry = model_geometry(model)
    spec = ModelFrameSpec(geometry, normalization, label_map)
    frozen_encoder = encoder_is_frozen(model)
    task = task_for(recipe.prompt, recipe.loss)
    cache = embedding_cache(t, task, model, frozen_encoder, base_id, normalization)
    train_cache = None if recipe.augment.enabled else cache
    stores = build_stores(recipe, splits, spec, run_dir=run_dir, accelerator=accelerator)
    on_accelerator = transform_on_accelerator(t, task, accelerator.device)
    data = build_train_data(recipe, splits, spec, stores=stores,
                            num_processes=accelerator.num_processes,
                            on_accelerator=on_accelerator, prompts=task.prompt_settings(),
                            train_keys=train_cache is not None, val_keys=cache is not None)
    log.info("normalisation and augmentation %s", "on the accelerator, per batch"
             if on_accelerator else "in the data loader, per image")
    train_ds, sampler, train_dl, val_dl = data.train_ds, data.sampler, data.train_dl, data.val_dl

    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, warmup=t.warmup_steps, total=t.max_steps, kind=t.schedule)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if len(train_dl) == 0:
        raise SamMedftError(f"the training split has {len(train_ds)} images, fewer than one global "
                            f"batch ({t.batch_size} x {accelerator.num_processes} processes); "
                            f"lower train.batch_size or add data")
    if val_dl is not None:
        val_dl = accelerator.prepare(val_dl)

    meta = AdapterMeta(
        base_model=base_id, num_classes=label_map.num_classes, class_names=label_map.class_names,
        method=recipe.peft.method, scope=recipe.peft.scope, normalization=normalization,
        input_size=geometry.input_size, mask_size=geometry.mask_size,
        mask_outputs=task.mask_outputs(label_map.num_classes),
        labels=label_map.to_dict()["values"],
        binary=recipe.data.binary, prompt_mode=recipe.prompt.mode,
        intensity=recipe.data.intensity.model_dump(mode="json"),
        data_description=describe_data(recipe), base_revision=recipe.model.revision)

    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best_dice": -1.0, "best_step": 0,
             "bad_evals": 0, "accelerator_step": 0, "history": [],
             "num_processes": accelerator.num_processes, "batch_size": t.batch_size}
    ckpt_root = run.checkpoints
    if resume:
        last, loaded = resume_checkpoint(accelerator, ckpt_root, model, optimizer, scheduler)
        state.update(loaded)
        accelerator.step = state["accelerator_step"]
        _check_resume_layout(state, accelerator.num_processes, t.batch_size, last)
        log.info("resumed from %s (step %d)", last, state["step"])

    if accelerator.is_main_process:
        with disk_errors(run.recipe_file, "the resolved recipe"):
            write_text_atomic(run.recipe_file, recipe.to_yaml())
    if recipe.train.log_with != "none":
        accelerator.init_trackers("train", config=_flat(recipe.model_dump(mode="json")))

    def clip() -> None:
        if accelerator.sync_gradients and t.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)

    progress = _progress(accelerator, t.max_steps, state["step"])
    t0, seen, log_every = time.perf_counter(), 0, 10
    running = None
    model.train()
    stop = state["step"] >= t.max_steps
    interrupted = None
    with graceful_stop() as stop_request:
        while not stop:
            epoch = state["epoch"]
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            # accelerate's loader re-seeds its sampler with its own iteration count on every
            # pass; set it to the epoch so a resumed run replays the same order
            train_dl.set_epoch(epoch)
            dl = train_dl
            if state["batches_in_epoch"]:
                dl = accelerator.skip_first_batches(train_dl, state["batches_in_epoch"])
                dl.set_epoch(epoch)
            for batch in dl:
                batch = data.finish_train(batch)
                with accelerator.accumulate(model):
                    loss = optimizer_step(
                        task, model, batch, optimizer, frozen_encoder=frozen_encoder,
                        cache=train_cache, autocast=accelerator.autocast,
                        backward=accelerator.backward, before_update=clip)
                state["batches_in_epoch"] += 1
                seen += batch["pixel_values"].shape[0] * accelerator.num_processes
                running = loss.detach() if running is None else running + loss.detach()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state["step"] += 1
                step = state["step"]
                if step % log_every == 0 or step == t.max_steps:
                    mean_loss = float(running / max(1, log_every * t.grad_accum))  # one sync per log
                    running = None
                    ips = seen / (time.perf_counter() - t0)
                    lr = scheduler.get_last_lr()[0]
                    accelerator.log({"train/loss": mean_loss, "train/lr": lr,
                                     "train/images_per_s": ips}, step=step)
                    progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                progress.update(1)
                last_step = step >= t.max_steps
                if val_dl is not None and (step % t.eval_every == 0 or last_step):
                    stop = _evaluate_and_select(accelerator, model, val_dl, task, frozen_encoder,
                                                recipe, state, step, meta, run.adapter, cache,
                                                data.finish_val)
                # a SIGTERM during the last step (or an early stop) changes nothing: finish.
                # Several processes agree at steps that sync the host anyway (logging,
                # checkpoints), so the flag costs the step no extra host sync.
                check = (accelerator.num_processes == 1 or step % log_every == 0
                         or step % t.save_every == 0)
                interrupted = (check and stop_request.agreed(accelerator)
                               and not (last_step or stop))
                if step % t.save_every == 0 or last_step or stop or interrupted:
                    state["accelerator_step"] = accelerator.step
                    save_checkpoint(accelerator, ckpt_root, step, model, optimizer, scheduler,
                                    _persistable(state), keep_last=t.keep_last)
                if last_step or stop or interrupted:
                    stop = True
                    break
            else:
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
    progress.close()
    if interrupted:
        accelerator.end_training()
        ckpt = list_checkpoints(ckpt_root)[-1]
        why = stop_request.signal_name or "a stop request"
        log.warning("%s: stopped after step %d; checkpoint %s written", why, state["step"], ckpt)
        raise TrainingInterrupted(
            f"training stopped by {why} after step {state['step']} of {t.max_steps}; checkpoint "
            f"{ckpt} written. Continue with the same command plus --resume")
    if val_dl is None:
        _save_adapter(accelerator, model, meta, run.adapter)
        state["best_step"] = state["step"]
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    if accelerator.is_main_process:
        from sam_medft.training.data_pipeline import remove_disk_stores

        remove_disk_stores(run_dir)
        summary = {"best_val_dice": state["best_dice"], "best_step": state["best_step"],
                   "steps": state["step"], "train_seconds": round(seconds, 2),
                   "history": state["history"]}
        with disk_errors(run.summary, "the training summary"):
            write_text_atomic(run.summary, json.dumps(summary, indent=2))
    accelerator.end_training()
    return TrainResult(run_dir, state["best_dice"], state["best_step"], state["step"], seconds,
                       state["history"])


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


def _check_resume_layout(state: dict, num_processes: int, batch_size: int, ckpt: Path) -> None:
    """The data position is counted in per-process batches: a different layout changes it."""
    was = (state.get("num_processes", num_processes), state.get("batch_size", batch_size))
    if was != (num_processes, batch_size) and state.get("batches_in_epoch"):
        samples = state["batches_in_epoch"] * was[0] * was[1]
        state["batches_in_epoch"] = samples // (num_processes * batch_size)
        log.warning("%s was written with %d process(es) x batch %d, this run has %d x %d: the "
                    "epoch continues after %d samples instead of %d", ckpt, was[0], was[1],
                    num_processes, batch_size,
                    state["batches_in_epoch"] * num_processes * batch_size, samples)
    state["num_processes"], state["batch_size"] = num_processes, batch_size


def _save_adapter(accelerator, model, meta, out_dir: Path) -> None:
    """The main process writes the adapter; under FSDP2 every rank helps gather it first."""
    from sam_medft.models.artifact import save_adapter
    from sam_medft.training.checkpoint import is_sharded

    inner = accelerator.unwrap_model(model)
    if is_sharded(inner):
        state_dict = accelerator.get_state_dict(model)  # a collective: all ranks
        if accelerator.is_main_process:
            save_adapter(inner, meta, out_dir, state_dict=state_dict)
        return
    if accelerator.is_main_process:
        save_adapter(inner, meta, out_dir)


def _evaluate_and_select(accelerator, model, val_dl, task: Task, frozen_encoder, recipe, state,
                         step, meta, adapter_dir: Path, cache=None, finish=None) -> bool:
    """Validate, keep the best adapter, and say whether early stopping triggers."""
    metrics = validate(model, val_dl, accelerator, task=task, frozen_encoder=frozen_encoder,
                       cache=cache, finish=finish)
    dice = metrics["dice"]
    state["history"].append({"step": step, "val_dice": dice, "per_class": metrics.get("per_class"),
                             "n_images": metrics["n_images"]})
    accelerator.log({"val/dice": dice}, step=step)
    improved = not math.isnan(dice) and dice > state["best_dice"]
    if improved:
        state.update(best_dice=dice, best_step=step, bad_evals=0)
        _save_adapter(accelerator, model, meta, adapter_dir)
    else:
        state["bad_evals"] += 1
    log.info("step %d: val foreground Dice %.4f over %d images (best %.4f at step %d)", step, dice,
             metrics["n_images"], state["best_dice"], state["best_step"])
    patience = recipe.train.patience
    return patience is not None and state["bad_evals"] > patience


def _persistable(state: dict) -> dict:
    return {k: v for k, v in state.items()}


def _progress(accelerator, total: int, initial: int):
    from tqdm.auto import tqdm

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
    if d.source == "folder":
        return f"image/mask folder {d.folder.name}"
    return f"file lists {d.train_list.name if d.train_list else ''}"
