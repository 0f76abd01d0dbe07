"""Throughput and memory of one recipe's training (or prediction) step on synthetic data.

The numbers to compare are images/s and peak memory of the *real* step: the package's
forward, loss (`segmentation_loss` + IoU-head loss), backward and AdamW (fused on CUDA),
under bf16 autocast on CUDA. Weights are random, built from the checkpoint's architecture
config (no download), so any machine can run any model size; speed does not depend on the
values. Warm-up steps (allocator growth, cuDNN/compile autotuning) are excluded.

Modes:
- `train`: one optimizer step per batch; a frozen encoder runs under no_grad (decoder-only
  scopes, first epoch).
- `decoder-cached`: decoder-only scopes from the second epoch on, where the image
  embeddings come from `EmbeddingCache` instead of the encoder.
- `predict`: forward only, under `torch.inference_mode()`.
- `epoch`: `train`, then the same step fed by the real training data pipeline (synthetic
  slices at the image size, preprocessed once, uint8 batches through the DataLoader,
  normalised and augmented where training would do it); `epoch.ratio` is the end-to-end
  images/s over the step's images/s (1.0: the data pipeline costs the GPU nothing).
"""

from __future__ import annotations

import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import transformers
from accelerate.utils import send_to_device
from rich.table import Table

from sam_medft.adapters.methods import apply_method, encoder_is_frozen
from sam_medft.config import LossConfig, ModelConfig, PeftSettings, Recipe, TrainConfig
from sam_medft.data.dataset import ModelFrameSpec
from sam_medft.data.labels import LabelMap
from sam_medft.data.preprocessed import PreprocessedStore
from sam_medft.data.sources import build_splits
from sam_medft.data.synthetic import SYNTHETIC_LABELS, write_synthetic
from sam_medft.errors import SamMedftError
from sam_medft.model_names import lookup
from sam_medft.models.fast_attention import enable_fast_attention, enable_regional_compile
from sam_medft.models.forward import automatic_forward, image_embeddings
from sam_medft.models.loading import model_geometry, unwrap
from sam_medft.models.registry import (
    architecture_config,
    model_class,
    random_init_names,
    sam_hq_config,
)
from sam_medft.models.sam_hq_decoder import use_official_decoder
from sam_medft.precision import resolve_precision
from sam_medft.tasks import AutomaticTask
from sam_medft.training.data_pipeline import (
    build_train_data,
    loader_workers,
    transform_on_accelerator,
)
from sam_medft.training.embedding_cache import EmbeddingCache, content_keys
from sam_medft.training.step import optimizer_step

Mode = Literal["train", "predict", "decoder-cached", "epoch"]
MODES: tuple[str, ...] = ("train", "predict", "decoder-cached", "epoch")
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def _train_default(name: str) -> Any:
    """`train.<name>`'s default in the recipe schema: the one home of every default."""
    return TrainConfig.model_fields[name].default


