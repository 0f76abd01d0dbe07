"""Fuzzing recipes and `section.key=value` overrides: a Recipe or ONE SamMedftError.

Overrides are typed on the command line and recipes are edited by hand, so any string (a
missing `=`, an empty key, a section that is null, a value of the wrong type, YAML that is
not a mapping, bytes that are not text) must end in a message naming the key, never in a
traceback, and a valid override must land exactly where its dotted key says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sam_medft.config import Recipe, load_recipe
from sam_medft.errors import SamMedftError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_PART = st.sampled_from(
    ["data", "train", "model", "peft", "hf", "labels", "max_steps", "lr", "path", "name",
     "binary", "val_list", "intensity", "window", "synthetic", "n_train", "layers", "x", ""]
) | st.text(max_size=4)  # fmt: skip
_VALUE = st.sampled_from(
    ["", "null", "1", "-1", "0", "1e-3", "true", "off", "[0, 1]", "{0: bg, 1: fg}", "{", "[",
     "!!python/object:os.system", "*alias", "a: b: c", "'quoted'", "1e999", "nan", "x" * 300,
     "{a: {b: {c: 1}}}", "9" * 5000]
) | st.text(max_size=6)  # fmt: skip
_OVERRIDE = st.one_of(
    st.tuples(st.lists(_PART, min_size=1, max_size=4), _VALUE).map(
        lambda t: ".".join(t[0]) + "=" + t[1]
    ),
    st.text(max_size=12),  # anything, with or without '='
)


@FUZZ
@given(overrides=st.lists(_OVERRIDE, max_size=4))
@example(overrides=["data.hf=null", "data.hf.path=my/set"])  # a null section, then a key in it
@example(overrides=["data.source=lists", "data.train_list=" + "x" * 300])
@example(overrides=["=5"])
@example(overrides=["train..lr=1"])
@example(overrides=["train.max_steps=" + "9" * 5000])  # int() refuses > 4300 digits
def test_any_overrides_give_a_recipe_or_one_error(overrides):
    try:
        recipe = load_recipe(None, overrides)
    except SamMedftError as e:
        assert str(e).strip()
        return
    assert isinstance(recipe, Recipe)


_LEAVES = {
    "train.max_steps": st.integers(1, 10**6),
    "train.lr": st.floats(1e-8, 1.0),
    "train.schedule": st.sampled_from(["cosine", "poly", "constant"]),
    "peft.layers": st.lists(st.integers(0, 31), max_size=4),
    "data.labels": st.dictionaries(
        st.integers(1, 65535), st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True), max_size=3
    ).map(lambda d: {0: "background", **d}),
    "data.synthetic.n_train": st.integers(1, 100),
    "model.name": st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True),
}


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


@FUZZ
@given(data=st.data(), keys=st.lists(st.sampled_from(sorted(_LEAVES)), unique=True, min_size=1))
def test_valid_overrides_land_where_their_key_says(data, keys):
    values = {k: data.draw(_LEAVES[k], label=k) for k in keys}
    recipe = load_recipe(None, [f"{k}={_yaml(v)}" for k, v in values.items()])
    for key, want in values.items():
        node = recipe
        for part in key.split("."):
            node = getattr(node, part)
        assert node == want, key


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    return tmp_path / "recipe.yaml"


_YAML_TEXT = st.lists(
    st.sampled_from(
        ["data:", "  source: lists", "  train_list: ", "x" * 300, "train:", "  max_steps: 5",
         "  lr: abc", "- a", "model: [1, 2]", "peft: null", "{", "key: [", ": x", "\t", "1: 2",
         "data: {labels: {0: bg, 1: ''}}", "&a [*a]", "!!binary AAAA", "name: run"]
    ) | st.text(max_size=8),
    max_size=8,
).map("\n".join)  # fmt: skip


@FUZZ
@given(text=_YAML_TEXT)
@example(text="data:\n  source: lists\n  train_list: " + "x" * 300)  # too long to stat
@example(text="train:\n  max_steps: " + "9" * 5000)
def test_any_recipe_text_gives_a_recipe_or_one_error(recipe_file, text):
    recipe_file.write_text(text, encoding="utf-8")
    try:
        load_recipe(recipe_file)
    except SamMedftError as e:
        assert str(e).strip()


@FUZZ
@given(data=st.binary(max_size=32))
@example(data=b"\xff\xfedata:")  # not UTF-8
def test_any_recipe_bytes_give_a_recipe_or_one_error(recipe_file, data):
    recipe_file.write_bytes(data)
    try:
        load_recipe(recipe_file)
    except SamMedftError as e:
        assert str(recipe_file) in str(e) or "recipe" in str(e)
