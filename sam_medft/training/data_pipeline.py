"""The training data pipeline: preprocessed stores, datasets, loaders and batch finishing.

One place decides how images reach the model, so the trainer and `sam-medft bench --mode
epoch` run the same pipeline:
- each split is decoded and resized once per run into a `PreprocessedStore` (memory or
  disk; `train.preprocess_cache`), by the loader's workers in parallel;
- loaders hand over uint8 batches in pinned memory; normalisation, augmentation and the
  int64 labels are made for the whole batch on the GPU (`train.transform_device`), or per
  item in the workers (CPU runs and prompt modes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sam_medft.config import Recipe, TrainConfig
from sam_medft.data.dataset import EpochSampler, ModelFrameSpec, SamSegmentationDataset, collate
from sam_medft.data.mixture import ConcatSource
from sam_medft.data.model_frame import finish_batch
from sam_medft.data.preprocessed import PreprocessedStore, choose_mode, estimate_bytes, mask_dtype
from sam_medft.data.sources import SampleSource
from sam_medft.tasks import Task

log = logging.getLogger("sam_medft.training")


@dataclass
class TrainData:
    train_ds: SamSegmentationDataset
    sampler: EpochSampler
    train_dl: DataLoader
    val_dl: DataLoader | None
    finish_train: Callable[[dict], dict]
    finish_val: Callable[[dict], dict]
    stores: dict[str, PreprocessedStore] = field(default_factory=dict)
    on_accelerator: bool = False


def loader_workers(recipe: Recipe) -> int:
    """`train.num_workers`, with `auto` resolved: none without a GPU (the step dominates and
    the cores are better spent in torch), else up to 4 per process, leaving a core for it."""
    value = recipe.train.num_workers
    if value != "auto":
        return value
    if not torch.cuda.is_available():
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(4, (os.cpu_count() or 1) // max(1, local) - 1))


def transform_on_accelerator(train: TrainConfig, task: Task, device: torch.device) -> bool:
    """Whether batches are normalised and augmented on the accelerator (see TrainConfig)."""
    if not task.finishes_on_accelerator:
        return False  # e.g. prompts are simulated from the augmented mask, in the workers
    choice = train.transform_device
    return choice == "accelerator" or (choice == "auto" and device.type != "cpu")


def build_stores(recipe: Recipe, splits: dict[str, SampleSource], spec: ModelFrameSpec, *,
                 run_dir: Path, accelerator) -> dict[str, PreprocessedStore]:
    """A store per split the trainer reads (train, val), or none (`preprocess_cache: off`).
    Disk stores are written by the main process, memory-mapped by all."""
    t = recipe.train
    out: dict[str, PreprocessedStore] = {}
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    for split in ("train", "val"):
        source = splits.get(split)
        if source is None or len(source) == 0 or t.preprocess_cache == "off":
            continue
        nc = spec.label_map.num_classes
        mode = choose_mode(t.preprocess_cache, len(source), spec.geometry, nc,
                           t.preprocess_cache_gib, local)
        size_gib = estimate_bytes(len(source), spec.geometry, nc) / 2**30
        folder = run_dir / "cache" / "preprocessed" / split
        if mode == "memory":
            store = PreprocessedStore.build(source, spec.geometry, spec.label_map,
                                            num_workers=loader_workers(recipe),
                                            desc=f"preprocess {split}")
        else:
            if accelerator.is_main_process:
                PreprocessedStore.build(source, spec.geometry, spec.label_map, mode="disk",
                                        folder=folder, num_workers=loader_workers(recipe),
                                        desc=f"preprocess {split}")
            accelerator.wait_for_everyone()
            store = PreprocessedStore.open(folder, mask_dtype(nc)[1])
        log.info("preprocessed %d %s images once (%s, %.2f GiB)", len(source), split, mode,
                 size_gib)
        out[split] = store
    return out


def remove_disk_stores(run_dir: Path) -> None:
    """Disk stores are per-run scratch: gone once the run has finished."""
    shutil.rmtree(run_dir / "cache" / "preprocessed", ignore_errors=True)
    with contextlib.suppress(OSError):  # only when empty
        (run_dir / "cache").rmdir()


def ignore_ctrl_c(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process (a terminal sends it to the whole
    process group): that process finishes its step and checkpoints with the workers alive."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_train_data(recipe: Recipe, splits: dict[str, SampleSource], spec: ModelFrameSpec, *,
                     stores: dict[str, PreprocessedStore], num_processes: int,
                     on_accelerator: bool, prompts=None, train_keys: bool = False,
                     val_keys: bool = False) -> TrainData:
    """Datasets, the seeded epoch sampler and the loaders (not yet `accelerator.prepare`d)."""
    t = recipe.train
    workers = loader_workers(recipe)
    train_ds = SamSegmentationDataset(
        splits["train"], spec, recipe.augment, seed=t.seed, prompts=prompts,
        store=stores.get("train"), finish_in_loader=not on_accelerator, cache_keys=train_keys)
    train_source = splits["train"]
    mixture = isinstance(train_source, ConcatSource) and train_source.union is not None
    sampler = EpochSampler(len(train_ds), seed=t.seed,
                           weights=train_source.sample_weights() if mixture else None)
    pin = torch.cuda.is_available()
    # drop the incomplete last global batch (every step then sees batch_size x processes
    # images, as one process with the whole batch would). Workers persist across epochs
    # (few-shot epochs are a batch or two: restarting them each epoch would cost more than
    # the epoch); the sampler's (epoch, index) keys keep their augmentation seeds current.
    global_batch = t.batch_size * num_processes
    train_dl = DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                          drop_last=len(train_ds) > global_batch,
                          worker_init_fn=ignore_ctrl_c if workers else None)
    val_dl = None
    if "val" in splits and len(splits["val"]):
        val_ds = SamSegmentationDataset(
            splits["val"], spec, None, seed=t.seed, prompts=prompts, store=stores.get("val"),
            finish_in_loader=not on_accelerator, cache_keys=val_keys)
        val_dl = DataLoader(val_ds, batch_size=t.batch_size, shuffle=False, collate_fn=collate,
                            num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                            worker_init_fn=ignore_ctrl_c if workers else None)
    finish = partial(finish_batch, geometry=spec.geometry, normalization=spec.normalization)
    finish_train, finish_val = partial(finish, augment=recipe.augment), partial(finish, augment=None)
    if mixture:  # each sample trains only the classes its data set labels
        finish_train = partial(with_valid_classes, finish_train,
                               torch.from_numpy(train_source.sample_valid_classes()))
    val_source = splits.get("val")
    if isinstance(val_source, ConcatSource) and val_source.union is not None:
        finish_val = partial(with_valid_classes, finish_val,
                             torch.from_numpy(val_source.sample_valid_classes()))
    return TrainData(train_ds, sampler, train_dl, val_dl, finish_train=finish_train,
                     finish_val=finish_val, stores=stores, on_accelerator=on_accelerator)


def with_valid_classes(finish: Callable[[dict], dict], table: torch.Tensor, batch: dict) -> dict:
    """The finished batch plus `valid_classes` (B, C) bool: the classes each sample's data
    set labels (a mixture, Setup 2); the task's loss and scores ignore the others."""
    out = finish(batch)
    out["valid_classes"] = table[out["index"].cpu()].to(out["labels"].device)
    return out
