"""The recipe schema: overrides, and one clear message for each kind of mistake."""

from __future__ import annotations

import pytest

from sam_medft.config import load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.resources import recipes_dir

DEMO = recipes_dir() / "demo.yaml"  # absolute: the tests run from any folder


def test_demo_recipe_with_overrides():
    r = load_recipe(DEMO, ["train.max_steps=50", "model.name=medsam",
                                          "peft.layers=[0, 2]", "data.labels={0: bg, 255: fg}"])
    assert r.train.max_steps == 50 and r.model.name == "medsam"
    assert r.peft.layers == [0, 2] and r.data.labels == {0: "bg", 255: "fg"}


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(SamMedftError) as e:
        load_recipe(DEMO, ["train.max_stepz=5"])
    msg = str(e.value)
    assert "train.max_stepz" in msg and "max_steps" in msg


def test_bad_literal_lists_allowed_values():
    with pytest.raises(SamMedftError) as e:
        load_recipe(DEMO, ["train.schedule=linear"])
    assert "train.schedule" in str(e.value) and "cosine" in str(e.value)


def test_bad_number_and_bad_override_syntax():
    with pytest.raises(SamMedftError, match="train.batch_size"):
        load_recipe(DEMO, ["train.batch_size=0"])
    with pytest.raises(SamMedftError, match="section.key=value"):
        load_recipe(DEMO, ["train.max_steps"])


@pytest.mark.parametrize("value", ["-1", "many", "true"])
def test_bad_worker_count_is_one_message(value):
    with pytest.raises(SamMedftError) as e:
        load_recipe(DEMO, [f"train.num_workers={value}"])
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and "train.num_workers" in lines[1]
    assert "a positive number, or auto" in lines[1]


def test_speed_settings_accept_their_yaml_spellings():
    import torch

    from sam_medft.training.data_pipeline import loader_workers

    r = load_recipe(DEMO, ["train.preprocess_cache=off", "train.num_workers=3"])
    assert r.train.preprocess_cache == "off"  # YAML reads a bare off as false
    assert loader_workers(r) == 3
    auto = load_recipe(DEMO)
    assert auto.train.num_workers == "auto"
    if not torch.cuda.is_available():
        assert loader_workers(auto) == 0  # no GPU: the model step dominates


def test_missing_recipe_file_and_source_requirements(tmp_path):
    with pytest.raises(SamMedftError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(SamMedftError, match="data.train_list"):
        load_recipe(None, ["data.source=lists"])
    with pytest.raises(SamMedftError, match="background value 0"):
        load_recipe(None, ["data.labels={1: a}"])
    with pytest.raises(SamMedftError, match="hub.repo_id"):
        load_recipe(None, ["hub.push=true"])


def test_relative_data_paths_resolve_next_to_the_recipe(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.csv").write_text("a.png,b.png\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  source: lists\n  train_list: lists/train.csv\n")
    assert load_recipe(recipe).data.train_list == tmp_path / "lists" / "train.csv"


def test_override_into_a_null_section_and_bad_keys(tmp_path):
    r = load_recipe(None, ["data.hf=null", "data.hf.path=my/set", "data.source=hf"])
    assert r.data.hf.path == "my/set"  # a section set to null is filled, not "not a section"
    with pytest.raises(SamMedftError, match=r"override 'train\.\.lr=1': the key .* empty part"):
        load_recipe(None, ["train..lr=1"])
    with pytest.raises(SamMedftError, match="max_steps is not a section"):
        load_recipe(None, ["train.max_steps=5", "train.max_steps.x=1"])


def test_unreadable_recipe_files_are_one_message(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SamMedftError, match=r"latin1\.yaml is not UTF-8 text"):
        load_recipe(tmp_path / "latin1.yaml")
    (tmp_path / "long.yaml").write_text("data:\n  source: lists\n  train_list: " + "x" * 300 + "\n")
    assert load_recipe(tmp_path / "long.yaml").data.train_list.name == "x" * 300  # no OSError


# ---- issue 14: the study's layout with a shipped recipe --------------------------------------
SHIPPED = recipes_dir() / "sam-vit-base" / "lora_decoder.yaml"  # binary: true, test.csv


@pytest.mark.parametrize("value", ["''", "", "null"])
def test_empty_test_list_means_none(value):
    r = load_recipe(SHIPPED, [f"data.test_list={value}"])
    assert r.data.test_list is None
    raw = {"data": {"source": "lists", "train_list": "t.csv", "test_list": "", "binary": True}}
    from sam_medft.config import validate_recipe

    assert validate_recipe(raw).data.test_list is None  # `test_list: ""` in a file too


def test_labels_override_replaces_the_recipes_binary_and_says_so_once(caplog):
    caplog.set_level("INFO", logger="sam_medft")
    labels = "data.labels={0: background, 254: zone_a, 255: zone_b}"
    for _ in range(2):  # a command may read the recipe twice: one notice
        r = load_recipe(SHIPPED, [labels])
    assert r.data.labels == {0: "background", 254: "zone_a", 255: "zone_b"}
    assert r.data.binary is False
    said = [m for m in caplog.messages if "replaces the recipe's binary: true" in m]
    assert len(said) == 1 and "zone_a" in said[0]


def test_binary_override_replaces_the_recipes_labels(caplog, tmp_path):
    # the unmapped-value error's advice (`data.binary=true`) works as given
    caplog.set_level("INFO", logger="sam_medft")
    recipe = tmp_path / "r.yaml"  # a map of its own: notices are said once per process
    recipe.write_text("data: {source: synthetic, labels: {0: background, 77: lesion_q}}\n")
    r = load_recipe(recipe, ["data.binary=true"])
    assert r.data.binary is True and r.data.labels is None
    said = [m for m in caplog.messages if "data.binary=true replaces" in m]
    assert len(said) == 1 and "lesion_q" in said[0]  # names the map it replaced
    r = load_recipe(recipe, ["data.labels=null", "data.binary=true"])  # the explicit form
    assert r.data.binary is True and r.data.labels is None


def test_labels_override_replacing_the_recipes_map_names_old_and_new(caplog):
    caplog.set_level("INFO", logger="sam_medft")
    r = load_recipe(DEMO, ["data.labels={0: bg, 255: fg_replacing}"])  # said once per process
    assert r.data.labels == {0: "bg", 255: "fg_replacing"}
    (said,) = [m for m in caplog.messages if "replaces the recipe's data.labels" in m]
    assert "organ_a" in said and "'fg_replacing'" in said
    caplog.clear()
    load_recipe(DEMO, ["data.labels={0: background, 128: organ_a, 255: organ_b}"])  # same map
    assert not [m for m in caplog.messages if "replaces" in m]


def test_labels_and_binary_in_one_file_stay_an_error(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("data: {source: synthetic, binary: true, labels: {0: bg, 255: fg}}\n")
    with pytest.raises(SamMedftError, match="not both"):
        load_recipe(f)
