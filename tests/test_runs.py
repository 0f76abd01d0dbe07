"""The run folder can neither escape output_dir nor destroy what is not a run, and has one
writer at a time (issue 12). Every refusal is checked for its message AND for leaving every
file around it exactly as it was (a digest of the whole tmp tree before and after).

Real processes where it matters: the CLI for bad names, a second Python process holding the
lock (then SIGKILLed, for the crash case), real read-only folders (fault_helpers.read_only).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fault_helpers import digest, read_only

from sam_medft.config import load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.runs import LOCK, MARKER, RunFolder

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"
SMALL = ["data.synthetic.n_train=4", "data.synthetic.n_val=0", "data.synthetic.n_test=0",
         "data.synthetic.size=64", "train.log_with=none", "train.batch_size=2"]


def project(tmp_path: Path) -> Path:
    """A user's project: data, notes and an earlier run next to and above runs/."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "scan_001.png").write_bytes(b"\x89PNG not really")
    (root / "notes.md").write_text("the only copy of my notes\n")
    earlier = root / "runs" / "earlier"
    (earlier / "adapter").mkdir(parents=True)
    (earlier / "adapter" / "sam_medft.json").write_text("{}")
    (earlier / "recipe.yaml").write_text("name: earlier\n")
    return root


def recipe(out: Path, name: str, *extra: str):
    return load_recipe(DEMO, [*SMALL, f"output_dir={out}", f"name={name}", *extra])


# ---- names and paths -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x/../..", "a\\b", "  ", "x\0"])
def test_a_name_must_be_one_folder_name(tmp_path, name):
    with pytest.raises(SamMedftError, match="must be one folder name inside output_dir"):
        recipe(tmp_path, name)


@pytest.mark.parametrize("name", ["..", ".", "", "ABSOLUTE", "../x"])
def test_overwrite_with_a_name_that_is_not_one_folder_is_refused(tmp_path, name):
    root = project(tmp_path)
    name = str(root / "data") if name == "ABSOLUTE" else name
    before = digest(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "sam_medft", "train", str(DEMO), f"output_dir={root / 'runs'}",
         f"name={name}", "--overwrite"],
        capture_output=True, text=True, timeout=120, cwd=root / "runs")
    assert proc.returncode == 2, proc.stderr
    assert "must be one folder name inside output_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(tmp_path) == before


def test_a_run_folder_that_resolves_outside_output_dir_is_refused(tmp_path):
    from sam_medft.training.trainer import train

    root = project(tmp_path)
    (root / "runs" / "linked").symlink_to(root / "data", target_is_directory=True)
    before = digest(tmp_path)
    with pytest.raises(SamMedftError, match="not inside output_dir"):
        train(recipe(root / "runs", "linked"), overwrite=True)
    assert digest(tmp_path) == before


# ---- the marker: --overwrite deletes only our folders ---------------------------------------


@pytest.mark.parametrize("content", ["user_files", "recipe_only"])
def test_overwrite_refuses_a_folder_sam_medft_did_not_make(tmp_path, content):
    from sam_medft.training.trainer import train

    root = project(tmp_path)
    mine = root / "runs" / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("case,dice\n1,0.9\n")
    if content == "recipe_only":  # a recipe.yaml alone does not make a run
        (mine / "recipe.yaml").write_text("name: mine\n")
    before = digest(tmp_path)
    with pytest.raises(SamMedftError) as err:
        train(recipe(root / "runs", "mine"), overwrite=True)
    msg = str(err.value)
    assert f"{mine} was not made by sam_medft" in msg and MARKER in msg
    assert "--overwrite deletes only run folders sam_medft made" in msg
    assert digest(tmp_path) == before


def test_overwrite_empties_a_marked_run_and_logs_exactly_what_it_removes(tmp_path, caplog):
    root = project(tmp_path)
    run = RunFolder(root / "runs" / "r")
    run.open_for_training(resume=False, overwrite=False).release()
    marker = json.loads(run.marker.read_text())
    assert marker["sam_medft_run"] == 1 and marker["version"] and marker["created"]
    (run.adapter).mkdir()
    (run.adapter / "adapter_model.safetensors").write_bytes(b"w")
    (run.checkpoints / "checkpoint-00000002").mkdir(parents=True)
    run.recipe_file.write_text("name: r\n")
    (run.logs / "train.log").write_text("old log\n")
    others = digest(root / "data"), digest(root / "runs" / "earlier"), (root / "notes.md").read_text()

    with pytest.raises(SamMedftError, match="already exists; pass --resume"):
        run.open_for_training(resume=False, overwrite=False)
    with caplog.at_level(logging.WARNING, logger="sam_medft"):
        run.open_for_training(resume=False, overwrite=True).release()
    removed = [r.getMessage() for r in caplog.records if "--overwrite: removing" in r.getMessage()]
    assert removed == [f"--overwrite: removing from {run.root}: adapter/, checkpoints/, logs/, "
                       f"recipe.yaml"]
    assert sorted(p.name for p in run.root.iterdir()) == [MARKER, "logs"]
    assert others == (digest(root / "data"), digest(root / "runs" / "earlier"),
                      (root / "notes.md").read_text())


