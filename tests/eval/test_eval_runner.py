"""`sam-medft eval` on a real tiny run: files, numbers, baseline, data selection, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sam_medft.cli import app
from sam_medft.errors import SamMedftError
from sam_medft.eval.evaluate import evaluate_run
from sam_medft.eval.summary import read_per_case_csv, summarize

runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(demo_run: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("eval_demo")
    return out, evaluate_run(demo_run, out_dir=out, show_progress=False)


def test_eval_writes_csv_and_summary_that_agree(evaluated):
    out, result = evaluated
    summary = json.loads((out / "summary.json").read_text())
    rows = read_per_case_csv(out / "per_case.csv")
    assert summary["n_cases"] == 6 == len({r["case"] for r in rows})  # data.synthetic.n_test
    names = {int(k): v for k, v in summary["class_names"].items()}
    assert names == {1: "organ_a", 2: "organ_b"}
    again = summarize(rows, names, summary["empty_policy"])
    for cid, entry in summary["per_class"].items():
        for metric in ("dice", "iou", "nsd", "hd95"):
            a, b = entry[metric]["mean"], again["per_class"][cid][metric]["mean"]
            assert a == pytest.approx(b, abs=1e-9), (cid, metric)
    fg = summary["foreground_mean"]["dice"]["mean"]
    assert fg == pytest.approx(result.summary["foreground_mean"]["dice"]["mean"])
    assert fg > 0.5  # the demo run learned something (a random model scores ~0.1)
    run = summary["run"]
    assert run["base_model"] == "tiny" and run["method"] == "vanilla"
    assert run["split"] == "test" and run["prompts"] == "none"
    assert run["recipe"]["data"]["labels"] == {
        "0": "background",
        "128": "organ_a",
        "255": "organ_b",
    }
    assert run["spacing"].startswith("pixels")


def test_eval_overlays_and_report(evaluated):
    out, result = evaluated
    overlays = sorted((out / "overlays").glob("*.png"))
    assert overlays and len(overlays) == len(result.overlays)
    assert {p.name.split("_")[0] for p in overlays} == {"worst", "best"}
    page = (out / "report.html").read_text()
    assert 'id="summary"' in page and "data:image/png;base64," in page
    assert 'id="delta"' not in page  # no --baseline: no delta section


def test_cli_baseline_prints_positive_delta_and_cleans_up(demo_run: Path, tmp_path: Path):
    out = tmp_path / "ev"
    res = runner.invoke(
        app, ["eval", str(demo_run), "--baseline", "--out", str(out)], env={"COLUMNS": "160"}
    )
    assert res.exit_code == 0, res.output
    assert "Fine-tuned minus baseline" in res.output and "zero-shot" in res.output
    assert "(tiny is a random test model" in " ".join(res.output.split())
    delta = json.loads((out / "delta.json").read_text())
    assert delta["foreground_mean"]["dice"] > 0.2
    assert all(e["dice"] > 0 for e in delta["per_class"].values())
    base = json.loads((out / "baseline" / "summary.json").read_text())
    tuned = json.loads((out / "summary.json").read_text())
    assert math.isclose(
        tuned["foreground_mean"]["dice"]["mean"] - base["foreground_mean"]["dice"]["mean"],
        delta["foreground_mean"]["dice"],
    )
    assert 'id="delta"' in (out / "report.html").read_text()
    # a later evaluation without --baseline leaves no stale baseline behind
    res = runner.invoke(
        app,
        [
            "eval",
            str(demo_run),
            "--out",
            str(out),
            "--data",
            "eval.empty_policy=count",
            "--data",
            "eval.overlays=0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert not (out / "delta.json").exists() and not (out / "baseline").exists()
    assert json.loads((out / "summary.json").read_text())["empty_policy"] == "count"
    assert not (out / "overlays").exists()  # eval.overlays=0: the old overlays are gone too


def test_eval_list_file_and_split(demo_run: Path, tmp_path: Path):
    from sam_medft.config import load_recipe
    from sam_medft.data.sources import build_splits

    recipe = load_recipe(demo_run / "recipe.yaml")
    val = build_splits(recipe.data)["val"]
    lst = tmp_path / "two.csv"
    lst.write_text("".join(f"{val.image_path(i)},{val.mask_path(i)}\n" for i in range(2)))
    result = evaluate_run(demo_run, list_file=lst, out_dir=tmp_path / "a", show_progress=False)
    assert result.summary["n_cases"] == 2
    assert (
        json.loads((tmp_path / "a" / "summary.json").read_text())["run"]["split"] == f"list:{lst}"
    )
    result = evaluate_run(demo_run, split="val", out_dir=tmp_path / "b", show_progress=False)
    assert result.summary["n_cases"] == 4  # data.synthetic.n_val
    # a list relative to a data root given with --data, as in the study's layout
    root = Path(val.image_path(0)).parent.parent
    rel = tmp_path / "rel.tsv"
    rel.write_text("images/val_000.png\tmasks/val_000.png\n")
    roots = [f"data.img_folder={root}", f"data.mask_folder={root}"]
    result = evaluate_run(
        demo_run, list_file=rel, data_overrides=roots, out_dir=tmp_path / "c", show_progress=False
    )
    assert [r["case"] for r in result.rows] == ["images/val_000.png"] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "train"}, "--split 'train'"),
        ({"data_overrides": ["data.test_list=x.csv"]}, "data.source=lists"),
        ({"data_overrides": ["nonsense"]}, "key=value"),
        ({"data_overrides": ["eval.empty_policy=sometimes"]}, "empty_policy"),
        ({"list_file": "missing.csv"}, "missing.csv"),
        ({"split": "val", "list_file": "x.csv"}, "not both"),
    ],
)
def test_eval_user_errors(demo_run: Path, tmp_path: Path, kwargs, message):
    with pytest.raises(SamMedftError, match=message.replace("(", r"\(")):
        evaluate_run(demo_run, out_dir=tmp_path, show_progress=False, **kwargs)
    assert not (tmp_path / "summary.json").exists()


def test_eval_missing_split_and_unknown_run(demo_run: Path, tmp_path: Path):
    lists_recipe = [
        "data.source=lists",
        f"data.train_list={tmp_path / 'train.csv'}",
    ]
    from sam_medft.config import load_recipe
    from sam_medft.data.sources import build_splits

    src = build_splits(load_recipe(demo_run / "recipe.yaml").data)["val"]
    (tmp_path / "train.csv").write_text(f"{src.image_path(0)},{src.mask_path(0)}\n")
    with pytest.raises(SamMedftError, match="no test split"):
        evaluate_run(demo_run, data_overrides=lists_recipe, out_dir=tmp_path, show_progress=False)
    with pytest.raises(SamMedftError, match="no such run folder: .*nope/run"):
        evaluate_run(str(tmp_path / "nope" / "run"), list_file="x.csv", show_progress=False)
    # a Hub id without data fails before anything is downloaded (no network here)
    with pytest.raises(SamMedftError, match="evaluating a Hub model needs data"):
        evaluate_run("someone/some-model", show_progress=False)


def test_peft_baseline_switches_the_adapter_off(demo_run: Path, tmp_path: Path):
    """A LoRA run's baseline (`disable_adapter`) and a vanilla run's baseline (base reloaded)
    are the same model here (the deterministic tiny base), so they must score identically."""
    import dataclasses
    import shutil

    import torch

    from sam_medft.adapters.artifact import save_adapter
    from sam_medft.adapters.methods import apply_method
    from sam_medft.config import PeftSettings
    from sam_medft.models.registry import build_tiny
    from sam_medft.runs import AdapterMeta

    meta = AdapterMeta.read(demo_run / "adapter")
    model, _ = apply_method(
        build_tiny(meta.num_classes), PeftSettings(method="lora", scope="decoder")
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    run = tmp_path / "lora_run"
    save_adapter(model, dataclasses.replace(meta, method="lora", scope="decoder"), run / "adapter")
    shutil.copy(demo_run / "recipe.yaml", run / "recipe.yaml")
    kw = {"baseline": True, "show_progress": False, "data_overrides": ["eval.overlays=0"]}
    lora = evaluate_run(run, out_dir=tmp_path / "a", **kw)
    vanilla = evaluate_run(demo_run, out_dir=tmp_path / "b", **kw)
    assert lora.baseline_summary["per_class"] == vanilla.baseline_summary["per_class"]
    assert lora.summary["per_class"] != lora.baseline_summary["per_class"]  # the adapter acts


def test_missing_test_list_stops_eval_naming_the_list_and_the_fix(tmp_path):
    # the study's layout has no test list; the shipped recipes name datasets/test.csv
    from sam_medft.data.synthetic import write_synthetic
    from sam_medft.eval.evaluate import load_eval_data

    write_synthetic(tmp_path, n_train=2, n_val=2, n_test=0, size=32)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"data:\n  source: lists\n  train_list: {tmp_path}/train.csv\n"
        f"  val_list: {tmp_path}/val.csv\n  test_list: {tmp_path}/test.csv\n"
        "  labels: {0: background, 128: organ_a, 255: organ_b}\n")
    (tmp_path / "test.csv").unlink()  # (written empty for n_test=0)
    with pytest.raises(SamMedftError) as e:
        load_eval_data(recipe, split="test")
    msg = str(e.value)
    assert "test.csv does not exist" in msg and "--list FILE" in msg
    assert "--data data.test_list=FILE" in msg
    data = load_eval_data(recipe, list_file=tmp_path / "val.csv")  # the fix it names
    assert len(data.source) == 2
