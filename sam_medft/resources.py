"""Where the shipped recipes and accelerate configs are.

The repository's top-level `recipes/` and `accelerate_configs/` are the single source. A
built wheel carries a copy inside the package (`sam_medft/recipes/`,
`sam_medft/accelerate_configs/`; see setup.py), so `pip install sam_medft` has them; a source
checkout (an editable install, or running from the repository) has only the top-level
folders. Each lookup returns the packaged folder when it is there, else the checkout's.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from sam_medft.errors import SamMedftError

RECIPES = "recipes"
ACCELERATE_CONFIGS = "accelerate_configs"
_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root in a source checkout


def _shipped(folder: str) -> Path:
    packaged = files("sam_medft").joinpath(folder)  # a plain Path for an installed package
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged.resolve()
    checkout = _CHECKOUT / folder
    if checkout.is_dir():
        return checkout
    # neither: return where an install would have it; callers report it as missing
    return Path(str(packaged))


def _existing(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise SamMedftError(f"the shipped {what} are missing from this installation (no folder "
                            f"{root}); reinstall sam_medft from a wheel or a source checkout")
    return root


def recipes_dir() -> Path:
    """The folder of the shipped recipes (`demo.yaml`, `<model>/<method>_<scope>.yaml`)."""
    return _shipped(RECIPES)


def accelerate_configs_dir() -> Path:
    """The folder of the shipped `accelerate launch --config_file` files."""
    return _shipped(ACCELERATE_CONFIGS)


def accelerate_configs() -> list[Path]:
    """The shipped accelerate config files, sorted by name."""
    return sorted(_existing(accelerate_configs_dir(), "accelerate configs").glob("*.yaml"))


def recipe_files() -> list[Path]:
    """The shipped recipe files, sorted by path."""
    return sorted(_existing(recipes_dir(), "recipes").rglob("*.yaml"))


def accelerate_config(name: str) -> Path:
    """A shipped accelerate config by name (`cpu`, `multi_gpu.yaml`, ...)."""
    shipped = accelerate_configs()
    for path in shipped:
        if name in (path.name, path.stem):
            return path
    raise SamMedftError(f"no shipped accelerate config {name!r}; the shipped ones are "
                        f"{', '.join(p.stem for p in shipped)}")


def find_recipe(recipe: str | Path) -> Path:
    """A recipe file: the path as given when it exists, else the shipped recipe of that short
    name (`demo`, `sam-vit-base/lora_encdec`, also spelt `recipes/demo.yaml` as in a
    checkout). An unknown name comes back unchanged, for `load_recipe` to report."""
    recipe = Path(recipe)
    if recipe.exists():
        return recipe
    names = [recipe]
    if not recipe.is_absolute() and len(recipe.parts) > 1 and recipe.parts[0] == "recipes":
        names.append(Path(*recipe.parts[1:]))
    for name in names:
        shipped = recipes_dir() / name
        for cand in (shipped, shipped.with_suffix(".yaml")):
            if cand.is_file():
                return cand
    return recipe