@pytest.mark.parametrize("layout", ["adapter", "checkpoint"])
def test_a_run_from_before_markers_is_ours(tmp_path, layout):
    run = RunFolder(tmp_path / "old_run")
    run.root.mkdir()
    run.recipe_file.write_text("name: old_run\n")
    if layout == "adapter":
        run.adapter.mkdir()
        (run.adapter / "sam_medft.json").write_text("{}")
    else:
        (run.checkpoints / "checkpoint-00000050").mkdir(parents=True)
    assert run.is_ours() and not run.is_marked()
    run.open_for_training(resume=False, overwrite=True).release()
    assert sorted(p.name for p in run.root.iterdir()) == [MARKER, "logs"]


# ---- the lock --------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from sam_medft.runs import RunFolder
lock = RunFolder(Path(sys.argv[1])).lock("train")
print("held", flush=True)
time.sleep(300)
"""


def hold_lock(root: Path) -> subprocess.Popen:
    """A second process that holds the run's lock, as a training run would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def small_run(root: Path) -> RunFolder:
    """A finished-looking run: marker, recipe.yaml, a real (untrained) adapter."""
    from sam_medft.adapters.artifact import save_adapter
    from sam_medft.adapters.methods import apply_method
    from sam_medft.config import PeftSettings
    from sam_medft.models.registry import build_tiny
    from sam_medft.runs import AdapterMeta

    run = RunFolder(root)
    run.open_for_training(resume=False, overwrite=False).release()
    model, _ = apply_method(build_tiny(3), PeftSettings(method="lora", scope="decoder"))
    save_adapter(model, AdapterMeta(
        base_model="tiny", num_classes=3, class_names=["background", "organ_a", "organ_b"],
        method="lora", scope="decoder", normalization="sam", input_size=256, mask_size=64,
        mask_outputs=3, labels={"0": "background", "128": "organ_a", "255": "organ_b"}),
        run.adapter)
    run.recipe_file.write_text(recipe(root.parent, root.name).to_yaml())
    return run


def test_a_live_holder_refuses_other_writers_and_a_crashed_one_is_taken_over(tmp_path, caplog):
    from sam_medft.eval.evaluate import evaluate_run

    run = small_run(tmp_path / "runs" / "busy")
    holder = hold_lock(run.root)
    try:
        before = digest(tmp_path)
        host = socket.gethostname()
        for attempt in (lambda: run.open_for_training(resume=False, overwrite=True),
                        lambda: run.open_for_training(resume=False, overwrite=False),
                        lambda: evaluate_run(run.root, show_progress=False)):
            with pytest.raises(SamMedftError) as err:
                attempt()
            msg = str(err.value)
            assert f"run folder {run.root} is in use: train by pid {holder.pid} on host {host}" in msg
            assert "started 20" in msg and f"(lock {run.lock_file})" in msg
        assert digest(tmp_path) == before  # --overwrite deleted nothing, eval wrote nothing

        holder.send_signal(signal.SIGKILL)  # a crash: no clean-up, the record stays
        holder.wait(timeout=30)
        assert json.loads(run.lock_file.read_text())["pid"] == holder.pid
        with caplog.at_level(logging.WARNING, logger="sam_medft"):
            lock = run.lock("eval")
        assert f"taking over the lock of train by pid {holder.pid} on {host}" in caplog.text
        assert json.loads(run.lock_file.read_text())["purpose"] == "eval"
        lock.release()
        assert not run.lock_file.exists()
    finally:
        holder.kill()
        holder.wait()


def write_record(run: RunFolder, **record) -> None:
    run.lock_file.write_text(json.dumps({"started": "2020-01-01T00:00:00+00:00",
                                         "purpose": "train", **record}) + "\n")


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    run = small_run(tmp_path / "r")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_record(run, pid=dead.pid, host=socket.gethostname())
    with caplog.at_level(logging.WARNING, logger="sam_medft"):
        lock = run.open_for_training(resume=False, overwrite=True)
    lock.release()
    assert f"taking over the lock of train by pid {dead.pid}" in caplog.text
    assert not run.adapter.exists()  # the overwrite went ahead


