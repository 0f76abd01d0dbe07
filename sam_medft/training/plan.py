"""`sam-medft train --dry-run`: the memory plan of a recipe, from model configs, no weights.

The model is built on the meta device (shapes only) with the recipe's method applied and one
training forward is traced: every tensor autograd keeps for backward is recorded through
`saved_tensors_hooks` (parameters excluded, views counted once), per vision layer too, and
the largest single temporary is tracked with a dispatch mode. SDPA runs as the
memory-efficient kernel a GPU picks for SAM's float rel-pos bias (on meta, torch would
take the math path and count the attention probabilities as well).

Peak per GPU ~ fp32 weights + half-precision weight copies (autocast) + gradients + AdamW
state (+ DDP buckets) + activations kept for backward + 2 x the largest temporary.
Against the measured vit-b numbers of DESIGN.md (H100/H200, batch 4, bf16, 1024^2) this gives
13.7 GiB for LoRA encoder+decoder (measured 12.7), 16.5 GiB for full fine-tuning
(measured 15.1) and 3.5 GiB for decoder only (measured 3.7): an estimate within ~10%,
on the safe side where it matters (training the encoder).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig

from sam_medft.adapters.methods import encoder_is_frozen, meta_model
from sam_medft.config import Recipe
from sam_medft.data.preprocessed import estimate_bytes
from sam_medft.data.transforms import SamGeometry
from sam_medft.errors import SamMedftError
from sam_medft.model_names import REGISTRY
from sam_medft.models.device_map import split_counts, validate_fractions
from sam_medft.models.loading import unwrap
from sam_medft.models.registry import architecture_config, random_base_name
from sam_medft.precision import DTYPES, resolve_precision
from sam_medft.tasks import AutomaticTask, task_for
from sam_medft.training.step import training_loss

GiB = 2**30


@dataclass
class MemoryPlan:
    """What one training step holds in memory, from the recipe's model config."""

    model: str
    method: str
    scope: str
    num_classes: int
    image_size: int
    batch_size: int
    precision: str  # bf16 | fp16 | no
    checkpointing: bool
    grad_accum: int
    total_params: int
    trainable_params: int
    graph_params: int  # parameters whose (cast) copies live in the autograd graph
    saved_bytes: int  # activations kept for backward, at batch_size, no checkpointing
    layer_saved: list[int] = field(default_factory=list)  # per vision layer, at batch_size
    layer_input_bytes: int = 0  # one vision layer's input (what checkpointing keeps)
    largest_temp_bytes: int = 0  # the largest tensor the step creates, at batch_size
    layer_params: list[int] = field(default_factory=list)
    layer_trainable: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ---- derived ------------------------------------------------------------------------
    def at_batch(self, batch_size: int, checkpointing: bool | None = None) -> MemoryPlan:
        """The same plan for another per-GPU batch (activations scale with the batch)."""
        s = batch_size / self.batch_size
        return replace(
            self,
            batch_size=batch_size,
            checkpointing=self.checkpointing if checkpointing is None else checkpointing,
            saved_bytes=round(self.saved_bytes * s),
            layer_saved=[round(x * s) for x in self.layer_saved],
            layer_input_bytes=round(self.layer_input_bytes * s),
            largest_temp_bytes=round(self.largest_temp_bytes * s),
        )

    def activations(self, checkpointing: bool | None = None) -> int:
        """Kept for backward; with checkpointing each layer keeps only its input, and one
        layer's activations come back during its backward."""
        ckpt = self.checkpointing if checkpointing is None else checkpointing
        if not ckpt or not any(self.layer_saved):
            return self.saved_bytes
        outside = self.saved_bytes - sum(self.layer_saved)
        return outside + len(self.layer_saved) * self.layer_input_bytes + max(self.layer_saved)

    @property
    def weights(self) -> int:
        return 4 * self.total_params

    @property
    def half_copies(self) -> int:
        return 0 if self.precision == "no" else 2 * self.graph_params

    @property
    def gradients(self) -> int:
        return 4 * self.trainable_params

    @property
    def optimizer(self) -> int:
        return 8 * self.trainable_params  # AdamW: exp_avg + exp_avg_sq in fp32

    @property
    def temporaries(self) -> int:
        return 2 * self.largest_temp_bytes

    def per_gpu(self, strategy: str = "single", n_gpus: int = 1) -> dict[str, int]:
        """Bytes per GPU by item for `single`, `ddp` or `fsdp2` over n_gpus."""
        rows = {
            "weights fp32": self.weights,
            "bf16/fp16 weight copies": self.half_copies,
            "gradients": self.gradients,
            "AdamW state": self.optimizer,
            "DDP buckets": self.gradients if strategy == "ddp" else 0,
            "activations": self.activations(),
            "temporaries": self.temporaries,
        }
        if strategy == "fsdp2":
            biggest_layer = max(self.layer_params or [0])
            for k in ("weights fp32", "gradients", "AdamW state"):
                rows[k] = math.ceil(rows[k] / n_gpus)
            # parameters are gathered (in the compute dtype) one block at a time, + prefetch
            size = 4 if self.precision == "no" else 2
            rows["bf16/fp16 weight copies"] = 2 * size * biggest_layer
        rows["total"] = sum(rows.values())
        return rows

    def split(self, fractions: dict[str, float]) -> dict[str, dict[str, int]]:
        """Bytes per device for a `model.device_map` split (layers by fraction)."""
        pairs = validate_fractions(fractions)
        counts = split_counts(len(self.layer_params), pairs)
        outside_params = self.total_params - sum(self.layer_params)
        outside_train = self.trainable_params - sum(self.layer_trainable)
        outside_saved = self.saved_bytes - sum(self.layer_saved)
        half = 0 if self.precision == "no" else 2
        out, i = {}, 0
        for k, ((device, _), n) in enumerate(zip(pairs, counts, strict=True)):
            sl = slice(i, i + n)
            i += n
            params = sum(self.layer_params[sl]) + (outside_params if k == len(pairs) - 1 else 0)
            train = sum(self.layer_trainable[sl]) + (outside_train if k == len(pairs) - 1 else 0)
            in_graph = params if self.graph_params >= self.total_params else train
            saved = self.layer_saved[sl]
            acts = sum(saved) + (outside_saved if k == len(pairs) - 1 else 0)
            if self.checkpointing and any(saved):
                acts += n * self.layer_input_bytes + max(saved) - sum(saved)
            rows = {
                "weights fp32": 4 * params,
                "bf16/fp16 weight copies": half * in_graph,
                "gradients": 4 * train,
                "AdamW state": 8 * train,
                "DDP buckets": 0,
                "activations": acts,
                "temporaries": self.temporaries,
            }
            rows["total"] = sum(rows.values())
            out[device] = rows
        return out


