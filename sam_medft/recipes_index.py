"""The shipped recipes, and their parameter counts computed from real model configs.

`sam-medft recipes --params` builds each recipe's model on the meta device (shapes only, no
weights, no download), applies its method, and counts total and trainable parameters. The
adapter file holds exactly the trainable tensors (PEFT's `save_pretrained` writes the
adapter weights and the trained head copies; vanilla writes its trainable tensors), so its
size is the trainable count times 4 bytes (fp32), plus a small safetensors header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.table import Table

from sam_medft.adapters.methods import meta_model
from sam_medft.config import Recipe, load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.models.registry import ARCH_OF, architecture_config
from sam_medft.tasks import task_for

BYTES_PER_PARAM = 4  # adapters are saved in fp32


@dataclass
class RecipeEntry:
    name: str  # path relative to the recipes folder, without .yaml
    path: Path
    recipe: Recipe


@dataclass
class ParamCount:
    total: int  # parameters of the fine-tuned model (base + adapter, heads counted once)
    trainable: int

    @property
    def adapter_bytes(self) -> int:
        """Tensor bytes of the saved adapter file (the safetensors header comes on top)."""
        return self.trainable * BYTES_PER_PARAM

    @property
    def adapter_mb(self) -> float:
        return self.adapter_bytes / 1e6

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable / self.total


def list_recipes(root: Path) -> list[RecipeEntry]:
    """Every recipe under `root` (`sam_medft.resources.recipes_dir()` for the shipped ones)."""
    root = Path(root)
    if not root.is_dir():  # an installation without its recipes must not list nothing quietly
        raise SamMedftError(f"no recipes folder {root}; reinstall sam_medft from a wheel or a "
                            "source checkout")
    return [
        RecipeEntry(p.relative_to(root).with_suffix("").as_posix(), p, load_recipe(p))
        for p in sorted(root.rglob("*.yaml"))
    ]


def count_parameters(recipe: Recipe, num_classes: int = 2) -> ParamCount:
    """Counts for the recipe's model/method with `num_classes` classes, on the meta device.

    The mask-output count follows the trainer: one per class in automatic mode, SAM's 3
    multimask outputs in prompt modes.
    """
    name = recipe.model.name
    try:
        cfg = architecture_config(name)
    except KeyError:
        raise SamMedftError(
            f"model.name={name!r}: parameter counts need the architecture without weights, "
            f"known for: tiny, {', '.join(ARCH_OF)}; use one of those names"
        ) from None
    _, info = meta_model(cfg, task_for(recipe.prompt).mask_outputs(num_classes), recipe.peft)
    return ParamCount(info.total, info.trainable)


def recipes_table(entries: list[RecipeEntry]) -> Table:
    table = Table(title="shipped recipes (sam-medft train <recipe>)")
    for col in ("recipe", "model", "method", "scope", "prompt"):
        table.add_column(col)
    for e in entries:
        r = e.recipe
        table.add_row(e.name, r.model.name, r.peft.method, r.peft.scope, r.prompt.mode)
    return table


def params_table(entries: list[RecipeEntry], num_classes: int = 2) -> Table:
    """One row per recipe. Narrow enough for an 80-column pipe (rich would otherwise cut
    the numbers to `…` when the output is not a terminal); the recipe name says
    model/method_scope."""
    table = Table(
        title=f"parameters per recipe ({num_classes} classes, from the model configs)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("recipe", no_wrap=True)
    for col in ("total", "trainable", "trainable\n%", "adapter\nMB"):
        table.add_column(col, justify="right", no_wrap=True)
    for e in entries:
        c = count_parameters(e.recipe, num_classes)
        table.add_row(
            e.name,
            f"{c.total:,}",
            f"{c.trainable:,}",
            f"{c.trainable_percent:.2f}",
            f"{c.adapter_mb:.1f}",
        )
    return table