def test_a_lock_recorded_on_another_host_is_not_taken_over(tmp_path):
    run = small_run(tmp_path / "r")
    write_record(run, pid=12345, host="gpu-node-17")
    before = digest(tmp_path)
    with pytest.raises(SamMedftError) as err:
        run.open_for_training(resume=False, overwrite=True)
    assert "in use: train by pid 12345 on host gpu-node-17" in str(err.value)
    assert f"delete {run.lock_file} and rerun" in str(err.value)
    assert digest(tmp_path) == before


def test_the_lock_is_released_when_training_fails(tmp_path):
    from sam_medft.training.trainer import train

    bad = recipe(tmp_path, "r", "data.source=lists", f"data.train_list={tmp_path / 'no.csv'}")
    for _ in range(2):  # the second attempt meets the same error, not a held lock
        with pytest.raises(SamMedftError, match="no.csv"):
            train(bad)
        assert not (tmp_path / "r" / LOCK).exists()


# ---- read-only folders -----------------------------------------------------------------------


def test_a_read_only_output_dir_is_one_message(tmp_path):
    from sam_medft.training.trainer import train

    out = tmp_path / "runs"
    out.mkdir()
    with read_only(out):
        with pytest.raises(SamMedftError) as err:
            train(recipe(out, "r"))
        assert list(out.iterdir()) == []
    msg = str(err.value)
    assert f"cannot write the run folder to {out / 'r'}" in msg
    assert "choose a writable output_dir" in msg