# ---- tracing ------------------------------------------------------------------------------


def _efficient_sdpa(orig):
    """SDPA as the memory-efficient kernel (what CUDA runs for a float attention bias)."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if q.device.type != "meta" or (attn_mask is not None and attn_mask.dtype == torch.bool):
            return orig(
                q,
                k,
                v,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                **kw,
            )
        if attn_mask is not None:
            attn_mask = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, attn_mask, True, dropout_p, is_causal, scale=scale
        )[0]

    return sdpa


@contextlib.contextmanager
def _patched_sdpa():
    orig = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _efficient_sdpa(orig)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def trace_step(
    model: torch.nn.Module,
    batch_size: int,
    image_size: int,
    dtype: torch.dtype,
    frozen_encoder: bool,
) -> dict:
    """Trace the forward + loss of the trainer's step (automatic task) on a meta-device
    model; returns byte counts of what autograd saves for the backward."""
    params = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # keeps ids unique while tracing

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in params and id(t) not in params and id(base) not in saved:
            saved[id(base)] = base.numel() * base.element_size()
            keep.append(base)
        return t

    layers = list(unwrap(model).vision_encoder.layers)
    marks: list[list[int]] = [[0, 0] for _ in layers]
    inputs: list[int] = []
    handles = []
    for i, layer in enumerate(layers):

        def pre(_m, args, i=i):
            marks[i][0] = sum(saved.values())
            if i == 0:
                x = args[0]
                inputs.append(x.numel() * x.element_size())

        def post(_m, _a, _o, i=i):
            marks[i][1] = sum(saved.values())

        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    x = torch.empty(batch_size, 3, image_size, image_size, device="meta", dtype=dtype)
    mask_size = unwrap(model).config.prompt_encoder_config.image_embedding_size * 4
    labels = torch.zeros(batch_size, mask_size, mask_size, device="meta", dtype=torch.int64)
    mode = _LargestOutput()
    try:
        with _patched_sdpa(), mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            training_loss(AutomaticTask(), model, {"pixel_values": x, "labels": labels},
                          frozen_encoder=frozen_encoder)
    finally:
        for h in handles:
            h.remove()
    return {
        "saved": sum(saved.values()),
        "layer_saved": [b - a for a, b in marks],
        "layer_input": inputs[0] if inputs else 0,
        "largest": mode.largest,
    }


# ---- the plan of a recipe -----------------------------------------------------------------


def plan_precision(mixed_precision: str) -> str:
    """The precision on the training GPU (the plan is for it, not for this machine: a GPU
    here tells whether it has bf16, none here means a current one that has)."""
    here = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
    return resolve_precision(mixed_precision, "cuda", bf16_supported=here)


def model_config(recipe: Recipe):
    """The recipe's SamConfig, without weights: registry shapes, a local folder's config.json,
    or (cache/network) a Hub config."""
    name = recipe.model.name
    name = random_base_name(name) or name  # `random:<name>`: a random_init run's base
    by_id = {e.hub_id: n for n, e in REGISTRY.items() if e.hub_id}
    try:
        return architecture_config(by_id.get(name, name))
    except KeyError:
        pass
    try:
        return AutoConfig.from_pretrained(name, revision=recipe.model.revision)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SamMedftError(
            f"--dry-run: no config for model.name {name!r} ({first}); use a registry "
            f"name (sam-vit-base, sam-vit-huge, ...), a local folder with "
            f"config.json, or a cached Hub id"
        ) from None


def recipe_classes(recipe: Recipe) -> tuple[int, str | None]:
    """Mask outputs the model gets, and a note when the class count is a guess."""
    task = task_for(recipe.prompt)
    if recipe.data.labels:
        return task.mask_outputs(len(recipe.data.labels)), None
    if recipe.data.binary or task.prompted:
        return task.mask_outputs(2), None
    return (task.mask_outputs(2),
            "classes: 2 assumed (set data.labels for the exact count; it changes little)")


def run_name_note(recipe: Recipe) -> str | None:
    """A note when the run's folder name names another model than the one it trains (a
    shipped recipe's `name` with `model.name=...` changed on the command line)."""
    own = recipe.model.name
    named = [
        n for n in sorted(REGISTRY, key=len, reverse=True)
        if n in recipe.name and n != own and n not in own
    ]
    if not named:
        return None
    return (f"the run folder name {recipe.name!r} comes from the recipe and names "
            f"{named[0]}, but this run trains model.name={own}: pass name=... to name it "
            f"after the model")