@dataclass
class BenchSettings:
    """What to measure. `image_size=None`: the model's own input size (1024 for SAM).

    What a recipe also says (model, method, batch size, fast attention, compile, activation
    checkpointing, transform device) defaults as in the recipe schema; `from_recipe` takes
    it from a recipe.
    """

    model: str = ModelConfig.model_fields["name"].default
    peft: PeftSettings = field(default_factory=PeftSettings)
    batch: int = _train_default("batch_size")
    image_size: int | None = None
    steps: int = 20
    warmup: int = 5
    mode: Mode = "train"
    fast: bool = _train_default("fast_attention")
    compile: bool = _train_default("compile")
    num_classes: int = 2
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    activation_checkpointing: bool = _train_default("activation_checkpointing")
    device: str | None = None  # None: cuda when available
    pad_value: bool | None = None  # fast attention: pad v for flash (None: auto)
    seed: int = 0
    # epoch mode: the data pipeline's settings (as train.num_workers / transform_device);
    # 0 workers without a recipe: its `auto` depends on the machine
    num_workers: int = 0
    transform_device: str = _train_default("transform_device")

    @classmethod
    def from_recipe(cls, recipe: Recipe | None, **given: Any) -> BenchSettings:
        """The recipe's model, method and step settings (none: the defaults), overridden by
        the `given` ones that are not None (command-line flags)."""
        shared: dict[str, Any] = {}
        if recipe is not None:
            t = recipe.train
            shared = dict(model=recipe.model.name, peft=recipe.peft, batch=t.batch_size,
                          fast=t.fast_attention, compile=t.compile,
                          activation_checkpointing=t.activation_checkpointing,
                          num_workers=loader_workers(recipe), transform_device=t.transform_device)
        return cls(**shared | {k: v for k, v in given.items() if v is not None})

    def check(self) -> None:
        """Every user mistake, before a model is built."""
        if self.mode not in MODES:
            raise SamMedftError(
                f"bench --mode {self.mode!r} is unknown; use one of {', '.join(MODES)}"
            )
        if self.precision not in PRECISIONS:
            raise SamMedftError(
                f"bench --precision {self.precision!r} is unknown; use one of "
                f"{', '.join(PRECISIONS)}"
            )
        for name, value, low in (
            ("batch", self.batch, 1),
            ("steps", self.steps, 1),
            ("warmup", self.warmup, 0),
            ("classes", self.num_classes, 2),
        ):
            if value < low:
                raise SamMedftError(f"bench --{name} {value} is too small; use {low} or more")
        if self.image_size is not None and (self.image_size < 32 or self.image_size % 16):
            raise SamMedftError(
                f"bench --image-size {self.image_size}: use a multiple of 16 "
                f"(the patch size), at least 32, e.g. 1024 or 256"
            )
        if self.num_workers < 0:
            raise SamMedftError(f"bench --workers {self.num_workers}: use 0 or more")
        where = get_args(TrainConfig.model_fields["transform_device"].annotation)
        if self.transform_device not in where:
            raise SamMedftError(
                f"bench --transform-device {self.transform_device!r}: use "
                f"{', '.join(where[:-1])} or {where[-1]}"
            )
        if self.mode == "epoch" and self.num_classes > 3:
            raise SamMedftError(
                f"bench --mode epoch uses the synthetic set (2 or 3 classes), not "
                f"--classes {self.num_classes}"
            )
        if self.mode == "decoder-cached" and self.peft.scope != "decoder":
            raise SamMedftError(
                f"bench --mode decoder-cached needs a decoder-only scope, but "
                f"peft.scope is {self.peft.scope!r}; use a *_decoder recipe or "
                f"--mode train"
            )
        if self.device and self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SamMedftError(
                f"bench --device {self.device}: this torch has no CUDA device; use --device cpu"
            )


@dataclass
class BenchResult:
    """One measurement; `as_dict()` is the --json record."""

    model: str
    method: str
    scope: str
    mode: str
    batch: int
    image_size: int
    num_classes: int
    steps: int
    warmup: int
    images_per_s: float
    step_mean_s: float
    step_median_s: float
    step_min_s: float
    warmup_s: float
    peak_gpu_mem_gib: float | None
    peak_gpu_reserved_gib: float | None
    peak_rss_mib: float
    rss_delta_mib: float
    device: str
    device_name: str
    torch: str
    transformers: str
    precision: str
    attn_implementation: str
    fast_attention: bool
    fast_attention_modules: int
    compile: bool
    compiled_layers: int
    activation_checkpointing: bool
    sdpa_backends: dict[str, bool]
    threads: int
    trainable_params: int
    total_params: int
    final_loss: float | None
    cache: dict[str, int] | None = None
    epoch: dict[str, Any] | None = None  # epoch mode: the end-to-end figures

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- model ------------------------------------------------------------------------------


