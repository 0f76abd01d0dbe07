"""`model.random_init: true`: a registry architecture with seeded random weights, built with
no file and no network (checked in a process with HF_HUB_OFFLINE=1 and an empty Hub cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import SamHQModel

from sam_medft.errors import SamMedftError
from sam_medft.models.loading import load_base_model, resolve_model_name
from sam_medft.models.registry import RANDOM_PREFIX

BUILD_VIT_B = """
import json, torch
from transformers import SamModel
from sam_medft.models.loading import load_base_model, resolve_model_name
from sam_medft.models.registry import architecture_config
spec = resolve_model_name("sam-vit-base", random_init=True)
model = load_base_model(spec, 3)
cfg = architecture_config("sam-vit-base")
cfg.mask_decoder_config.num_multimask_outputs = 3
with torch.device("meta"):
    ref = SamModel(cfg)
print(json.dumps({
    "source": spec.source,
    "n": sum(p.numel() for p in model.parameters()),
    "ref": sum(p.numel() for p in ref.parameters()),
    "hidden": model.config.vision_config.hidden_size,
    "outputs": model.config.mask_decoder_config.num_multimask_outputs,
    "std": model.vision_encoder.layers[0].mlp.lin1.weight.std().item(),
}))
"""


def test_random_vit_b_builds_offline_with_the_real_shapes(tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and an empty HF_HOME: any Hub call would fail."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", BUILD_VIT_B], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["source"] == RANDOM_PREFIX + "sam-vit-base"
    assert got["n"] == got["ref"] and got["n"] > 90_000_000  # the ViT-B SAM, 94M
    assert got["hidden"] == 768 and got["outputs"] == 3
    assert got["std"] > 1e-3  # not a dead init
    assert "RANDOM weights" in proc.stderr  # the log says the base is random


def test_random_base_is_the_same_in_every_build_and_loads_by_its_recorded_name():
    """The adapter records `random:<name>`; resolving that rebuilds the identical base."""
    first = load_base_model(resolve_model_name("slimsam-77", random_init=True), 2)
    spec = resolve_model_name(RANDOM_PREFIX + "slimsam-77")  # as sam_medft.load resolves it
    assert spec.random_init
    again = load_base_model(spec, 2)
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(123)
    other = torch.rand(1)
    load_base_model(spec, 2)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), other)  # the caller's RNG state is left as it was


def test_random_sam_hq_is_a_sam_hq_model():
    model = load_base_model(resolve_model_name("sam-hq-vit-base", random_init=True), 2)
    assert isinstance(model, SamHQModel)


def test_random_init_needs_a_known_architecture(tmp_path):
    with pytest.raises(SamMedftError, match="architecture sam_medft knows.*sam-vit-base"):
        resolve_model_name("owner/some-sam", random_init=True)


LOAD_ERRORS = """
import json
from sam_medft.errors import SamMedftError
from sam_medft.models.loading import load_base_model, resolve_model_name
out = {}
for name in ("sam-vit-base", "owner/not-in-the-registry"):
    try:
        load_base_model(resolve_model_name(name), 2)
        out[name] = "loaded"
    except SamMedftError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE", "unreachable Hub"])
def test_a_registry_model_that_cannot_load_suggests_random_init(tmp_path, network):
    """Offline, or a Hub that does not answer (a closed local port): the registry model's
    message suggests model.random_init=true; a name it cannot build gets no such hint."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))  # empty cache: nothing to fall back on
    env.pop("HF_HUB_OFFLINE", None)
    if network == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    proc = subprocess.run([sys.executable, "-c", LOAD_ERRORS], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "model.random_init=true" in got["sam-vit-base"], got
    assert "sam-vit-base" in got["sam-vit-base"]
    assert got["owner/not-in-the-registry"] != "loaded"
    assert "random_init" not in got["owner/not-in-the-registry"]
