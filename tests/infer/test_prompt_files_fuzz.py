"""Fuzzing the prompts a user writes: prompts.json, Python-API prompt lists, --box/--point.

All three are typed by hand, so any content must end in checked entries or ONE
SamMedftError that names the file/flag and the value (never a traceback), and a checked
entry must be usable as is: a class id in range, a box/points inside the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sam_medft.data.prompts import load_prompts_file, parse_box, parse_point
from sam_medft.errors import SamMedftError
from sam_medft.infer.prompted import _split_label, check_prompts, cli_entry

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

SIZE = (40, 60)  # (height, width)
CLASSES = ["background", "organ_a", "organ_b"]

_NUMBER = (
    st.integers(-5, 80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([10**400, -(10**400), True, 1e308])
)
_SCALAR = st.none() | st.booleans() | _NUMBER | st.text(max_size=6)
_JSONISH = st.recursive(
    _SCALAR,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(["label", "box", "points", "point_labels", "x"]) | st.text(max_size=3),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "label": st.sampled_from([1, 2, 3, 0, -1, "organ_a", "organ_c", "", 1.0, True]) | _SCALAR,
        "box": st.lists(_NUMBER, min_size=4, max_size=4) | _JSONISH,
        "points": st.lists(st.lists(_NUMBER, min_size=2, max_size=2), max_size=3) | _JSONISH,
        "point_labels": st.lists(st.sampled_from([0, 1, 2, True, 1.0]), max_size=3) | _JSONISH,
    },
)
_PROMPTS = st.lists(_ENTRY | _JSONISH, max_size=4) | _JSONISH


def _assert_usable(entry: dict, classes: list[str] | None) -> None:
    h, w = SIZE
    assert set(entry) == {"label", "box", "points", "point_labels"}
    if classes is not None:
        assert type(entry["label"]) is int and 1 <= entry["label"] < len(classes)
    assert entry["box"] is not None or entry["points"]
    if entry["box"] is not None:
        x0, y0, x1, y1 = entry["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    for x, y in entry["points"]:
        assert 0 <= x < w and 0 <= y < h
    assert len(entry["point_labels"]) == len(entry["points"])
    assert all(v in (0, 1) for v in entry["point_labels"])


@FUZZ
@given(prompts=_PROMPTS, classes=st.sampled_from([CLASSES, ["background", "fg"]]))
@example(prompts=[{"label": 1, "box": [10**400, 0, 5, 5]}], classes=CLASSES)  # int > float
@example(prompts=[{1: 2, "x": 3}], classes=CLASSES)  # keys that do not sort together
def test_python_prompts_are_checked_entries_or_one_error(prompts, classes):
    try:
        out = check_prompts(prompts, SIZE, classes)
    except SamMedftError as e:
        assert str(e).startswith("prompts")
        return
    assert len(out) == len(prompts)
    for entry in out:
        _assert_usable(entry, classes)


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return tmp_path / "prompts.json"


@FUZZ
@given(
    content=st.dictionaries(st.sampled_from(["a.png", "b.png", "c.png"]), _PROMPTS, max_size=3)
    | _JSONISH,
    classes=st.sampled_from([CLASSES, None]),
)
@example(content={"a.png": [{"label": 1, "points": [[1, 10**400]]}]}, classes=None)
def test_prompts_json_is_checked_or_one_error_naming_the_file(prompts_file, content, classes):
    try:
        text = json.dumps(content)
    except ValueError:  # NaN is fine for json.dumps; this is for other unencodables
        return
    prompts_file.write_text(text, encoding="utf-8")
    images = {"a.png": SIZE, "b.png": SIZE}
    try:
        out = load_prompts_file(prompts_file, images, class_names=classes)
    except SamMedftError as e:
        assert str(prompts_file) in str(e)
        return
    assert set(out) <= set(images)
    for entries in out.values():
        for entry in entries:
            _assert_usable(entry, classes)


@FUZZ
@given(data=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
@example(data=b"[" * 100_000)  # nesting deeper than the JSON parser's recursion limit
@example(data=b"\xff\xfe{}")
def test_any_prompts_file_bytes_are_one_error_or_entries(prompts_file, data):
    prompts_file.write_bytes(data)
    try:
        load_prompts_file(prompts_file, {"a.png": SIZE})
    except SamMedftError as e:
        assert str(prompts_file) in str(e)


_FLAG_TEXT = st.lists(
    st.sampled_from(["1", "2", "organ_a", ":", ",", "10", "5.5", "-1", " ", "nan", "inf", "1e999"])
    | st.sampled_from(["²", "٣", "0x1", "1_0", "", "organ_b:"])
    | st.text(max_size=3),
    max_size=10,
).map("".join)


@FUZZ
@given(box=st.none() | _FLAG_TEXT, points=st.lists(_FLAG_TEXT, max_size=3),
       classes=st.sampled_from([CLASSES, ["background", "fg"]]))  # fmt: skip
@example(box="²:1,1,5,5", points=[], classes=CLASSES)  # a digit that int() refuses
@example(box="٣:1,1,5,5", points=[], classes=["background"] + [f"c{i}" for i in range(4)])
@example(box=None, points=["1:1,1", "organ_a:2,2"], classes=CLASSES)
def test_cli_flags_are_one_checked_entry_or_one_error(box, points, classes):
    try:
        entry = cli_entry(box, points, SIZE, classes)
    except SamMedftError as e:
        assert "--box" in str(e) or "--point" in str(e) or "prompt" in str(e)
        return
    assert box is not None or points
    _assert_usable(entry, classes)


@FUZZ
@given(text=_FLAG_TEXT)
def test_flag_pieces_parse_or_fail_cleanly(text):
    for parse in (
        lambda: _split_label(text, "--box"),
        lambda: parse_box(text, SIZE),
        lambda: parse_point(text, SIZE),
        lambda: parse_box(text, None),
    ):
        try:
            parse()
        except SamMedftError as e:
            assert "--box" in str(e) or "--point" in str(e)


def test_what_the_fuzzing_found_has_clear_messages(prompts_file):
    with pytest.raises(SamMedftError, match=r"prompts\[0\]: box \[.*\] must be 4 finite numbers"):
        check_prompts([{"label": 1, "box": [10**400, 0, 5, 5]}], SIZE, CLASSES)
    with pytest.raises(SamMedftError, match=r"unknown key\(s\) \['x', 1\]"):
        check_prompts([{1: 2, "x": 3}], SIZE, CLASSES)
    prompts_file.write_text("[" * 100_000)
    with pytest.raises(SamMedftError, match="not a prompts file"):
        load_prompts_file(prompts_file, {"a.png": SIZE})
    with pytest.raises(SamMedftError, match="unknown class name '²'"):
        cli_entry("²:1,1,5,5", [], SIZE, CLASSES)
    assert cli_entry("٣:1,1,5,5", [], SIZE, [*CLASSES, "c3"])["label"] == 3  # a decimal digit