def build_bench_model(
    name: str,
    image_size: int | None,
    num_classes: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    """A random-weight SAM-family model (SamModel, SamHQModel, MobileSamModel) with `name`'s
    architecture at `image_size`.

    The vision input size, its position-embedding grid and the prompt encoder's embedding
    grid (size / 16) are changed together, so a small image size is a consistent model.
    """
    try:
        cfg = architecture_config(name)
    except KeyError:
        known = ", ".join(["tiny", *random_init_names()])
        raise SamMedftError(
            f"bench --model {name!r} has no built-in architecture; use one of {known}"
        ) from None
    size = image_size or cfg.vision_config.image_size
    cfg.vision_config.image_size = size
    cfg.prompt_encoder_config.image_size = size
    cfg.prompt_encoder_config.image_embedding_size = size // cfg.vision_config.patch_size
    cfg.mask_decoder_config.num_multimask_outputs = AutomaticTask().mask_outputs(num_classes)
    # SamVisionConfig's default init std is 1e-10; real checkpoints have O(1) activations
    cfg.vision_config.initializer_range = 0.02
    cfg.initializer_range = 0.02
    entry = lookup(name)
    if entry is not None and entry.family == "sam_hq":
        cfg = sam_hq_config(cfg)
    with torch.random.fork_rng(devices=[]), torch.device(device):  # init on the GPU: fast
        torch.manual_seed(seed)
        return use_official_decoder(model_class(cfg)(cfg)).eval()


# ---- the measurement --------------------------------------------------------------------


def run_bench(s: BenchSettings) -> BenchResult:
    """Build, prepare and time the step that `s` describes."""
    s.check()
    rss0 = _rss_mib()
    device = torch.device(s.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    used = resolve_precision(s.precision, device.type, what="bench --precision")
    precision = "fp32" if used == "no" else used
    model = build_bench_model(s.model, s.image_size, s.num_classes, s.seed, device)
    inner_cfg = model.config
    size = inner_cfg.vision_config.image_size
    if s.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_fast = enable_fast_attention(model, pad_value=s.pad_value) if s.fast else 0
    model, info = apply_method(model, s.peft)
    model.to(device)
    frozen = encoder_is_frozen(model)
    if s.mode == "decoder-cached" and not frozen:
        raise SamMedftError(
            "bench --mode decoder-cached: this method trains encoder weights; "
            "use a decoder-only scope or --mode train"
        )
    if frozen and getattr(inner_cfg, "model_type", "sam") == "sam_hq":
        raise SamMedftError(
            f"bench: decoder-only scopes of {s.model} are not supported (SAM-HQ's "
            f"decoder also needs the encoder's intermediate embeddings); use an "
            f"encdec recipe"
        )
    n_compiled = enable_regional_compile(model) if s.compile else 0

    gen = torch.Generator().manual_seed(s.seed)
    pixels = torch.randn(s.batch, 3, size, size, generator=gen).to(device)
    mask = 4 * inner_cfg.prompt_encoder_config.image_embedding_size
    labels = torch.randint(0, s.num_classes, (s.batch, mask, mask), generator=gen).to(device)
    autocast = _autocast(device, precision)

    cache = None
    if s.mode == "predict":
        model.eval()
        step = _predict_step(model, pixels, autocast)
    else:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=cuda or None)
        embeddings_fn = None
        if s.mode == "decoder-cached":
            embeddings_fn, cache = _cached_embeddings(model, pixels, autocast, device)
        update = _update_fn(model, optimizer, autocast, frozen, embeddings_fn)
        step = _Step(lambda: update(pixels, labels))

    warmup_s, times, total = _time(step, s.warmup, s.steps, device)
    loss = step.last_loss  # type: ignore[attr-defined]
    epoch = None
    if s.mode == "epoch":
        epoch = _time_epoch(s, model, update, size, device)
        epoch["step_images_per_s"] = s.batch * s.steps / total
        epoch["ratio"] = epoch["images_per_s"] / epoch["step_images_per_s"]
    peak = reserved = None
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        reserved = torch.cuda.max_memory_reserved(device) / 2**30
    rss = _rss_mib()
    return BenchResult(
        model=s.model,
        method=info.method,
        scope=info.scope,
        mode=s.mode,
        batch=s.batch,
        image_size=size,
        num_classes=s.num_classes,
        steps=s.steps,
        warmup=s.warmup,
        images_per_s=s.batch * s.steps / total,
        step_mean_s=total / s.steps,
        step_median_s=statistics.median(times),
        step_min_s=min(times),
        warmup_s=warmup_s,
        peak_gpu_mem_gib=peak,
        peak_gpu_reserved_gib=reserved,
        peak_rss_mib=rss,
        rss_delta_mib=rss - rss0,
        device=str(device),
        device_name=_device_name(device),
        torch=torch.__version__,
        transformers=transformers.__version__,
        precision=precision,
        attn_implementation=str(getattr(unwrap(model).config, "_attn_implementation", None)),
        fast_attention=n_fast > 0,
        fast_attention_modules=n_fast,
        compile=s.compile,
        compiled_layers=n_compiled,
        activation_checkpointing=s.activation_checkpointing,
        sdpa_backends=_sdpa_backends(),
        threads=torch.get_num_threads(),
        trainable_params=info.trainable,
        total_params=info.total,
        final_loss=None if loss is None else float(loss),
        cache=None if cache is None else cache.stats(),
        epoch=epoch,
    )


class _Step:
    """A callable step that keeps its last loss (read once, after timing: no sync per step)."""

    def __init__(self, fn: Callable[[], torch.Tensor | None]) -> None:
        self.fn = fn
        self.last_loss: torch.Tensor | None = None

    def __call__(self) -> None:
        self.last_loss = self.fn()


def _update_fn(
    model,
    optimizer,
    autocast,
    frozen,
    embeddings_fn: Callable[[], torch.Tensor] | None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimizer update on (pixels, labels): the trainer's own step (automatic task,
    default loss), so the timed step is the trained one."""
    task = AutomaticTask(loss=LossConfig())

    def update(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings_fn() if embeddings_fn is not None else None
        return optimizer_step(task, model, {"pixel_values": pixels, "labels": labels}, optimizer,
                              frozen_encoder=frozen, embeddings=embeddings, autocast=autocast)

    return update


def _time_epoch(s: BenchSettings, model, update, size: int, device: torch.device) -> dict:
    """The step fed by the training data pipeline: synthetic slices preprocessed once to `size` (timed apart), uint8 batches from the DataLoader, finished (normalised,
    augmented) on the accelerator or in the workers. Warm-up batches are excluded."""
    n = s.batch * (s.warmup + s.steps)
    labels = dict(SYNTHETIC_LABELS) if s.num_classes == 3 else None
    recipe = Recipe(
        data={"source": "folder", "folder": ".", "labels": labels, "binary": labels is None},
        train={"batch_size": s.batch, "num_workers": s.num_workers, "seed": s.seed,
               "transform_device": s.transform_device},
    )
    label_map = LabelMap(labels) if labels else LabelMap(binary=True)
    spec = ModelFrameSpec(model_geometry(model), "sam", label_map)
    with tempfile.TemporaryDirectory(prefix="sam-medft-bench-") as tmp:
        # written small (quick on any machine) and resized up once by the preprocessing:
        # every epoch reads input-size uint8 from the store either way
        write_synthetic(tmp, n_train=n, n_val=0, n_test=0, size=min(size, 256), seed=s.seed)
        recipe.data.folder = Path(tmp)
        recipe.data.val_fraction = 0
        splits = build_splits(recipe.data)
        t0 = time.perf_counter()
        store = PreprocessedStore.build(splits["train"], spec.geometry, label_map,
                                        num_workers=s.num_workers)
        preprocess_s = time.perf_counter() - t0
        on_accelerator = transform_on_accelerator(recipe.train, AutomaticTask(), device)
        data = build_train_data(recipe, {"train": splits["train"]}, spec,
                                stores={"train": store}, num_processes=1,
                                on_accelerator=on_accelerator)

        def step(batch: dict) -> None:
            batch = send_to_device(batch, device, non_blocking=True)
            batch = data.finish_train(batch)
            update(batch["pixel_values"], batch["labels"])

        batches = iter(data.train_dl)
        for _ in range(s.warmup):
            step(next(batches))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(s.steps):
            step(next(batches))
        _sync(device)
        total = time.perf_counter() - t0
    return {
        "images_per_s": s.batch * s.steps / total,
        "step_mean_s": total / s.steps,
        "preprocess_s": preprocess_s,
        "preprocessed_images": n,
        "num_workers": s.num_workers,
        "transform_device": "accelerator" if on_accelerator else "loader",
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _predict_step(model, pixels, autocast) -> _Step:
    def step() -> None:
        with torch.inference_mode(), autocast():
            logits, _ = automatic_forward(model, pixels)
            logits.argmax(1)

    return _Step(step)


def _cached_embeddings(model, pixels, autocast, device):
    """The embeddings lookup of a decoder-only step once the cache is warm."""
    cache = EmbeddingCache("bench", device=device)
    keys = content_keys(pixels)  # in training these come from the data-loader workers

    def encode(px: torch.Tensor) -> torch.Tensor:
        with autocast():
            return image_embeddings(model, px)

    cache.get_or_compute(keys, pixels, encode)  # the first epoch fills the cache

    def lookup() -> torch.Tensor:
        return cache.get_or_compute(keys, pixels, encode)

    return lookup, cache


def _time(
    step: Callable[[], None], warmup: int, steps: int, device: torch.device
) -> tuple[float, list[float], float]:
    """-> (warm-up seconds, per-step seconds, total seconds of the timed steps)."""
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s = time.perf_counter() - t0
    if cuda:  # events: per-step times without a host sync per step
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(steps)
        ]
        t0 = time.perf_counter()
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        total = time.perf_counter() - t0
        times = [start.elapsed_time(end) / 1000 for start, end in events]
    else:
        times = []
        t0 = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    return warmup_s, times, total


def _autocast(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def _rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _sdpa_backends() -> dict[str, bool]:
    b = torch.backends.cuda
    out = {
        "flash": b.flash_sdp_enabled(),
        "mem_efficient": b.mem_efficient_sdp_enabled(),
        "math": b.math_sdp_enabled(),
    }
    if hasattr(b, "cudnn_sdp_enabled"):
        out["cudnn"] = b.cudnn_sdp_enabled()
    return out


# ---- presentation -----------------------------------------------------------------------


def result_table(r: BenchResult):
    """A two-column rich table of one result."""
    title = f"sam-medft bench: {r.model} {r.method}/{r.scope}, {r.mode}"
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    mem = (
        f"{r.peak_gpu_mem_gib:.2f} GiB allocated ({r.peak_gpu_reserved_gib:.2f} reserved)"
        if r.peak_gpu_mem_gib is not None
        else f"{r.peak_rss_mib:.0f} MiB peak RSS (+{r.rss_delta_mib:.0f} MiB in this run)"
    )
    rows = [
        ("images/s", f"{r.images_per_s:.2f}"),
        (
            "step time",
            f"mean {r.step_mean_s * 1000:.1f} ms, median {r.step_median_s * 1000:.1f} ms, "
            f"min {r.step_min_s * 1000:.1f} ms",
        ),
        ("peak memory", mem),
        ("batch x size", f"{r.batch} x {r.image_size}px, {r.num_classes} classes"),
        ("steps", f"{r.steps} timed after {r.warmup} warm-up ({r.warmup_s:.1f} s)"),
        ("device", f"{r.device_name} [{r.device}]"),
        ("torch / transformers", f"{r.torch} / {r.transformers}"),
        ("precision", r.precision),
        (
            "attention",
            f"{r.attn_implementation}, fast path "
            f"{'on (' + str(r.fast_attention_modules) + ' modules)' if r.fast_attention else 'off'}",
        ),
        ("compile", f"{r.compiled_layers} vision layers" if r.compile else "off"),
        ("activation checkpointing", "on" if r.activation_checkpointing else "off"),
        ("parameters", f"{r.trainable_params:,} trainable of {r.total_params:,}"),
    ]
    if r.cache is not None:
        rows.append(("embedding cache", ", ".join(f"{k} {v}" for k, v in r.cache.items())))
    if r.epoch is not None:
        e = r.epoch
        rows.append((
            "end to end (data included)",
            f"{e['images_per_s']:.2f} images/s = {e['ratio']:.2f} x the step's "
            f"{e['step_images_per_s']:.2f}; transforms in the {e['transform_device']}, "
            f"{e['num_workers']} workers; {e['preprocessed_images']} images preprocessed "
            f"once in {e['preprocess_s']:.1f} s",
        ))
    if r.final_loss is not None:
        rows.append(("last loss", f"{r.final_loss:.4f}"))
    for k, v in rows:
        table.add_row(k, v)
    return table
