"""`sam_medft.train(...)`: fine-tuning from Python, with a recipe and, optionally, data in
memory (a `datasets.Dataset`, a torch `Dataset` or a list of (image, mask) pairs).

The recipe is the same one the command line takes (a path, a shipped name such as `demo`
or `sam-vit-base/lora_encdec`, or a `Recipe`); keyword overrides change it the way
`section.key=value` does on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sam_medft.config import Recipe, load_recipe, validate_recipe
from sam_medft.data.in_memory import as_source
from sam_medft.errors import SamMedftError
from sam_medft.resources import find_recipe
from sam_medft.training.trainer import TrainResult
from sam_medft.training.trainer import train as run_training

# the keys of `data` that describe classes and pixels, not where the files are
_DATA_KEYS_KEPT = ("labels", "binary", "intensity", "keep_empty")


def train(recipe: str | Path | Recipe = "demo", train_data: Any = None, val_data: Any = None, *,
          resume: bool = False, overwrite: bool = False, image_column: str = "image",
          mask_column: str = "mask", **overrides: Any) -> TrainResult:
    """Fine-tune a SAM model; returns the run (`.run_dir`, `.best_dice`, `.history`, ...).

    `train_data` / `val_data`: data in memory, used instead of the recipe's data source
    (its `labels` / `binary` / `intensity` still apply): a `datasets.Dataset` with
    `image_column` and `mask_column`, a torch `Dataset` or a sequence whose items are
    `(image, mask)` pairs or `{"image": ..., "mask": ...}` (PIL images, arrays, tensors).
    Without `val_data` the adapter of the last step is saved.

    `overrides`: `train__max_steps=50` or `**{"train.max_steps": 50}` sets one key;
    `train={"max_steps": 50}` updates a section.
    """
    raw = _raw(recipe)
    for key, value in overrides.items():
        _override(raw, key.replace("__", "."), value)
    if train_data is None and val_data is not None:
        raise SamMedftError("val_data needs train_data too (the recipe's own data source has "
                            "its own validation split)")
    if train_data is not None:
        data = raw.get("data") or {}
        raw["data"] = {"source": "python", **{k: data[k] for k in _DATA_KEYS_KEPT if k in data}}
    r = validate_recipe(raw, source=_where(recipe))
    splits = None
    if train_data is not None:
        def source(obj: Any, label: str):
            return as_source(obj, r.data.intensity, label=label, image_column=image_column,
                             mask_column=mask_column)

        splits = {"train": source(train_data, "train_data")}
        if val_data is not None:
            splits["val"] = source(val_data, "val_data")
    return run_training(r, resume=resume, overwrite=overwrite, splits=splits)


def _raw(recipe: str | Path | Recipe) -> dict[str, Any]:
    """The recipe as a plain dict (paths already resolved as `load_recipe` does)."""
    if isinstance(recipe, Recipe):
        return recipe.model_dump(mode="python", exclude_unset=True)
    return load_recipe(find_recipe(recipe)).model_dump(mode="python", exclude_unset=True)


def _override(raw: dict[str, Any], key: str, value: Any) -> None:
    """`a.b=value` into the nested dict; a dict value for a section updates that section."""
    parts = key.split(".")
    if not all(parts):
        raise SamMedftError(f"override {key!r} has an empty part; use section__key=value or "
                            "**{'section.key': value}")
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = {**node[last], **value}
    else:
        node[last] = value


def _where(recipe: str | Path | Recipe) -> str:
    return "the Recipe given" if isinstance(recipe, Recipe) else str(recipe)
