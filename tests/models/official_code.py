"""Import the official model code (segment-anything, MobileSAM, SAM-HQ) without the parts
that cannot import here.

Their package `__init__`s import the predictor and the automatic mask generator, which import
torchvision (PyPI's torchvision does not import beside the pinned torch), and their TinyViT
imports timm (which needs torchvision). So:
- each package is registered as a bare namespace over its real folder, so `<pkg>.modeling`
  loads from the installed files without running `<pkg>/__init__.py` (no torchvision);
- `timm.models.layers` / `timm.models.registry` get a minimal stand-in with the four names
  TinyViT imports: `to_2tuple` and `trunc_normal_` (used to build the model: real
  implementations), `DropPath` (only subclassed; drop_path_rate is 0, so never run) and
  `register_model` (a decorator for timm's model zoo: identity).
The modules are added to `sys.modules` only while `official_modeling` runs its import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn


def _timm_stand_in() -> dict[str, types.ModuleType]:
    layers = types.ModuleType("timm.models.layers")
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, tuple | list) else (x, x)
    layers.trunc_normal_ = lambda t, std=1.0: nn.init.trunc_normal_(t, std=std)

    class DropPath(nn.Module):  # subclassed at import; identity (rate 0 is never built)
        def __init__(self, drop_prob=None):
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    layers.DropPath = DropPath
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    timm.models, models.layers, models.registry = models, layers, registry
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers,
            "timm.models.registry": registry}


def official_modeling(package: str) -> types.ModuleType:
    """`<package>.modeling` of an installed official package (skips the test if absent)."""
    name = f"{package}.modeling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (make setup installs it, test-only)")
    saved = {k: sys.modules.get(k) for k in ("timm", "timm.models", "timm.models.layers",
                                             "timm.models.registry")}
    bare = types.ModuleType(package)
    bare.__path__ = [str(Path(p)) for p in spec.submodule_search_locations]
    sys.modules[package] = bare
    sys.modules.update(_timm_stand_in())
    try:
        return importlib.import_module(name)
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module