def estimate(recipe: Recipe) -> MemoryPlan:
    """The memory plan of `recipe` at its batch size, traced on the meta device."""
    cfg = model_config(recipe)
    if getattr(cfg, "model_type", "sam") not in ("sam", "sam_hq", "mobile_sam"):
        raise SamMedftError(
            f"--dry-run supports SAM / SAM-HQ / MobileSAM models; {recipe.model.name} is "
            f"{cfg.model_type!r}"
        )
    num_classes, note = recipe_classes(recipe)
    precision = plan_precision(recipe.train.mixed_precision)
    dtype = DTYPES[precision]
    model, info = meta_model(cfg, num_classes, recipe.peft)
    frozen = encoder_is_frozen(model)
    base = unwrap(model)
    layers = list(base.vision_encoder.layers)
    layer_params = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    layer_trainable = [
        sum(p.numel() for p in layer.parameters() if p.requires_grad) for layer in layers
    ]
    encoder_params = sum(p.numel() for p in base.vision_encoder.parameters())
    graph_params = info.total - (encoder_params if frozen else 0)
    model.to(dtype)
    b = recipe.train.batch_size
    traced = trace_step(model, b, cfg.vision_config.image_size, dtype, frozen)
    notes = [n for n in [note] if n]
    notes += task_for(recipe.prompt).plan_notes()
    if recipe.model.adapter:
        notes.append(f"model.adapter is set: planned for model.name={recipe.model.name}")
    notes += [n for n in [run_name_note(recipe)] if n]
    if recipe.model.random_init:
        notes.append(f"model.random_init=true: {recipe.model.name} with RANDOM weights (no "
                     "download): a smoke test or benchmark, not a fine-tune of the checkpoint")
    return MemoryPlan(
        model=recipe.model.name,
        method=info.method,
        scope=info.scope,
        num_classes=num_classes,
        image_size=cfg.vision_config.image_size,
        batch_size=b,
        precision=precision,
        checkpointing=recipe.train.activation_checkpointing and not frozen,
        grad_accum=recipe.train.grad_accum,
        total_params=info.total,
        trainable_params=info.trainable,
        graph_params=graph_params,
        saved_bytes=traced["saved"],
        layer_saved=traced["layer_saved"],
        layer_input_bytes=traced["layer_input"],
        largest_temp_bytes=traced["largest"],
        layer_params=layer_params,
        layer_trainable=layer_trainable,
        notes=notes,
    )


def gpu_inventory() -> list[tuple[str, int]]:
    """(name, total bytes) of each visible CUDA GPU."""
    if not torch.cuda.is_available():
        return []
    return [
        (torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
        for i in range(torch.cuda.device_count())
    ]


def host_memory_line(recipe: Recipe, image_size: int, num_classes: int) -> str:
    """What the preprocessed store costs in host memory, per image (no data is read)."""
    t = recipe.train
    if t.preprocess_cache == "off":
        return "train.preprocess_cache=off: every image is decoded and resized every epoch"
    per_image = estimate_bytes(1, SamGeometry(image_size, image_size // 4), num_classes)
    where = {
        "memory": "all in memory",
        "disk": f"memory-mapped under runs/{recipe.name}/cache/",
        "auto": f"in memory up to {int(t.preprocess_cache_gib * GiB // per_image)} "
        f"images (train.preprocess_cache_gib={t.preprocess_cache_gib:g}, shared by the "
        f"processes of a machine), memory-mapped from runs/{recipe.name}/cache/ above that",
    }[t.preprocess_cache]
    return (f"host memory: train and val images are preprocessed once, "
            f"{per_image / 2**20:.2f} MiB each at {image_size} px, {where}")


__all__ = [
    "MemoryPlan",
    "estimate",
    "host_memory_line",
    "trace_step",
    "plan_precision",
    "model_config",
    "gpu_inventory",
]
