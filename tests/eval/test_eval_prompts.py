"""Prompt-run evaluation: the per-prompt-setting table, GT-derived labelling, click chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sam_medft.cli import app
from sam_medft.config import PromptConfig
from sam_medft.eval.prompt_eval import predict_settings, table_settings
from sam_medft.infer.prompted import embed_image

runner = CliRunner()


def test_table_settings_rows_and_main():
    main, rows = table_settings(PromptConfig(mode="box"), clicks=2)
    assert main == "box"
    assert [r.key for r in rows] == ["box", "point1", "point3", "hybrid", "clicks1", "clicks2"]
    assert all(
        r.settings.box_jitter == 0 and r.settings.max_objects_per_image is None for r in rows
    )
    assert rows[-1].clicks == 2 and rows[-1].settings.mode == "point"
    # default clicks: the recipe's refine_clicks, else 3
    assert table_settings(PromptConfig(mode="point", refine_clicks=1))[1][-1].key == "clicks1"
    assert table_settings(PromptConfig(mode="hybrid"))[0] == "hybrid"
    assert table_settings(PromptConfig(mode="point", n_points=3), clicks=0)[0] == "point3"
    # a setting that is not in the standard rows is scored too, as the main one
    main, rows = table_settings(PromptConfig(mode="point", n_points=2, n_negative=1), clicks=0)
    assert main == "recipe" and rows[0].settings.n_negative == 1
    assert "negative" in rows[0].label


def test_box_run_eval_prints_per_prompt_table(box_run: Path, tmp_path: Path):
    out = tmp_path / "ev"
    res = runner.invoke(
        app,
        ["eval", str(box_run), "--out", str(out), "--clicks", "2", "--baseline"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "Dice per prompt setting" in res.output and "GT-derived" in res.output
    for label in ("box *", "1 point", "3 points", "hybrid", "1 point + 2 corrective clicks"):
        assert label in res.output
    table = json.loads((out / "prompt_table.json").read_text())
    assert table["main_setting"] == "box" and "GT-derived" in table["note"]
    keys = [r["key"] for r in table["rows"]]
    assert keys == ["box", "point1", "point3", "hybrid", "clicks1", "clicks2"]
    assert all(r["gt_derived_prompts"] for r in table["rows"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["evaluated"] == "box" and summary["run"]["prompts"].startswith("GT")
    box = table["rows"][0]
    assert box["dice"]["foreground_mean"] == pytest.approx(
        summary["foreground_mean"]["dice"]["mean"]
    )
    assert box["dice"]["foreground_mean"] > 0.5  # a tight box on the tiny trained model
    assert box["delta_dice"]["foreground_mean"] > 0  # better than the random base model
    page = (out / "report.html").read_text()
    assert 'id="prompt-table"' in page and "GT-derived prompts" in page


def test_click_chain_and_shapes(box_run: Path):
    """Clicks feed the previous low-res logits back as (N,1,M,M) input_masks (M=64 here)."""
    import sam_medft
    from sam_medft.config import load_recipe
    from sam_medft.data.labels import LabelMap
    from sam_medft.data.sources import build_splits

    predictor = sam_medft.load(box_run)
    recipe = load_recipe(box_run / "recipe.yaml")
    src = build_splits(recipe.data)["test"]
    lm = LabelMap(recipe.data.labels)
    i = max(range(len(src)), key=lambda j: abs(np.subtract(*src.load(j).raw_mask.shape)))
    sample = src.load(i)  # the least square test image
    ref = lm.apply(sample.raw_mask)
    assert ref.shape[0] != ref.shape[1]
    _, rows = table_settings(recipe.prompt, clicks=2)
    emb, original = embed_image(predictor, sample.image)
    preds = predict_settings(predictor, emb, original, ref, [1, 2], rows, index=i)
    assert set(preds) == {r.key for r in rows}
    for masks in preds.values():  # per class, the union of its objects' masks
        assert masks.shape == (2, *ref.shape) and masks.dtype == bool
    assert preds["box"][0].any() and preds["box"][1].any()
    again = predict_settings(predictor, emb, original, ref, [1, 2], rows, index=i)
    assert all(np.array_equal(preds[k], again[k]) for k in preds)  # seeded