def test_resume_in_a_read_only_run_folder_is_one_message(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.root.mkdir()
    run.recipe_file.write_text("name: r\n")
    (run.checkpoints / "checkpoint-00000002").mkdir(parents=True)
    before = digest(tmp_path)
    with read_only(run.root):
        with pytest.raises(SamMedftError) as err:
            run.open_for_training(resume=True, overwrite=False)
    assert f"cannot write the run folder's lock file to {run.lock_file}" in str(err.value)
    assert digest(tmp_path) == before


def test_resume_removes_only_what_a_killed_writer_left(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.open_for_training(resume=False, overwrite=False).release()
    (run.checkpoints / "checkpoint-00000002").mkdir(parents=True)
    (run.checkpoints / "checkpoint-00000002" / "trainer_state.json").write_text('{"step": 2}')
    run.recipe_file.write_text("name: r\n")
    keep = digest(run.root)
    (run.root / ".adapter.tmp-1a2b3c4d").mkdir()
    (run.root / ".adapter.tmp-1a2b3c4d" / "adapter_model.safetensors").write_bytes(b"half")
    (run.root / ".recipe.yaml.tmp-1a2b3c4d").write_text("name: r\nda")
    (run.checkpoints / ".tmp-checkpoint-00000004").mkdir()
    run.open_for_training(resume=True, overwrite=False).release()
    assert digest(run.root) == keep


# ---- the artifact's metadata: adapter/sam_medft.json (issue 13) -------------------------------
V1_META = {  # format 1, as sam_medft wrote it before schema_version/multimask (no license)
    "base_model": "tiny", "num_classes": 2, "class_names": ["background", "thing"],
    "method": "lora", "scope": "decoder", "normalization": "sam", "input_size": 256,
    "mask_size": 64, "mask_outputs": 3, "labels": {"0": "background", "255": "thing"},
    "binary": True, "prompt_mode": "box", "intensity": {}, "data_description": "boxes",
    "base_revision": None, "sam_medft_version": "0.1.0",
}


def write_meta(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sam_medft.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(("layout", "recipe_text", "multimask"), [
    ("run", "prompt: {mode: box, multimask: false}\n", False),
    ("run", "prompt: {mode: box, multimask: true}\n", True),
    ("run", "name: r\n", True),  # no prompt section: the recipe default
    ("flat", "prompt: {mode: box, multimask: false}\n", False),  # a Hub snapshot
    ("none", None, True),  # no recipe anywhere: SAM's default
])
def test_format_1_loads_with_multimask_from_the_recipe(tmp_path, layout, recipe_text, multimask):
    from sam_medft.runs import AdapterMeta

    adapter = write_meta(tmp_path / "r" / ("adapter" if layout == "run" else "model"), V1_META)
    if recipe_text is not None:
        (adapter.parent if layout == "run" else adapter).joinpath("recipe.yaml").write_text(
            recipe_text)
    if layout == "run":  # a stray copy inside adapter/ does not win over the run's own recipe
        (adapter / "recipe.yaml").write_text("prompt: {multimask: %s}\n" % (not multimask))
    meta = AdapterMeta.read(adapter)
    assert meta.multimask is multimask and meta.schema_version == 1
    assert (meta.prompt_mode, meta.class_names, meta.binary) == ("box", ["background", "thing"], True)
    # written again it is format 2, multimask included: the recipe is not needed any more
    for f in adapter.parent.rglob("recipe.yaml"):
        f.unlink()
    (adapter / "sam_medft.json").write_text(meta.to_json())
    again = AdapterMeta.read(adapter)
    assert json.loads((adapter / "sam_medft.json").read_text())["schema_version"] == 2
    assert again.multimask is multimask and again.schema_version == 2


def test_format_2_round_trip(tmp_path):
    from sam_medft.runs import SCHEMA_VERSION, AdapterMeta

    meta = AdapterMeta(**{**V1_META, "multimask": False, "license": "mit"})
    folder = write_meta(tmp_path / "a", json.loads(meta.to_json()))
    assert SCHEMA_VERSION == 2 and json.loads(meta.to_json())["schema_version"] == 2
    assert AdapterMeta.read(folder) == meta
    assert RunFolder(tmp_path / "run").meta_file == tmp_path / "run" / "adapter" / "sam_medft.json"


@pytest.mark.parametrize(("change", "message"), [
    # a missing field: named, with the file
    (lambda d: d.pop("num_classes"), r"sam_medft.json lacks the field 'num_classes' \(format 1\)"),
    (lambda d: d.update(schema_version=2), r"lacks the field 'multimask' \(format 2\)"),
    (lambda d: [d.pop("method"), d.pop("scope")], r"lacks the fields 'method', 'scope'"),
    # an unknown field: a newer sam_medft wrote it, or a typo in this format
    (lambda d: d.update(schema_version=3, tiling=True), r"is artifact format 3, written by a newer "
     r"sam_medft \(0.1.0\); this sam_medft \(.*\) reads formats up to 2: upgrade sam_medft"),
    (lambda d: d.update(schema_version=2, multimask=True, multi_mask=False),
     r"has fields sam_medft .* does not know: 'multi_mask' \(format 2\); remove them"),
    (lambda d: d.update(clases=["a"]), r"does not know: 'clases' \(format 1\)"),
    # a value of the wrong type, and a version that is no version
    (lambda d: d.update(num_classes=True), r"num_classes is True \(bool\), it should be int"),
    (lambda d: d.update(labels={"0": 1}), r"labels is \{'0': 1\} \(dict\), it should be "
     r"dict\[str, str\] \| null"),
    (lambda d: d.update(schema_version="2"), r"schema_version '2' is not a format number"),
])
def test_a_bad_meta_file_is_one_message_naming_it(tmp_path, change, message):
    from sam_medft.runs import AdapterMeta

    data = dict(V1_META)
    change(data)
    folder = write_meta(tmp_path / "a", data)
    with pytest.raises(SamMedftError, match=message) as err:
        AdapterMeta.read(folder)
    assert str(folder / "sam_medft.json") in str(err.value)


def test_unreadable_meta_and_recipe_are_one_message(tmp_path):
    from sam_medft.runs import AdapterMeta, find_adapter_folder

    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "sam_medft.json").write_text("{not json")
    with pytest.raises(SamMedftError, match=r"a/sam_medft.json is not readable JSON"):
        AdapterMeta.read(folder)
    (folder / "sam_medft.json").write_text("[1, 2]")
    with pytest.raises(SamMedftError, match=r"should hold a JSON object, not list"):
        AdapterMeta.read(folder)
    write_meta(folder, V1_META)  # format 1 needs the recipe for multimask: a broken one is named
    (folder / "recipe.yaml").write_text("prompt: [unclosed\n")
    with pytest.raises(SamMedftError, match=r"(?s)a/recipe.yaml is not valid YAML.*predates "
                                            r"`multimask`.*fix or remove the recipe"):
        AdapterMeta.read(folder)
    assert find_adapter_folder(folder) == folder == find_adapter_folder(tmp_path / "a" / ".")
    with pytest.raises(SamMedftError, match=r"holds no fine-tuned adapter \(sam_medft.json not "
                                            r"found in it or in .*/adapter\)"):
        find_adapter_folder(tmp_path)
