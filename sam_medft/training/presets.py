"""`train.preset: auto`: batch size, accumulation and checkpointing picked for the GPU found.

micro-sam ships fixed presets per GPU size; here the choice comes from the recipe's own
memory plan (`plan.estimate`), so it holds for any model, method and resolution. The
effective batch (`batch_size x grad_accum` per process) never changes: the preset only
decides how it is cut into micro-batches, so a run gives the same optimisation on a 24 GB
and on an 80 GB card (up to float rounding). Preference order: the largest micro-batch
without activation checkpointing (fastest), then with checkpointing (about 30% more compute).
On a machine without a CUDA GPU the recipe is left as written, and the log says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType

from sam_medft.config import Recipe
from sam_medft.models.device_map import validate_fractions
from sam_medft.training.plan import GiB, MemoryPlan, estimate

HEADROOM = 0.85  # of the card's memory: CUDA context, allocator fragmentation, estimate error
TYPICAL_GPUS_GIB = (16, 24, 40, 80)


@dataclass(frozen=True)
class PresetChoice:
    batch_size: int
    grad_accum: int
    activation_checkpointing: bool
    need_bytes: int  # the plan's per-GPU total for this choice
    fits: bool

    def describe(self) -> str:
        return (
            f"batch_size={self.batch_size} grad_accum={self.grad_accum} "
            f"activation_checkpointing={str(self.activation_checkpointing).lower()} "
            f"(~{self.need_bytes / GiB:.1f} GiB per GPU)"
        )


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_total(
    plan: MemoryPlan, strategy: str, n_gpus: int, fractions: dict[str, float] | None = None
) -> int:
    """Bytes the busiest GPU needs under `strategy` (single | ddp | fsdp2 | split)."""
    if strategy == "split" and fractions:
        return max(rows["total"] for rows in plan.split(fractions).values())
    return plan.per_gpu(strategy, n_gpus)["total"]


def choose(
    plan: MemoryPlan,
    gpu_bytes: int,
    *,
    effective_batch: int,
    strategy: str = "single",
    n_gpus: int = 1,
    fractions: dict[str, float] | None = None,
) -> PresetChoice:
    """The fastest split of `effective_batch` into micro-batches that fits `gpu_bytes`."""
    budget = HEADROOM * gpu_bytes
    trains_encoder = any(plan.layer_saved)
    for ckpt in (False, True) if trains_encoder else (False,):
        for b in _divisors_desc(effective_batch):
            need = plan_total(plan.at_batch(b, ckpt), strategy, n_gpus, fractions)
            if need <= budget:
                return PresetChoice(b, effective_batch // b, ckpt, need, True)
    need = plan_total(plan.at_batch(1, trains_encoder), strategy, n_gpus, fractions)
    return PresetChoice(1, effective_batch, trains_encoder, need, False)


def _launch() -> tuple[str, int]:
    state = PartialState()
    if state.distributed_type == DistributedType.FSDP:
        return "fsdp2", state.num_processes
    if state.num_processes > 1:
        return "ddp", state.num_processes
    return "single", 1


def apply_preset(recipe: Recipe) -> tuple[Recipe, str | None]:
    """The recipe with the preset applied, and the line to log (None when preset is none)."""
    t = recipe.train
    if t.preset != "auto":
        return recipe, None
    if not torch.cuda.is_available():
        return recipe, (
            f"train.preset=auto: no CUDA GPU found, so the recipe is used as written "
            f"(batch_size={t.batch_size}, grad_accum={t.grad_accum}, "
            f"activation_checkpointing={str(t.activation_checkpointing).lower()})"
        )
    fractions = recipe.model.device_map
    strategy, n = ("split", 1) if fractions else _launch()
    if fractions:
        devices = [torch.device(d) for d, _ in validate_fractions(fractions)]
        gpu_bytes = min(
            torch.cuda.get_device_properties(d).total_memory for d in devices if d.type == "cuda"
        )
    else:
        gpu_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    plan = estimate(recipe)
    choice = choose(
        plan,
        gpu_bytes,
        effective_batch=t.batch_size * t.grad_accum,
        strategy=strategy,
        n_gpus=n,
        fractions=fractions,
    )
    train = t.model_copy(
        update={
            "batch_size": choice.batch_size,
            "grad_accum": choice.grad_accum,
            "activation_checkpointing": choice.activation_checkpointing,
        }
    )
    new = recipe.model_copy(update={"train": train})
    name = torch.cuda.get_device_name(torch.cuda.current_device())
    msg = (
        f"train.preset=auto on {name} ({gpu_bytes / GiB:.0f} GiB, {strategy}): "
        f"{choice.describe()}, effective batch {t.batch_size * t.grad_accum} per process kept"
    )
    if not choice.fits:
        msg += (
            " -- the estimate does NOT fit even so: use LoRA or an adapter instead of vanilla, "
            "FSDP2 (accelerate_configs/fsdp2.yaml) or a model.device_map split"
        )
    return new, msg


def preset_summary(recipe: Recipe, plan: MemoryPlan) -> str:
    """The `--dry-run` line: what the preset does (or would do on typical cards)."""
    t = recipe.train
    eff = t.batch_size * t.grad_accum
    if t.preset != "auto":
        return (
            "train.preset=none: batch size, accumulation and checkpointing as written "
            "(train.preset=auto picks them for the GPU found)"
        )
    fractions = recipe.model.device_map
    strategy = "split" if fractions else "single"
    if torch.cuda.is_available():
        mem = torch.cuda.get_device_properties(0).total_memory
        c = choose(plan, mem, effective_batch=eff, strategy=strategy, fractions=fractions)
        return f"train.preset=auto on this GPU ({mem / GiB:.0f} GiB): {c.describe()}"
    parts = []
    for gib in TYPICAL_GPUS_GIB:
        c = choose(plan, gib * GiB, effective_batch=eff, strategy=strategy, fractions=fractions)
        mark = "" if c.fits else " (does not fit)"
        parts.append(f"  {gib} GiB: {c.describe()}{mark}")
    return (
        "train.preset=auto (no GPU here; it picks on the training GPU, keeping the effective "
        f"batch {eff}):\n" + "\n".join(parts)
    )


__all__ = ["PresetChoice", "choose", "apply_preset", "preset_summary", "plan_total"]
