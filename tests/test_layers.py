"""The layers of DESIGN.md ("Layout"), checked: the import contracts, imports at module scope,
no private name used across modules.

- `lint-imports` keeps the contracts of pyproject.toml's `[tool.importlinter]`: the layer order
  (errors/config -> data -> models -> adapters -> tasks -> training | infer -> eval -> cli),
  training and infer independent, and no import cycle between sibling modules.
- A sam_medft module imports sam_medft modules at module scope, where the import graph (and
  the contracts) see them; a function-local import is how a cycle hides. The exceptions are
  the command modules that `sam-medft --help` imports (a command loads torch and the library
  when it runs) and the package's `load`/`train`, listed in LAZY_IMPORTS.
- A name starting with `_` is private to its module: no `from sam_medft.x import _y`, no
  `x._y` on an imported sam_medft module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sam_medft"

# file -> the functions whose bodies may import sam_medft modules
LAZY_IMPORTS = {
    # imported by `sam-medft --help`: each command imports what it calls when it runs, so
    # --help stays ~0.3 s instead of loading torch, transformers and peft (~5 s)
    "cli.py": {"train", "pretrain", "predict", "push", "recipes", "convert", "data_synth",
               "data_check", "app_command", "data_slice"},
    "bench_cli.py": {"bench_command"},
    "eval/cli.py": {"eval_command"},
    # `import sam_medft` runs before any submodule: `load`/`train` reach the top layers
    # (infer, training) only when called, so the lower layers can import the package
    "__init__.py": {"load", "train"},
}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(PACKAGE).as_posix(), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(PACKAGE.rglob("*.py"))]


def _is_ours(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The sam_medft modules (or `module.name`s) an import statement names."""
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: always inside the package
            return [f"{'.' * node.level}{node.module or ''}"]
        if node.module and (node.module == "sam_medft" or node.module.startswith("sam_medft.")):
            return [f"{node.module}.{a.name}" for a in node.names]
        return []
    return [a.name for a in node.names if a.name.split(".")[0] == "sam_medft"]


def _local_imports(tree: ast.Module):
    """(outermost function name, import node) of every import inside a function body."""
    def walk(node, outer):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from walk(child, outer or child.name)
            elif isinstance(child, ast.Import | ast.ImportFrom):
                if outer:
                    yield outer, child
            else:
                yield from walk(child, outer)
    yield from walk(tree, None)


def test_import_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    assert exe.is_file(), f"{exe} not found: install the dev extra (pip install -e '.[dev]')"
    done = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"lint-imports failed:\n{done.stdout}\n{done.stderr}"
    assert "0 broken" in done.stdout, done.stdout


def test_sam_medft_imports_at_module_scope():
    found = []
    for rel, tree in _modules():
        allowed = LAZY_IMPORTS.get(rel, set())
        for func, node in _local_imports(tree):
            for name in _is_ours(node):
                if func not in allowed:
                    found.append(f"sam_medft/{rel}:{node.lineno} in {func}(): {name}")
    assert not found, (
        "function-local imports of sam_medft modules (import at module scope; a cycle is "
        "broken by moving the shared piece to the lower module):\n" + "\n".join(found))


def test_lazy_import_allow_list_is_current():
    """Every allowed function still exists and still imports lazily (the list stays short)."""
    trees = dict(_modules())
    for rel, funcs in LAZY_IMPORTS.items():
        lazy = {func for func, node in _local_imports(trees[rel]) if _is_ours(node)}
        assert funcs <= lazy, f"{rel}: {sorted(funcs - lazy)} import nothing lazily"


def test_no_private_names_across_modules():
    found = []
    for rel, tree in _modules():
        module_aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _is_ours(node):
                for alias in node.names:
                    full = f"{'.' * node.level}{node.module or ''}.{alias.name}"
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"sam_medft/{rel}:{node.lineno}: import of {full}")
                    module_aliases[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "sam_medft":
                        module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"sam_medft/{rel}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "private names used outside their module:\n" + "\n".join(found)
