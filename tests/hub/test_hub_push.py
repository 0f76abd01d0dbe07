"""push_run against the loopback Hub, with the real huggingface_hub client."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard, constants

from sam_medft import hub
from sam_medft.errors import SamMedftError

REPO = "sam-tester/prostate-lora"


@pytest.mark.parametrize("xet", [True, False], ids=["xet-pipeline", "create-commit"])
def test_push_uploads_one_commit_with_card(fake_hub, make_run, tree_digest, monkeypatch, xet):
    # huggingface_hub 2.x takes a streamed pipeline when hf_xet is installed, create_commit
    # otherwise (the 1.x path): both must land the same repo
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    run = make_run()
    before = tree_digest(run)

    url = hub.push_run(run, REPO)

    assert url == f"{fake_hub.url}/{REPO}"
    repo = fake_hub.repos[REPO]
    assert repo.commit_count() == 2  # the repo's initial commit + exactly one upload
    files = repo.files()
    for name in (
        "sam_medft.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "preprocessor_config.json",
    ):
        assert files[name] == (run / "adapter" / name).read_bytes(), name
    assert files["recipe.yaml"] == (run / "recipe.yaml").read_bytes()
    assert files["eval/summary.json"] == (run / "eval" / "summary.json").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft"
    assert "lora" in card.data.tags and "segment-anything" in card.data.tags
    dice = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert dice["dice (foreground mean)"] == pytest.approx(0.8123)
    assert f'sam_medft.load("{REPO}")' in card.text
    writes = [r for r in fake_hub.requests if r.method == "POST"]
    assert writes and all(r.authorization == f"Bearer {fake_hub.token}" for r in writes)
    assert fake_hub.unhandled == []
    assert tree_digest(run) == before  # the run folder was only read


def test_push_again_updates_the_repo_and_skips_nothing_new(fake_hub, make_run):
    run = make_run()
    hub.push_run(run, REPO)
    meta = json.loads((run / "adapter" / "sam_medft.json").read_text())
    meta["data_description"] = "second version"
    (run / "adapter" / "sam_medft.json").write_text(json.dumps(meta))
    hub.push_run(run, REPO, commit_message="v2")  # repo exists: create_repo answers 409
    repo = fake_hub.repos[REPO]
    assert repo.commit_count() == 3
    assert repo.commits[repo.branches["main"]].message == "v2"
    assert b"second version" in repo.files()["README.md"]


def test_push_to_a_branch_and_private(fake_hub, make_run):
    run = make_run(summary=None)
    url = hub.push_run(run, REPO, revision="v1", private=True)
    repo = fake_hub.repos[REPO]
    assert url.endswith(f"/{REPO}/tree/v1") and repo.private
    assert "sam_medft.json" in repo.files("v1")
    assert set(repo.files("main")) == {".gitattributes"}  # main untouched
    assert "eval/summary.json" not in repo.files("v1")


def test_bare_name_goes_to_the_token_owner(fake_hub, make_run):
    url = hub.push_run(make_run(), "solo-model")
    assert url == f"{fake_hub.url}/{fake_hub.user}/solo-model"
    assert "sam_medft.json" in fake_hub.repos[f"{fake_hub.user}/solo-model"].files()


def test_server_error_is_one_clear_message(fake_hub, make_run, tree_digest):
    run = make_run()
    before = tree_digest(run)
    fake_hub.fail_with(500)
    with pytest.raises(SamMedftError, match=r"answered 500.*try again") as e:
        hub.push_run(run, REPO)
    assert REPO in str(e.value) and "unchanged" in str(e.value)
    assert fake_hub.repos == {}
    assert tree_digest(run) == before


def test_bad_token_is_rejected(fake_hub, make_run, tree_digest):
    run = make_run()
    before = tree_digest(run)
    with pytest.raises(SamMedftError, match=r"rejected the token \(HTTP 401") as e:
        hub.push_run(run, REPO, token="hf_wrong")
    assert "hf auth login" in str(e.value)
    assert fake_hub.requests and fake_hub.repos == {}
    assert tree_digest(run) == before


def test_namespace_without_write_access(fake_hub, make_run):
    with pytest.raises(SamMedftError, match=r"HTTP 403.*no write access to 'someone-else/x'"):
        hub.push_run(make_run(), "someone-else/x")
    assert fake_hub.repos == {}


def test_no_token_sends_nothing(fake_hub, make_run, tree_digest, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    run = make_run()
    before = tree_digest(run)
    with pytest.raises(SamMedftError, match=r"no Hugging Face token.*hf auth login.*HF_TOKEN"):
        hub.push_run(run, REPO)
    assert fake_hub.requests == []
    assert tree_digest(run) == before


@pytest.mark.parametrize("bad", ["sam-tester/bad name!", "a/b/c", "sam-tester/x--y"])
def test_bad_repo_id_sends_nothing(fake_hub, make_run, tree_digest, bad):
    run = make_run()
    before = tree_digest(run)
    with pytest.raises(SamMedftError, match="is not a valid Hub repo id") as e:
        hub.push_run(run, bad)
    assert repr(bad) in str(e.value)
    assert fake_hub.requests == []
    assert tree_digest(run) == before


def test_incomplete_run_and_offline_send_nothing(fake_hub, make_run, offline):
    run = make_run()
    with pytest.raises(SamMedftError, match="HF_HUB_OFFLINE"):
        hub.push_run(run, REPO)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(SamMedftError, match="no weights"):
        hub.push_run(run, REPO)
    assert fake_hub.requests == []


def test_unreachable_hub(fake_hub, make_run):
    url = fake_hub.url
    fake_hub.stop()  # nothing listens on that port any more
    with pytest.raises(SamMedftError, match=r"could not reach .*HF_ENDPOINT"):
        hub.push_run(make_run(), REPO, endpoint=url)


def test_staging_never_writes_through_links(fake_hub, make_run, tree_digest):
    # a stray adapter/recipe.yaml collides with the run's recipe.yaml in the staged repo: the
    # staged copy must replace the link, not overwrite the adapter's file through it
    run = make_run()
    (run / "adapter" / "recipe.yaml").write_text("stale copy\n")
    before = tree_digest(run)
    hub.push_run(run, REPO)
    assert tree_digest(run) == before
    assert fake_hub.repos[REPO].files()["recipe.yaml"] == (run / "recipe.yaml").read_bytes()


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"schema_version": 3, "new_field": 1}, "format 3, written by a newer sam_medft.*upgrade"),
        ({"num_clases": 3}, "does not know: 'num_clases'"),
        ({"num_classes": "3"}, "num_classes is '3' \\(str\\), it should be int"),
    ],
)
def test_push_refuses_a_meta_this_sam_medft_cannot_load(fake_hub, make_run, meta, message):
    run = make_run(**meta)
    with pytest.raises(SamMedftError, match=message):
        hub.push_run(run, REPO)
    assert fake_hub.requests == []  # checked before the first request
