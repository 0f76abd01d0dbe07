"""Base models from the Hub (`load_base_model`): one message in seconds, one retry at most,
each warning printed once, and strings that read as paths never sent to the Hub."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from sam_medft.errors import SamMedftError
from sam_medft.models.loading import load_base_model, resolve_model_name


def _load(name: str):
    return load_base_model(resolve_model_name(name), 3)


@pytest.fixture
def tiny_on_hub(fake_hub, tmp_path) -> str:
    """The tiny SamModel as a transformers repo on the fake Hub (a new name per test: the
    clients remember a repo's commit within a process, and each test has a new Hub)."""
    from sam_medft.models.registry import build_tiny

    folder = tmp_path / "tiny_sam"
    build_tiny(3).save_pretrained(folder)
    repo_id = f"sam-tester/tiny-sam-{uuid.uuid4().hex[:8]}"
    fake_hub.add_repo(repo_id, {p.name: p.read_bytes() for p in folder.iterdir()})
    return repo_id


def test_a_missing_model_repo_is_one_request_and_one_message(fake_hub):
    t = time.perf_counter()
    with pytest.raises(SamMedftError, match=r"loading model 'sam-tester/missing': repo "
                       r"'sam-tester/missing' was not found on http://127\.0\.0\.1"):
        _load("sam-tester/missing")
    assert time.perf_counter() - t < 3
    assert [(r.method, r.status) for r in fake_hub.requests] == [("HEAD", 404)]


def test_a_failing_hub_is_asked_twice_then_one_message(fake_hub, caplog):
    fake_hub.fail_with(503)
    t = time.perf_counter()
    with pytest.raises(SamMedftError, match="the Hub answered 503.*try again in a few minutes"):
        _load("sam-tester/missing")
    assert time.perf_counter() - t < 4  # the client alone retried 5 times over ~25 s
    assert len(fake_hub.requests) == 2
    retries = [r for r in caplog.records if "trying once more" in r.getMessage()]
    assert len(retries) == 1


def test_one_failure_then_the_model_loads(tiny_on_hub, fake_hub):
    fake_hub.fail_with(503, count=1)
    model = _load(tiny_on_hub)
    assert model.config.mask_decoder_config.num_multimask_outputs == 3
    assert fake_hub.requests[0].status == 503 and fake_hub.requests[1].status == 200
    assert fake_hub.unhandled == []


def test_an_unreachable_hub_fails_fast_unless_the_model_is_cached(tiny_on_hub, monkeypatch):
    _load(tiny_on_hub)  # now in the Hub cache
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        dead + "/{repo_id}/resolve/{revision}/{filename}")
    t = time.perf_counter()
    assert _load(tiny_on_hub) is not None  # the cached copy, without a network request
    assert time.perf_counter() - t < 3  # (transformers' probes alone were retried ~25 s)
    t = time.perf_counter()
    with pytest.raises(SamMedftError, match=f"could not reach {dead}.*check the network"):
        _load("sam-tester/not-cached")
    assert time.perf_counter() - t < 4


def test_model_names_that_read_as_paths_never_ask_the_hub(fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sam-local").mkdir(parents=True)
    (tmp_path / "sam.pth").write_bytes(b"")
    with pytest.raises(SamMedftError) as e:
        resolve_model_name("models/sam-lcoal")
    assert str(e.value).startswith("no such model folder: models/sam-lcoal (models/ is a local")
    assert "models/ holds: sam-local" in str(e.value)
    for name in ("a/b/c", "./sam", "~/no_such_sam_medft_model"):
        with pytest.raises(SamMedftError, match=f"no such model folder: {name}"):
            resolve_model_name(name)
    with pytest.raises(SamMedftError, match="is a file.*sam-medft convert sam.pth"):
        resolve_model_name("sam.pth")
    assert fake_hub.requests == []


@pytest.mark.slow
def test_cli_prints_the_retry_warning_once_and_one_error(fake_hub, make_run, tmp_path):
    """The real command (`main`'s logging) on a run whose base model's Hub answers 503."""
    run = make_run(base_model="sam-tester/sam-base")
    image = tmp_path / "scan.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    fake_hub.fail_with(503)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sam_medft", "predict", str(run), str(image), "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    took = time.perf_counter() - t
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert sum("trying once more in 1 s" in line for line in lines) == 1, proc.stderr
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert "the Hub answered 503" in lines[-1] and "Traceback" not in proc.stderr
    assert len(fake_hub.requests) == 2
    assert took < 30  # imports included; the client's own retries alone took ~25 s
    assert not (tmp_path / "out" / "scan.png").exists()


def test_the_hub_clients_own_warnings_print_once(tmp_path):
    """huggingface_hub gives its logger a handler and still propagates to the root: the CLI's
    logging set-up prints each of its records once (a plain root handler prints them twice)."""
    code = (
        "import logging, sys\n"
        "from sam_medft.console import configure_logging\n"
        "configure_logging() if sys.argv[1] == 'cli' else logging.basicConfig()\n"
        "from huggingface_hub.utils import logging as hf_logging\n"
        "hf_logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
        "logging.getLogger('sam_medft.x').warning('ours')\n"
    )
    counts = {}
    for mode in ("cli", "plain"):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        counts[mode] = (proc.stderr.count("Retrying in 1s"), proc.stderr.count("ours"))
    assert counts == {"cli": (1, 1), "plain": (2, 1)}
