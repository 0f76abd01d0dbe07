"""Model card and local checks: no server involved, nothing leaves the machine."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from sam_medft import hub
from sam_medft.errors import SamMedftError


def test_card_metadata_and_text(make_run):
    run = make_run(base_model="facebook/sam-vit-base")
    card = hub.build_model_card(run, "sam-tester/prostate-lora")
    parsed = ModelCard(str(card))  # what the Hub and `ModelCard.load` will read back
    data = parsed.data
    assert data.library_name == "peft"
    assert data.base_model == "facebook/sam-vit-base"
    assert data.pipeline_tag == "image-segmentation"
    assert data.license == "apache-2.0"  # from the recipe's hub.license
    for tag in ("medical-imaging", "image-segmentation", "segment-anything", "sam_medft", "lora"):
        assert tag in data.tags
    results = {(r.metric_type, r.metric_name): r for r in data.eval_results}
    fg = results[("dice", "dice (foreground mean)")]
    assert fg.metric_value == pytest.approx(0.8123)
    assert fg.task_type == "image-segmentation" and fg.dataset_split == "test"
    assert results[("nsd", "nsd (zone_a)")].metric_value == pytest.approx(0.9222)
    assert ("nsd", "nsd (zone_b)") not in results  # None in summary.json: left out
    assert ("hd95", "hd95 (zone_b)") not in results  # NaN: left out, not 'nan'
    assert results[("hd95", "hd95 (zone_a)")].metric_value == pytest.approx(3.5)
    assert not any("n_" in name for _, name in results)  # counters are not metrics
    text = parsed.text
    assert "| 1 | zone_a | 254 |" in text and "| 2 | zone_b | 255 |" in text
    assert 'sam_medft.load("sam-tester/prostate-lora")' in text
    assert "sam-medft predict sam-tester/prostate-lora images/ --out preds/" in text
    assert "Synthetic two-zone prostate-like slices" in text
    assert "prompt-free" in text and "ImageNet" in text


def test_card_without_eval_and_registry_names(make_run):
    run = make_run(
        base_model="medsam",
        summary=None,
        normalization="medsam",
        prompt_mode="box",
        recipe={"name": "x"},
    )
    card = ModelCard(str(hub.build_model_card(run)))
    assert card.data.base_model == "wanglab/medsam-vit-base"  # registry name -> Hub id
    assert card.data.eval_results is None and "model-index" not in card.content
    assert card.data.license is None
    assert "No evaluation summary" in card.text and "box prompts" in card.text
    assert f'sam_medft.load("{run}")' in card.text  # a local card points at the local run


@pytest.mark.parametrize("base", ["tiny", "tiny-mobilesam"])
def test_tiny_base_is_not_claimed_as_a_hub_model(make_run, base):
    card = ModelCard(str(hub.build_model_card(make_run(base_model=base))))
    assert card.data.base_model is None
    assert f"the built-in random `{base}` model" in card.text
    assert "local model folder" not in card.text


def test_read_eval_metrics_is_defensive():
    summary = {
        "foreground_mean": {"dice": 0.5, "hd95": {"mean": None}, "iou": {"std": 1}, "n": 3},
        "per_class": {
            "a": {"Dice": {"mean": 0.25}, "n_rows": 7},
            "b": "garbage",
            "c": {"dice": True},
            "3": {"name": "liver", "nsd": {"mean": float("inf")}, "iou": {"mean": 0.1}},
        },
        "split": "val",
    }
    got = hub.read_eval_metrics(summary)
    assert got == [
        hub.Metric("dice", "foreground mean", 0.5),
        hub.Metric("dice", "a", 0.25),
        hub.Metric("iou", "liver", 0.1),
    ]
    assert hub.read_eval_metrics({}) == []
    assert hub.read_eval_metrics({"per_class": [1, 2]}) == []


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("user/model", True),
        ("model", True),
        ("org/sam.vit-b_1", True),
        ("a/b/c", False),
        ("user/bad name", False),
        ("user/x--y", False),
        ("user/x..y", False),
        ("", False),
        ("./runs/x", False),
        ("/abs/path", False),
        ("café/x", False),
    ],
)
def test_is_hub_id(text, ok):
    assert hub.is_hub_id(text) is ok


def test_inspect_run_errors(tmp_path, make_run):
    with pytest.raises(SamMedftError, match="does not exist"):
        hub.inspect_run(tmp_path / "nope")
    with pytest.raises(SamMedftError, match="holds no fine-tuned adapter"):
        hub.inspect_run(tmp_path)
    run = make_run()
    (run / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(SamMedftError, match="no weights"):
        hub.inspect_run(run)
    run2 = make_run("other")
    (run2 / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(SamMedftError, match="no adapter_config.json"):
        hub.inspect_run(run2)
    run3 = make_run("third")
    (run3 / "adapter" / "sam_medft.json").write_text("{not json")
    with pytest.raises(SamMedftError, match="sam_medft.json is not readable JSON"):
        hub.inspect_run(run3)


def test_inspect_run_accepts_an_adapter_folder(make_run):
    run = make_run()
    files = hub.inspect_run(run / "adapter")
    assert files.adapter_dir == run / "adapter"
    assert files.recipe == run / "recipe.yaml" and files.summary == run / "eval" / "summary.json"
    assert files.meta.class_names == json.loads((run / "adapter" / "sam_medft.json").read_text())[
        "class_names"
    ]
    assert files.meta.multimask is True  # format 1, recipe without prompt: SAM's default


def test_check_push_target(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(SamMedftError, match=r"'bad\?id' is not a valid Hub repo id"):
        hub.check_push_target("bad?id", "tok")
    with pytest.raises(SamMedftError, match="hf auth login"):
        hub.check_push_target("me/model")
    assert hub.check_push_target("me/model", "tok") == "tok"
    (tmp_path / "token").write_text("saved-token")  # `hf auth login` writes this file
    assert hub.check_push_target("me/model") == "saved-token"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SamMedftError, match="HF_HUB_OFFLINE"):
        hub.check_push_target("me/model", "tok")
