"""`sam-medft train --dry-run`: the recipe's memory plan (`training.plan`), what the preset
would choose (`training.presets`) and the host memory of the preprocessed store, as one
table. Above both: the preset reads the plan, the table reads the two.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from sam_medft.config import Recipe
from sam_medft.training.plan import GiB, estimate, gpu_inventory, host_memory_line
from sam_medft.training.presets import preset_summary


def plan_table(recipe: Recipe):
    """The rich renderable `sam-medft train --dry-run` prints."""
    plan = estimate(recipe)
    gpus = gpu_inventory()
    n = max(2, len(gpus))
    t = recipe.train
    head = Text(
        f"model {plan.model}  {plan.method}/{plan.scope}  {plan.num_classes} classes  "
        f"input {plan.image_size}x{plan.image_size}  batch {plan.batch_size} per GPU x "
        f"{t.grad_accum} accumulation  precision {plan.precision}  activation checkpointing "
        f"{'on' if plan.checkpointing else 'off'}\n"
        f"parameters {plan.total_params:,}  trainable {plan.trainable_params:,} "
        f"({100 * plan.trainable_params / max(1, plan.total_params):.2f}%)\n"
        f"run folder {recipe.run_dir}"
    )
    cols = {
        "one GPU": plan.per_gpu("single"),
        "DDP, per GPU": plan.per_gpu("ddp"),
        f"FSDP2 over {n}, per GPU": plan.per_gpu("fsdp2", n),
    }
    if recipe.model.device_map:
        for device, rows in plan.split(recipe.model.device_map).items():
            cols[f"split: {device}"] = rows
    table = Table(
        title="memory plan (estimate from the model config, no weights loaded)",
        caption="activations: kept for backward; temporaries: 2 x the largest tensor of the step",
    )
    table.add_column("GiB")
    for c in cols:
        table.add_column(c, justify="right")
    for row in next(iter(cols.values())):
        cells = [_gib(c[row]) for c in cols.values()]
        table.add_row(
            f"[bold]{row}[/]" if row == "total" else row,
            *([f"[bold]{x}[/]" for x in cells] if row == "total" else cells),
        )
    lines = []
    if any(plan.layer_saved):
        other = plan.activations(not plan.checkpointing)
        lines.append(
            f"activation checkpointing {'off' if plan.checkpointing else 'on'} "
            f"(train.activation_checkpointing={str(not plan.checkpointing).lower()}) "
            f"would make the activations {_gib(other)} GiB instead of "
            f"{_gib(plan.activations())} GiB"
        )
    if gpus:
        name, mem = gpus[0]
        need = plan.per_gpu("single")["total"]
        verdict = "fits" if need <= 0.9 * mem else "does NOT fit"
        lines.append(f"GPU 0: {name}, {_gib(mem)} GiB: one-GPU plan {verdict}")
    else:
        lines.append("no CUDA GPU here: the plan is for the GPU you will train on")
    lines.append(preset_summary(recipe, plan))
    lines.append(host_memory_line(recipe, plan.image_size, plan.num_classes))
    lines += plan.notes
    return Group(head, table, Text("\n".join(lines)))


def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


__all__ = ["plan_table"]
