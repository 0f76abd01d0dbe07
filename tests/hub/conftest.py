"""Fixtures for Hub tests: a real loopback Hub (`fake_hub`) and real run folders (`make_run`).

`fake_hub` points the real huggingface_hub client at the server. The client reads its
settings from the environment once, at import, into `huggingface_hub.constants`, so each
setting is patched in both places (env for subprocesses, constants for this process).
Any test in tests/hub/ can use both fixtures, e.g. for `sam_medft.load(repo_id)`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from hub_server import FakeHub
from huggingface_hub import constants

CLASS_NAMES = ["background", "zone_a", "zone_b"]
LABELS = {"0": "background", "254": "zone_a", "255": "zone_b"}
SUMMARY = {  # the layout sam_medft.eval.summary.summarize writes
    "empty_policy": "exclude",
    "policy_description": "both_empty rows are left out of the Dice/IoU/NSD means.",
    "n_cases": 4,
    "split": "test",
    "class_names": {"1": "zone_a", "2": "zone_b"},
    "per_class": {
        "1": {
            "name": "zone_a",
            "n_rows": 4,
            "dice": {"mean": 0.8456, "std": 0.01, "n": 4},
            "nsd": {"mean": 0.9222, "n": 4},
            "hd95": {"mean": 3.5, "n_undefined": 0},
            "empty_cases": {"normal": 4, "both_empty": 0},
        },
        "2": {
            "name": "zone_b",
            "n_rows": 4,
            "dice": {"mean": 0.7790, "n": 4},
            "nsd": {"mean": None, "n": 0},
            "hd95": {"mean": float("nan"), "n_undefined": 4},
            "empty_cases": {"normal": 0, "both_empty": 4},
        },
    },
    "foreground_mean": {
        "n_classes": 2,
        "dice": {"mean": 0.8123, "std": 0.05},
        "nsd": {"mean": 0.9011},
        "hd95": {"mean": 3.5, "n_undefined": 4},
        "empty_cases": {"normal": 4, "both_empty": 4},
    },
}


def _patch_hub_settings(monkeypatch: pytest.MonkeyPatch, url: str, home: Path, token: str) -> None:
    settings = {
        "ENDPOINT": ("HF_ENDPOINT", url),
        "HUGGINGFACE_CO_URL_TEMPLATE": (None, url + "/{repo_id}/resolve/{revision}/{filename}"),
        "HF_HUB_CACHE": ("HF_HUB_CACHE", str(home / "hub")),
        "HF_TOKEN_PATH": ("HF_TOKEN_PATH", str(home / "token")),  # no saved login
        "HF_STORED_TOKENS_PATH": (None, str(home / "stored_tokens")),
        "HF_HUB_OFFLINE": ("HF_HUB_OFFLINE", False),
        "HF_HUB_DISABLE_TELEMETRY": ("HF_HUB_DISABLE_TELEMETRY", True),  # no agent-registry call
        "HF_HUB_DISABLE_PROGRESS_BARS": ("HF_HUB_DISABLE_PROGRESS_BARS", True),
    }
    for attr, (env, value) in settings.items():
        monkeypatch.setattr(constants, attr, value)
        if env is not None:
            monkeypatch.setenv(env, str(int(value)) if isinstance(value, bool) else value)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_TOKEN", token)
    for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def fake_hub(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    """A running FakeHub the real client talks to, HF_TOKEN set to its token, fresh cache.

    Attributes: `.url`, `.token`, `.user`, `.repos` (repo id -> Repo), `.requests`,
    `.unhandled`, `.fail_with(status, count=None)`, `.cache_dir` (the HF_HUB_CACHE in use).
    """
    home = tmp_path_factory.mktemp("hf_home")
    with FakeHub() as hub:
        _patch_hub_settings(monkeypatch, hub.url, home, hub.token)
        hub.cache_dir = home / "hub"
        yield hub


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 as the client sees it (env read at import + the constant)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter of the tiny SamModel (3 classes), saved once per session."""
    import peft

    from sam_medft.models.registry import build_tiny

    model = build_tiny(num_classes=len(CLASS_NAMES))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("lora_adapter")
    lora.save_pretrained(out)
    return out


@pytest.fixture
def make_run(tmp_path: Path, lora_adapter: Path) -> Callable[..., Path]:
    """Factory: write runs/<name>/ as the trainer does and return the run folder."""

    def make(
        name: str = "prostate-lora",
        *,
        base_model: str = "tiny",
        summary: dict | None = SUMMARY,
        recipe: dict | None = None,
        **meta_overrides: object,
    ) -> Path:
        run = tmp_path / "runs" / name
        adapter = run / "adapter"
        shutil.copytree(lora_adapter, adapter)
        meta = {
            "base_model": base_model,
            "num_classes": len(CLASS_NAMES),
            "class_names": CLASS_NAMES,
            "labels": LABELS,
            "binary": False,
            "method": "lora",
            "scope": "decoder",
            "prompt_mode": "none",
            "normalization": "sam",
            "input_size": 256,
            "mask_size": 64,
            "data_description": "Synthetic two-zone prostate-like slices (test data)",
            "sam_medft_version": "0.1.0",
        }
        meta.update(meta_overrides)
        (adapter / "sam_medft.json").write_text(json.dumps(meta, indent=2))
        (adapter / "preprocessor_config.json").write_text(
            json.dumps({"size": {"longest_edge": 256}})
        )
        recipe = recipe or {
            "name": name,
            "model": {"name": base_model},
            "peft": {"method": "lora", "scope": "decoder"},
            "hub": {"push": False, "license": "apache-2.0"},
        }
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        if summary is not None:
            (run / "eval").mkdir()
            (run / "eval" / "summary.json").write_text(json.dumps(summary, indent=2))
        return run

    return make


def _tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(folder).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def tree_digest() -> Callable[[Path], dict[str, tuple[str, int]]]:
    """digest(folder): every file's sha256 and mtime, to prove a folder was not modified."""
    return _tree_digest
