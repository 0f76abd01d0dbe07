"""The fake Hub itself: auth, failure switch and the record of unknown routes."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError


def test_auth_reads_and_unknown_routes(fake_hub):
    fake_hub.add_repo("sam-tester/public", {"a/b.txt": b"hello"})
    api = HfApi()
    assert api.whoami()["name"] == fake_hub.user
    assert sorted(api.list_repo_files("sam-tester/public")) == [".gitattributes", "a/b.txt"]
    path = hf_hub_download("sam-tester/public", "a/b.txt", token=False)  # anonymous read
    assert open(path, "rb").read() == b"hello"
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token="hf_wrong").model_info("sam-tester/public")
    assert e.value.response.status_code == 401
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("sam-tester/public", "missing.txt")
    with pytest.raises(HfHubHTTPError):
        api.list_repo_refs("sam-tester/public")  # not implemented here: recorded
    assert any("/refs" in u for u in fake_hub.unhandled)


def test_fail_with_count_heals(fake_hub):
    fake_hub.add_repo("sam-tester/public", {"x": b"1"})
    api = HfApi()
    fake_hub.fail_with(502, count=1)
    with pytest.raises(HfHubHTTPError) as e:
        api.model_info("sam-tester/public")
    assert e.value.response.status_code == 502
    assert (
        api.model_info("sam-tester/public").sha
        == fake_hub.repos["sam-tester/public"].branches["main"]
    )
