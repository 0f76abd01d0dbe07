"""The first hour on the study's own layout (issue 14): 5-shot CSV lists with no header, mask
paths with a leading '/', raw mask values 0/254/255, and no test list, run with a shipped
recipe (which names datasets/test.csv and says binary: true) through the real commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sam_medft.data.lists import list_images, recipe_img_folder
from sam_medft.data.synthetic import write_synthetic
from sam_medft.eval.evaluate import load_eval_data
from sam_medft.runs import run_recipe_file

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sam-vit-base" / "lora_decoder.yaml"
SLASH = "start with '/'"
NO_TEST = "no test split"


def study_layout(root: Path) -> Path:
    """datasets/MRI-Prostate/{images,masks}/ + train_5shot.csv, val_5shot.csv (no header,
    `MRI-Prostate/images/x.png,/MRI-Prostate/masks/x.png`), masks 0/254/255, no test list.
    Returns the datasets/ folder (the study's img_folder and mask_folder)."""
    synth = root / "synth"
    write_synthetic(synth, n_train=5, n_val=3, n_test=0, size=64)
    data = root / "datasets"
    prostate = data / "MRI-Prostate"
    for split, name in (("train", "train_5shot.csv"), ("val", "val_5shot.csv")):
        lines = []
        for line in (synth / f"{split}.csv").read_text().splitlines():
            img, mask = (p.strip() for p in line.split(","))
            for src, dst in ((synth / img, prostate / img), (synth / mask, prostate / mask)):
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())
            m = np.asarray(Image.open(prostate / mask))
            Image.fromarray(np.where(m == 128, 254, m).astype(np.uint8)).save(prostate / mask)
            lines.append(f"MRI-Prostate/{img},/MRI-Prostate/{mask}")
        (prostate / name).write_text("\n".join(lines) + "\n")
    values = set()
    for f in (prostate / "masks").iterdir():
        values |= set(np.unique(np.asarray(Image.open(f))).tolist())
    assert values == {0, 254, 255}  # the study's two zones
    assert not (data / "test.csv").exists()
    return data


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "sam_medft", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def lines_with(text: str, needle: str) -> list[str]:
    return [ln for ln in text.splitlines() if needle in ln]


def test_study_layout_check_train_eval_predict(tmp_path, monkeypatch):
    data = study_layout(tmp_path)
    monkeypatch.chdir(tmp_path)  # the user's shell: the recipe's paths are relative to it
    args = [str(RECIPE), "model.name=tiny", f"output_dir={tmp_path / 'runs'}", "name=study",
            "data.img_folder=datasets", "data.mask_folder=datasets",
            "data.train_list=datasets/MRI-Prostate/train_5shot.csv",
            "data.val_list=datasets/MRI-Prostate/val_5shot.csv",
            "data.labels={0: background, 254: zone_a, 255: zone_b}"]

    check = cli(tmp_path, "data", "check", *args)
    assert "Warning" not in check.stderr and "warnings.warn" not in check.stderr
    # one line per list with leading '/' paths (train, val), the missing test list once
    assert len(lines_with(check.stderr, SLASH)) == 2, check.stderr
    assert len(lines_with(check.stderr, "train_5shot.csv")) == 1, check.stderr
    assert len(lines_with(check.stderr, NO_TEST)) == 1, check.stderr
    # the labels override replaced the shipped recipe's binary: true, and said so once
    assert len(lines_with(check.stderr, "replaces the recipe's binary: true")) == 1, check.stderr

    train = cli(tmp_path, "train", *args, "train.max_steps=2", "train.eval_every=2",
                "train.save_every=2", "train.batch_size=2", "train.warmup_steps=0",
                "train.log_with=none")
    err = train.stderr
    assert len(lines_with(err, SLASH)) == 2, err
    assert len(lines_with(err, "val_5shot.csv")) == 1, err
    assert len(lines_with(err, NO_TEST)) == 1, err
    assert "Warning" not in err and "warnings.warn" not in err, err
    run = tmp_path / "runs" / "study"
    meta = json.loads(next(run.rglob("sam_medft.json")).read_text())
    assert "zone_a" in json.dumps(meta) and "zone_b" in json.dumps(meta)

    # eval --list and predict RUN resolve the study CSV to the same files
    val = data / "MRI-Prostate" / "val_5shot.csv"
    recipe_file = run_recipe_file(run)
    scored = load_eval_data(recipe_file, list_file=val)
    predicted = list_images(val, recipe_img_folder(recipe_file))
    assert [p.image for p in scored.source.pairs] == [f for f, _ in predicted]
    assert len(predicted) == 3
    out = tmp_path / "pred"
    cli(tmp_path, "predict", str(run), str(val), "--out", str(out))
    written = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert written == sorted(n.with_suffix(".png") for _, n in predicted)
