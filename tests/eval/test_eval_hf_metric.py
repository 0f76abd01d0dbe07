"""The `evaluate` metric module loads offline from its folder and matches `summarize`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sam_medft.eval.metrics import dataset_metrics, hf_metric_path
from sam_medft.eval.summary import summarize

# Runs in a fresh interpreter so the offline variables are set before evaluate is imported
# and the module cache is a temporary folder (nothing from an earlier download can help).
SCRIPT = r"""
import json, sys
import numpy as np
import evaluate
from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import hf_metric_path

data = np.load(sys.argv[1])
preds = [data[f"p{i}"] for i in range(int(data["n"]))]
refs = [data[f"r{i}"] for i in range(int(data["n"]))]
metric = evaluate.load(hf_metric_path())
out = {"name": metric.name}
for policy in ("exclude", "count"):
    out[policy] = metric.compute(
        predictions=preds, references=refs, num_labels=3, spacing=(2.0, 2.0),
        nsd_tolerance=1.5, empty_policy=policy, class_names={1: "liver", 2: "tumour"},
    )
# add_batch then compute, with per-case rows
for p, r in zip(preds, refs):
    metric.add(predictions=p, references=r)
batched = metric.compute(num_labels=3, return_per_case=True)
out["per_case_len"] = len(batched["per_case"])
out["default_mean_dice"] = batched["mean_dice"]
try:
    metric.compute(predictions=preds, references=refs, num_labels=1)
except SamMedftError as exc:
    out["error"] = str(exc)
print("RESULT" + json.dumps(out))
"""


def _data() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    preds, refs = [], []
    for i in range(4):
        gt = np.zeros((20, 24), dtype=np.int64)
        gt[3 + i : 12, 4:14] = 1
        if i % 2:
            gt[14:18, 15:20] = 2
        pred = gt.copy()
        pred[rng.integers(0, 20, 15), rng.integers(0, 24, 15)] = rng.integers(0, 3, 15)
        if i == 2:
            pred[0:2, 0:2] = 2  # a false positive for class 2
        preds.append(pred)
        refs.append(gt)
    refs.append(np.zeros((16, 16), dtype=np.int64))  # a both-empty image of another size
    preds.append(np.zeros((16, 16), dtype=np.int64))
    return preds, refs


def test_hf_metric_offline_matches_summarize(tmp_path):
    preds, refs = _data()
    npz = tmp_path / "data.npz"
    arrays = {f"p{i}": p for i, p in enumerate(preds)} | {f"r{i}": r for i, r in enumerate(refs)}
    np.savez(npz, n=len(preds), **arrays)
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(npz)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])

    assert Path(hf_metric_path()).name == out["name"] == "sam_medft_seg"
    assert any((tmp_path / "modules").rglob("sam_medft_seg.py"))  # loaded from our folder
    names = {1: "liver", 2: "tumour"}
    rows = dataset_metrics(
        preds, refs, [1, 2], spacing=(2.0, 2.0), nsd_tolerance=1.5, class_names=names
    )
    for policy in ("exclude", "count"):
        expected = summarize(rows, names, policy)
        got = out[policy]
        assert {k: got[k] for k in expected} == json.loads(json.dumps(expected))
        assert got["mean_dice"] == expected["foreground_mean"]["dice"]["mean"]
        assert got["mean_hd95"] == expected["foreground_mean"]["hd95"]["mean"]
    assert out["exclude"]["per_class"]["2"]["empty_cases"]["false_positive"] >= 1
    assert out["exclude"] != out["count"]
    assert 0.0 < out["exclude"]["mean_dice"] < 1.0
    default_rows = dataset_metrics(preds, refs, [1, 2])
    default = summarize(default_rows, {1: "1", 2: "2"}, "exclude")
    assert out["default_mean_dice"] == default["foreground_mean"]["dice"]["mean"]
    assert out["per_case_len"] == len(preds) * 2
    assert "num_labels=1" in out["error"]
