"""Fuzzing the pair-list parser: any file content ends in pairs or ONE SamMedftError.

A list is the first thing a user writes by hand (or exports from a spreadsheet), so commas,
tabs, quotes, a BOM, blank lines, unicode and odd paths must never end in a traceback. The
round-trip property pins the parser against Python's own CSV writer.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sam_medft.data.lists import read_pair_list
from sam_medft.errors import SamMedftError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_TOKENS = st.sampled_from(
    [
        "a.png",
        "masks/a.png",
        "/abs/a.png",
        "/MRI/m.png",
        "img",
        "mask",
        "image",
        "image_path",
        "Mask_Path",
        "case_id",
        "spacing",
        ",",
        ",",
        "\t",
        '"',
        '""',
        "\n",
        "\n",
        "\r\n",
        "\r",
        "\ufeff",
        "#",
        " ",
        "é",
        "\u2028",
        "\x00",
        "x" * 300,
        "../up.png",
        "C:\\w\\a.png",
    ]
)
_FIELD = st.lists(_TOKENS | st.text(max_size=4), max_size=4).map("".join)
_LINE = st.tuples(st.lists(_FIELD, max_size=4), st.sampled_from([",", "\t", ", "])).map(
    lambda t: t[1].join(t[0])
)
_TEXT = st.one_of(
    st.lists(_LINE, max_size=6).map("\n".join),  # line-shaped: rows of fields
    st.lists(_TOKENS | st.text(max_size=4), max_size=30).map("".join),  # anything
)


def _parse(path: Path, root: Path, must_exist: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the leading-'/' warning is not under test here
        return read_pair_list(path, root, root, must_exist=must_exist)


@pytest.fixture
def lst(tmp_path) -> Path:
    (tmp_path / "a.png").write_bytes(b"")  # one real file, so the header test sees one
    return tmp_path / "list.csv"


@FUZZ
@given(text=_TEXT, must_exist=st.booleans())
@example(text='"a.png,b.png\nc.png,d.png\n', must_exist=False)  # unbalanced quote
@example(text="a.png,b\x00.png\n", must_exist=False)  # NUL byte (a binary file)
@example(text="x" * 300 + ".png,/" + "y" * 300 + ".png\n", must_exist=True)  # name too long
@example(text="img,mask,spacing\na.png,b.png,0.7,extra\n", must_exist=False)
def test_any_text_is_pairs_or_one_clear_error(lst, text, must_exist):
    lst.write_text(text, encoding="utf-8", newline="")
    try:
        pairs = _parse(lst, lst.parent, must_exist)
    except SamMedftError as e:
        assert str(e).strip(), "an empty message"
        return
    assert pairs and all(isinstance(p.image, Path) and isinstance(p.mask, Path) for p in pairs)


@FUZZ
@given(data=st.binary(max_size=64))
@example(data=b"\xff\xfe\x00a")  # UTF-16 BOM: not UTF-8
def test_any_bytes_are_pairs_or_one_clear_error(lst, data):
    lst.write_bytes(data)
    try:
        _parse(lst, lst.parent, must_exist=False)
    except SamMedftError:
        pass


_SEGMENT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="/\t\ufeff"
    ),
    min_size=1,
    max_size=8,
).filter(lambda s: s == s.strip() and s not in (".", "..") and not s.startswith("#"))
_PATH = st.tuples(
    st.sampled_from(["", "/", "sub/"]), st.lists(_SEGMENT, min_size=1, max_size=3)
).map(lambda t: t[0] + "/".join(t[1]) + ".png")


@FUZZ
@given(
    pairs=st.lists(st.tuples(_PATH, _PATH), min_size=1, max_size=6),
    delimiter=st.sampled_from([",", "\t"]),
    header=st.sampled_from(
        [None, ("image", "mask"), ("image_path", "mask_path"), ("case_id", "mask", "image")]
    ),
    bom=st.booleans(),
    crlf=st.booleans(),
)
@example(pairs=[("a,b.png", 'q"uote.png')], delimiter=",", header=None, bom=True, crlf=False)
def test_written_lists_read_back_exactly(lst, pairs, delimiter, header, bom, crlf):
    """What csv.writer writes (quoting commas and quotes), the parser reads back: relative
    paths under the root, absolute ones as written, columns found by the header's names."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
    if header:
        w.writerow(header)
    if header and len(header) == 3:  # a declared extra column, image and mask swapped
        w.writerows([(f"case {k}", m, i) for k, (i, m) in enumerate(pairs)])
    else:
        w.writerows(pairs)
    lst.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8", newline="")
    root = lst.parent / "root"
    got = _parse(lst, root, must_exist=False)
    want = [
        (Path(i) if i.startswith("/") else root / i, Path(m) if m.startswith("/") else root / m)
        for i, m in pairs
    ]
    assert [(p.image, p.mask) for p in got] == want
