"""An installed package is whole: the wheel carries the recipes and the accelerate configs.

The repository's top-level `recipes/` and `accelerate_configs/` are the single source; a
build copies them into the package (setup.py) and `sam_medft.resources` finds them there,
or at the top level in a source checkout. The slow tests build a wheel from a copy of the
sources (nothing is downloaded, the checkout's build/ is not touched), install it with
`pip --target`, and run the real CLI from an unrelated folder with the dev venv's
dependencies but the wheel's sam_medft.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sam_medft import cli, resources
from sam_medft.errors import SamMedftError
from sam_medft.recipes_index import list_recipes

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "sam_medft", "recipes", "accelerate_configs")
MODELS = ("sam-vit-base", "sam-vit-huge", "slimsam-77")
STUDY = [f"{m}/{method}_{scope}" for m in MODELS for method in ("vanilla", "lora", "adapter")
         for scope in ("decoder", "encdec")]
PROMPT = [f"sam-vit-base/lora_encdec_{mode}" for mode in ("box", "point", "hybrid")]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


# ---- the source checkout (fast) ---------------------------------------------------------


def test_lookups_find_the_shipped_folders():
    """Editable/dev checkout: the top-level folders (or, installed, identical copies)."""
    assert _files(resources.recipes_dir()) == _files(REPO / "recipes")
    assert _files(resources.accelerate_configs_dir()) == _files(REPO / "accelerate_configs")
    assert cli.RECIPES_DIR == resources.recipes_dir()
    assert resources.accelerate_config("cpu") == resources.accelerate_configs_dir() / "cpu.yaml"
    assert resources.accelerate_config("cpu.yaml").name == "cpu.yaml"
    with pytest.raises(SamMedftError, match="cpu, fsdp2"):
        resources.accelerate_config("nope")


def test_recipe_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the shipped ones answer
    demo = cli.RECIPES_DIR / "demo.yaml"
    assert resources.find_recipe(Path("demo")) == demo
    assert resources.find_recipe(Path("recipes/demo.yaml")) == demo  # the checkout's spelling
    assert resources.find_recipe(Path("sam-vit-base/lora_encdec")) == cli.RECIPES_DIR / "sam-vit-base" / "lora_encdec.yaml"
    assert resources.find_recipe(Path("recipes/nope.yaml")) == Path("recipes/nope.yaml")  # load_recipe reports it
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "demo.yaml").write_text("name: mine\n")
    assert resources.find_recipe(Path("recipes/demo.yaml")) == Path("recipes/demo.yaml")  # a user's file wins


def test_configs_command_prints_paths():
    runner = CliRunner()
    res = runner.invoke(cli.app, ["configs"])
    assert res.exit_code == 0, res.output
    folder, *files = res.output.splitlines()
    assert Path(folder) == resources.accelerate_configs_dir()
    assert {Path(f).name for f in files} == {"cpu.yaml", "fsdp2.yaml", "multi_gpu.yaml",
                                              "single_gpu.yaml", "split_gpus.yaml"}
    assert all(Path(f).is_file() and Path(f).parent == Path(folder) for f in files)
    res = runner.invoke(cli.app, ["configs", "multi_gpu"])
    assert res.exit_code == 0 and Path(res.output.strip()).is_file(), res.output
    res = runner.invoke(cli.app, ["configs", "--recipes"])
    folder, *files = res.output.splitlines()
    assert Path(folder) == resources.recipes_dir() and Path(folder, "demo.yaml") == Path(files[0])
    assert len(files) == len(_files(REPO / "recipes"))
    res = runner.invoke(cli.app, ["configs", "nope"])
    assert isinstance(res.exception, SamMedftError)


def test_missing_recipes_folder_is_an_error(tmp_path):
    with pytest.raises(SamMedftError, match="no recipes folder"):
        list_recipes(tmp_path / "absent")


# ---- the wheel (slow) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(dist)],
        capture_output=True, text=True, timeout=180, cwd=src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = dist.glob("sam_medft-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The dev venv's python (its dependencies) with the wheel's sam_medft, from `cwd`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "LINES")}
    env |= {"PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(cwd / "hf_home"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=180)


@pytest.mark.slow
def test_wheel_holds_recipes_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {n.removeprefix("sam_medft/recipes/") for n in names if n.startswith("sam_medft/recipes/")}
    configs = {n.removeprefix("sam_medft/accelerate_configs/")
               for n in names if n.startswith("sam_medft/accelerate_configs/")}
    assert {"demo.yaml", *(f"{r}.yaml" for r in STUDY + PROMPT)} <= recipes
    assert recipes == _files(REPO / "recipes")  # every shipped file, nothing else
    assert configs == _files(REPO / "accelerate_configs")
    assert {"cpu.yaml", "single_gpu.yaml", "multi_gpu.yaml", "fsdp2.yaml"} <= configs
    assert not any(n.startswith(("recipes/", "accelerate_configs/", "tests/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_finds_its_recipes(site, tmp_path):
    probe = ("import json, sam_medft; from pathlib import Path; "
             "from sam_medft import cli, resources; print(json.dumps({"
             "'pkg': sam_medft.__file__, 'recipes': str(resources.recipes_dir()), "
             "'configs': str(resources.accelerate_configs_dir()), "
             "'readme_spelling': str(resources.find_recipe(Path('recipes/demo.yaml')))}))")
    proc = _run(site, tmp_path, "-c", probe)
    assert proc.returncode == 0, proc.stderr
    got = {k: Path(v) for k, v in json.loads(proc.stdout).items()}
    for key, path in got.items():  # all from the wheel, none from the checkout
        assert path.resolve().is_relative_to(site.resolve()), (key, path)
    assert got["recipes"] == site.resolve() / "sam_medft" / "recipes"
    assert got["readme_spelling"] == got["recipes"] / "demo.yaml"

    proc = _run(site, tmp_path, "-m", "sam_medft", "recipes")
    assert proc.returncode == 0, proc.stderr
    for name in ["demo", *STUDY, *PROMPT]:
        assert f" {name} " in proc.stdout, name

    proc = _run(site, tmp_path, "-m", "sam_medft", "train", "demo", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "memory" in proc.stdout.lower(), proc.stdout
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing

    proc = _run(site, tmp_path, "-m", "sam_medft", "configs")
    assert proc.returncode == 0, proc.stderr
    folder, *files = proc.stdout.splitlines()
    assert Path(folder) == got["configs"] and files
    assert all(Path(f).is_file() and Path(f).parent == got["configs"] for f in files)

    script = site / "bin" / "sam-medft"  # the console script the wheel installs
    proc = _run(site, tmp_path, str(script), "configs", "cpu")
    assert proc.returncode == 0, proc.stderr
    cpu = Path(proc.stdout.strip())
    assert cpu == got["configs"] / "cpu.yaml" and cpu.is_file()
