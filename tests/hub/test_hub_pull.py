"""resolve_run: local folders as they are, Hub ids through the real client and cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sam_medft import hub
from sam_medft.errors import SamMedftError

REPO = "sam-tester/prostate-lora"


def _pushed_files(run: Path) -> dict[str, bytes]:
    # adapter/README.md is PEFT's stub card (save_pretrained writes it): the push replaces it
    files = {p.name: p.read_bytes() for p in (run / "adapter").iterdir() if p.name != "README.md"}
    files["recipe.yaml"] = (run / "recipe.yaml").read_bytes()
    files["eval/summary.json"] = (run / "eval" / "summary.json").read_bytes()
    return files


def test_push_then_pull_is_byte_identical(fake_hub, make_run):
    run = make_run()
    hub.push_run(run, REPO)
    fake_hub.clear_requests()

    folder = hub.resolve_run(REPO)

    assert folder.is_relative_to(fake_hub.cache_dir)
    assert (folder / "sam_medft.json").is_file()
    for rel, content in _pushed_files(run).items():
        assert (folder / rel).read_bytes() == content, rel
    assert "sam_medft.load(" in (folder / "README.md").read_text()  # our card, not PEFT's
    assert all(r.status == 200 for r in fake_hub.requests) and fake_hub.unhandled == []


def test_second_pull_works_offline_from_the_cache(fake_hub, make_run, monkeypatch):
    hub.push_run(make_run(), REPO)
    first = hub.resolve_run(REPO)
    fake_hub.clear_requests()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.resolve_run(REPO) == first
    assert fake_hub.requests == []


def test_pull_a_branch(fake_hub, make_run):
    run = make_run()
    hub.push_run(run, REPO, revision="v1")
    folder = hub.resolve_run(REPO, revision="v1")
    assert (folder / "sam_medft.json").read_bytes() == (
        run / "adapter" / "sam_medft.json"
    ).read_bytes()
    with pytest.raises(SamMedftError, match="revision does not exist"):
        hub.resolve_run(REPO, revision="v2")


def test_local_folders_are_returned_as_is(fake_hub, make_run):
    run = make_run()
    assert hub.resolve_run(run) == run / "adapter"
    assert hub.resolve_run(str(run / "adapter")) == run / "adapter"
    with pytest.raises(SamMedftError, match="holds no fine-tuned adapter"):
        hub.resolve_run(run / "eval")
    with pytest.raises(SamMedftError, match="is a file"):
        hub.resolve_run(run / "recipe.yaml")
    assert fake_hub.requests == []


def test_neither_folder_nor_hub_id(fake_hub, tmp_path):
    with pytest.raises(SamMedftError, match="no such run folder: .*missing/run"):
        hub.resolve_run(str(tmp_path / "missing" / "run"))
    with pytest.raises(SamMedftError, match="neither an existing folder nor a Hub repo id"):
        hub.resolve_run("user/bad name")
    assert fake_hub.requests == []


@pytest.mark.parametrize(
    ("text", "is_path"),
    [
        ("owner/name", False),
        ("sam-tester/prostate-lora", False),
        ("runs/typo", True),  # runs/ exists here (see the test): a typo, not a Hub id
        ("name", True),
        ("a/b/c", True),
        ("./x", True),
        ("../x/y", True),
        ("~/x", True),
        ("/abs/x", True),
        ("owner/", True),
        ("/owner/name", True),
        ("owner//name", True),
        ("C:runs", True),
        ("runs\\typo", True),
    ],
)
def test_the_path_or_hub_id_rule(tmp_path, monkeypatch, text, is_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert hub.looks_like_path(text) is is_path


def test_a_path_that_does_not_exist_never_asks_the_hub(fake_hub, make_run, tmp_path, monkeypatch):
    make_run("demo")  # tmp_path/runs/demo
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SamMedftError) as e:
        hub.resolve_run("runs/typo")
    text = str(e.value)
    assert text.startswith("no such run folder: runs/typo (runs/ is a local folder")
    assert "runs/ holds: demo" in text and "download" not in text.lower()
    for path in ("a/b/c", "./gone", "~/sam_medft_no_such_run", str(tmp_path / "x"), "typo"):
        with pytest.raises(SamMedftError, match=f"no such run folder: {re.escape(path)}"):
            hub.resolve_run(path)
    assert fake_hub.requests == []
    assert hub.resolve_run("runs/demo").resolve() == tmp_path / "runs" / "demo" / "adapter"


def test_repo_not_found(fake_hub):
    with pytest.raises(SamMedftError, match=r"'sam-tester/nothing' was not found.*no local folder"):
        hub.resolve_run("sam-tester/nothing")


def test_offline_and_not_cached(fake_hub, make_run, offline):
    with pytest.raises(SamMedftError, match=r"not in the Hub cache.*HF_HUB_OFFLINE=1") as e:
        hub.resolve_run(REPO)
    assert repr(REPO) in str(e.value) and "unset HF_HUB_OFFLINE" in str(e.value)
    assert fake_hub.requests == []


def test_server_error_while_not_cached(fake_hub, make_run):
    hub.push_run(make_run(), REPO)
    fake_hub.fail_with(503)
    with pytest.raises(SamMedftError, match=r"answered 503.*try again"):
        hub.resolve_run(REPO)


def test_repo_that_is_not_a_sam_medft_model(fake_hub):
    fake_hub.add_repo("sam-tester/other", {"config.json": b"{}"})
    with pytest.raises(SamMedftError, match="has no sam_medft.json"):
        hub.resolve_run("sam-tester/other")


def test_private_repo_needs_the_right_token(fake_hub, make_run, monkeypatch):
    fake_hub.add_repo("sam-tester/secret", {"sam_medft.json": b"{}"}, private=True)
    with pytest.raises(SamMedftError, match=r"rejected the token \(HTTP 401"):
        hub.resolve_run("sam-tester/secret", token="hf_wrong")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SamMedftError, match="was not found.*private.*hf auth login"):
        hub.resolve_run("sam-tester/secret")
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    assert (hub.resolve_run("sam-tester/secret") / "sam_medft.json").read_bytes() == b"{}"


def test_explicit_cache_dir(fake_hub, make_run, tmp_path):
    hub.push_run(make_run(), REPO)
    folder = hub.resolve_run(REPO, cache_dir=tmp_path / "elsewhere")
    assert folder.is_relative_to(tmp_path / "elsewhere")


def test_format_1_repo_takes_multimask_from_the_recipe_beside_it(fake_hub, make_run):
    # sam_medft.json without schema_version/multimask (as pushed before format 2): the repo is
    # flat, so its recipe.yaml sits beside sam_medft.json where the reader looks
    from sam_medft.runs import AdapterMeta

    recipe = {"name": "boxes", "prompt": {"mode": "box", "multimask": False}}
    hub.push_run(make_run(prompt_mode="box", recipe=recipe), REPO)
    meta = AdapterMeta.read(hub.resolve_run(REPO))
    assert (meta.schema_version, meta.prompt_mode, meta.multimask) == (1, "box", False)
