"""The shipped recipes, and their parameter counts computed from real model configs.

`sam-medft recipes --params` builds each recipe's model on the meta device (shapes only, no
weights, no download), applies its method, and counts total and trainable parameters; the
adapter file size is the trainable count in fp32 (what `save_pretrained` writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table
from transformers import SamModel

from sam_medft.config import Recipe, load_recipe
from sam_medft.models.registry import architecture_config


@dataclass
class RecipeEntry:
    name: str  # path relative to the recipes folder, without .yaml
    path: Path
    recipe: Recipe


@dataclass
class ParamCount:
    total: int
    trainable: int

    @property
    def adapter_mb(self) -> float:
        return self.trainable * 4 / 1e6


def list_recipes(root: Path) -> list[RecipeEntry]:
    return [RecipeEntry(str(p.relative_to(root).with_suffix("")), p, load_recipe(p))
            for p in sorted(Path(root).rglob("*.yaml"))]


def count_parameters(recipe: Recipe, num_classes: int = 2) -> ParamCount:
    """Counts for the recipe's model/method with `num_classes` outputs, on the meta device."""
    from sam_medft.peft.methods import apply_method

    cfg = architecture_config(recipe.model.name)
    cfg.mask_decoder_config.num_multimask_outputs = num_classes
    with torch.device("meta"):
        model = SamModel(cfg)
        model, info = apply_method(model, recipe.peft)
    return ParamCount(info.total, info.trainable)


def recipes_table(entries: list[RecipeEntry]) -> Table:
    table = Table(title="shipped recipes (sam-medft train recipes/<name>.yaml)")
    for col in ("recipe", "model", "method", "scope", "prompt"):
        table.add_column(col)
    for e in entries:
        r = e.recipe
        table.add_row(e.name, r.model.name, r.peft.method, r.peft.scope, r.prompt.mode)
    return table


def params_table(entries: list[RecipeEntry], num_classes: int = 2) -> Table:
    table = Table(title=f"parameters per recipe ({num_classes} classes, from the model configs)")
    for col in ("recipe", "model", "method", "scope", "total", "trainable", "trainable %", "adapter MB"):
        table.add_column(col, justify="right" if col in ("total", "trainable", "trainable %", "adapter MB") else "left")
    for e in entries:
        r = e.recipe
        c = count_parameters(r, num_classes)
        table.add_row(e.name, r.model.name, r.peft.method, r.peft.scope, f"{c.total:,}",
                      f"{c.trainable:,}", f"{100 * c.trainable / c.total:.2f}", f"{c.adapter_mb:.1f}")
    return table
