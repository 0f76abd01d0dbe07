"""`sam-medft recipes --params`: parameter counts and adapter sizes of every shipped recipe,
from the real model configs without weights, offline, through the real CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sam_medft.cli import app
from sam_medft.config import load_recipe
from sam_medft.recipes_index import count_parameters
from sam_medft.resources import find_recipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
ROW = re.compile(r"^\s*(\S+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s*$")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, tuple[int, int, float, float]]:
    """recipe -> (total, trainable, trainable %, adapter MB), as the command prints them to a
    pipe (no terminal, so rich's default 80 columns)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path_factory.mktemp("hf_home"))}
    proc = subprocess.run(
        [sys.executable, "-m", "sam_medft", "recipes", "--params"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout  # nothing cut to fit the width
    out = {}
    for line in proc.stdout.splitlines():
        m = ROW.match(line)
        if m:
            name, total, trainable, pct, mb = m.groups()
            out[name] = (
                int(total.replace(",", "")),
                int(trainable.replace(",", "")),
                float(pct),
                float(mb),
            )
    return out


def test_every_recipe_has_a_row(rows):
    shipped = {str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml")}
    # demo + 4 models x 6 (the study's 18, SlimSAM-77 an extra) + the prompt-mode variants of
    # sam-vit-base lora_encdec + the 3 setups recipes (Setup 2 mixture, Setup 3 pretrain and
    # fine-tune)
    assert len(shipped) == 31 and set(rows) == shipped
    for total, trainable, pct, mb in rows.values():
        assert 0 < trainable <= total
        assert pct == pytest.approx(100 * trainable / total, abs=0.005)
        assert mb == pytest.approx(trainable * 4 / 1e6, abs=0.05)  # fp32 tensors


def test_row_matches_count_parameters(rows):
    recipe = load_recipe(RECIPES_DIR / "sam-vit-base/lora_encdec.yaml")
    count = count_parameters(recipe)
    assert rows["sam-vit-base/lora_encdec"][:2] == (count.total, count.trainable)
    assert rows["sam-vit-base/lora_encdec"][3] == round(count.adapter_mb, 1)


def test_counts_agree_with_the_architectures(rows):
    """Differences between rows, worked out by hand from the ViT shapes (hidden 768 for
    ViT-B, 1280 for ViT-H, 168 for SlimSAM-77; r=8; bottleneck ratio 0.25)."""

    def trainable(name: str) -> int:
        return rows[name][1]

    for model, depth, hidden in (
        ("sam-vit-base", 12, 768),
        ("sam-vit-huge", 32, 1280),
        ("slimsam-77", 12, 168),
    ):
        # LoRA on every block's fused qkv (hidden -> 3 hidden): r * (in + out) per block
        lora_enc = depth * 8 * (hidden + 3 * hidden)
        assert trainable(f"{model}/lora_encdec") - trainable(f"{model}/lora_decoder") == lora_enc
        # adapters after attention and beside the MLP of 4 blocks: two Linear(h, h/4) each way
        dim = round(0.25 * hidden)
        adapter_enc = 4 * 2 * (hidden * dim + dim + dim * hidden + hidden)
        assert (
            trainable(f"{model}/adapter_encdec") - trainable(f"{model}/adapter_decoder")
            == adapter_enc
        )
        # the decoder is the same for every model; vanilla encdec trains everything
        assert trainable(f"{model}/vanilla_decoder") == trainable("sam-vit-base/vanilla_decoder")
        total, train_all = rows[f"{model}/vanilla_encdec"][:2]
        assert total == train_all == rows[f"{model}/vanilla_decoder"][0]
        # PEFT totals: base + added weights (the head copies replace the heads)
        for method in ("lora_decoder", "lora_encdec", "adapter_decoder", "adapter_encdec"):
            heads_and_added = rows[f"{model}/{method}"][0] - total
            assert 0 < heads_and_added < trainable(f"{model}/{method}")
    assert rows["sam-vit-base/vanilla_encdec"][0] == pytest.approx(93.7e6, rel=0.01)
    assert rows["sam-vit-huge/vanilla_encdec"][0] == pytest.approx(641e6, rel=0.01)


def test_recipes_lists_the_short_names_train_takes(tmp_path, monkeypatch):
    """`sam-medft recipes` prints the names `train` takes from any folder (`demo`,
    `sam-vit-base/lora_encdec`), not file paths."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    names = [
        cells[1].strip()
        for line in res.output.splitlines()
        if len(cells := line.split("│")) > 2 and cells[1].strip()
    ]
    shipped = {p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in RECIPES_DIR.rglob("*.yaml")}
    assert set(names) == shipped and "sam-vit-base/lora_encdec" in names
    assert not [n for n in names if n.endswith(".yaml") or n.startswith("recipes/")]
    for name in names:  # each is what `train NAME` resolves from a folder without recipes/
        assert find_recipe(name).resolve() == (RECIPES_DIR / f"{name}.yaml").resolve()
