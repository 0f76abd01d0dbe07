"""Ships the top-level `recipes/` and `accelerate_configs/` inside the built package.

All metadata lives in pyproject.toml; this file only adds a `build_py` step. The two
folders stay where users of a checkout expect them (`sam-medft train recipes/demo.yaml`,
`accelerate launch --config_file accelerate_configs/cpu.yaml`) and are the single source:
a build copies them to `sam_medft/recipes/` and `sam_medft/accelerate_configs/` in the
build folder, so a wheel (and an install from it) carries them; nothing is copied into the
checkout. An editable install (PEP 660) copies nothing (setuptools sets `editable_mode`) and
`sam_medft.resources` finds the top-level folders instead. The folders are also listed as
sources, so an sdist holds them and a wheel built from the sdist does too.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("recipes", "accelerate_configs")  # top-level folder == folder inside sam_medft/
PACKAGE = "sam_medft"


def _shipped_files() -> list[tuple[str, str]]:
    """(source relative to this folder, destination relative to build_lib) of every file."""
    pairs = []
    for folder in SHIPPED:
        root = HERE / folder
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is missing: the package ships it")
        for src in sorted(root.rglob("*")):
            rel = src.relative_to(HERE)
            if src.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                pairs.append((rel.as_posix(), os.path.join(PACKAGE, *rel.parts)))
    return pairs


class build_py_with_shipped_folders(build_py):
    """`build_py` plus the shipped folders (setuptools' documented build sub-command API:
    `run`, `get_outputs`, `get_output_mapping`, `get_source_files`, `editable_mode`)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the finder points at the checkout; resources.py falls back
            return
        for folder in SHIPPED:  # no stale files from an earlier build of a since-deleted recipe
            self._remove(os.path.join(self.build_lib, PACKAGE, folder))
        for src, dest in self._mapping().items():
            self.mkpath(os.path.dirname(dest))
            self.copy_file(src, dest)

    def _remove(self, path: str) -> None:
        if os.path.isdir(path):
            from shutil import rmtree

            rmtree(path)

    def _mapping(self) -> dict[str, str]:
        """source -> destination under build_lib."""
        return {src: os.path.join(self.build_lib, dest) for src, dest in _shipped_files()}

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *self._mapping().values()]

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()  # destination -> source
        mapping.update({dest: src for src, dest in self._mapping().items()})
        return dict(sorted(mapping.items()))

    def get_source_files(self) -> list[str]:
        return [*super().get_source_files(), *self._mapping()]


setup(cmdclass={"build_py": build_py_with_shipped_folders})
