"""Stopping a run never costs the user their work (issue 12), in real `sam-medft train`
processes: Ctrl-C stops like SIGTERM (the step finishes, a checkpoint is written, exit status
3, `--resume` finishes the run); a second writer meets the run's lock and changes nothing;
kill -9 in the middle of a checkpoint write leaves a run that resumes from the checkpoint
before (the half-written folder and the dead process's lock are cleaned up on the way).

The SIGTERM tests in test_train_resume.py check that resumed weights equal uninterrupted ones;
these check the stop itself, so their runs are short and unequal.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import digest
from launching import DEMO, checkpoint_steps, run_env

SAM_MEDFT = str(Path(sys.executable).with_name("sam-medft"))


def args(out: Path, name: str, max_steps: int, *extra: str) -> list[str]:
    """The tiny demo at 64 px, 8 images, batch 2: ~10 steps/s on one CPU core."""
    return [f"output_dir={out}", f"name={name}", f"train.max_steps={max_steps}",
            "train.log_with=none", "data.synthetic.n_train=8", "data.synthetic.n_val=2",
            "data.synthetic.n_test=1", "data.synthetic.size=64", "train.batch_size=2",
            "train.warmup_steps=2", "train.eval_every=1000", *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=run_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_step(proc: subprocess.Popen, log: Path, max_steps: int) -> None:
    """Until the progress bar shows a finished step (the lock is held from before step 1)."""
    deadline = time.monotonic() + 180
    pattern = re.compile(rf"\b([1-9]\d*)/{max_steps} \[")
    while not pattern.search(log.read_text(errors="replace")):
        assert proc.poll() is None, f"the run ended early:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "no training step within 180 s"
        time.sleep(0.05)


def run_ok(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-6000:]}"
    return proc


def test_first_ctrl_c_stops_gracefully_and_a_second_aborts_at_once():
    """The handler itself, with real signals to this process: the first SIGINT only sets the
    flag and gives Ctrl-C back to Python; the second is a KeyboardInterrupt at once."""
    from sam_medft.training.trainer import graceful_stop

    before = signal.getsignal(signal.SIGINT)
    with graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between bytecodes
        assert stop.received and stop.signal_name == "Ctrl-C (SIGINT)"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_ctrl_c_checkpoints_exits_3_and_resume_finishes(tmp_path):
    cmd = [SAM_MEDFT, "train", str(DEMO), *args(tmp_path, "x", 20, "train.save_every=1000")]
    log = tmp_path / "stopped.log"
    proc = start(cmd, log)
    wait_for_step(proc, log, 20)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 3, log.read_text()[-4000:]
    run_dir = tmp_path / "x"
    text = log.read_text() + (run_dir / "logs" / "train.log").read_text()
    assert "Ctrl-C: finishing the current step, then writing a checkpoint" in text
    assert "press Ctrl-C again to abort at once" in text
    stopped = re.search(r"training stopped by Ctrl-C \(SIGINT\) after step (\d+) of 20; "
                        r"checkpoint (\S+) written\. Continue with the same command plus --resume",
                        text)
    assert stopped, text[-3000:]
    step = int(stopped.group(1))
    assert checkpoint_steps(run_dir) == [step] and 0 < step < 20  # written by the stop
    assert not (run_dir / ".sam_medft_lock").exists()

    run_ok([*cmd, "--resume"])
    assert checkpoint_steps(run_dir)[-1] == 20
    assert f"resumed from {run_dir / 'checkpoints' / f'checkpoint-{step:08d}'}" in (
        run_dir / "logs" / "train.log").read_text()


@pytest.mark.slow
def test_a_second_training_into_a_running_run_is_refused(tmp_path):
    """A (stopped with SIGSTOP while it holds the lock, so the timing is fixed) owns the run;
    B (no flag) and C (--overwrite) are refused naming A, and change nothing; A then
    finishes with a folder that is all its own."""
    run_dir = tmp_path / "shared"
    cmd = [SAM_MEDFT, "train", str(DEMO), *args(tmp_path, "shared", 12)]
    log = tmp_path / "a.log"
    first = start([*cmd, "--overwrite"], log)
    wait_for_step(first, log, 12)
    first.send_signal(signal.SIGSTOP)
    try:
        before = digest(run_dir)
        others = [subprocess.Popen(c, env=run_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
                  for c in (cmd, [*cmd, "--overwrite"])]
        results = [(p.wait(timeout=180), p.stderr.read()) for p in others]
        after = digest(run_dir)
    finally:
        first.send_signal(signal.SIGCONT)
    holder = f"run folder {run_dir} is in use: train by pid {first.pid} on host {socket.gethostname()}"
    for code, err in results:
        assert code == 2 and holder in err and "Traceback" not in err, err[-3000:]
    assert after == before
    assert first.wait(timeout=180) == 0, log.read_text()[-4000:]
    train_log = (run_dir / "logs" / "train.log").read_text()
    assert train_log.count("normalisation and augmentation") == 1 and "in use" not in train_log
    assert checkpoint_steps(run_dir) == [12]


KILL_WHILE_SAVING = """
import sys, time
from pathlib import Path
import sam_medft.training.checkpoint as ckpt

real, calls, sentinel = ckpt.save_file, [], Path(sys.argv[1])


def save_then_hang(tensors, path, *a, **k):
    calls.append(path)
    real(tensors, path, *a, **k)
    if len(calls) == 2:  # the second checkpoint: half its weights written, then kill -9
        p = Path(path)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        sentinel.write_text(str(p))
        time.sleep(600)


ckpt.save_file = save_then_hang
sys.argv = ["sam-medft", *sys.argv[2:]]
from sam_medft.cli import main

main()
"""


@pytest.mark.slow
def test_kill_9_while_writing_a_checkpoint_leaves_a_resumable_run(tmp_path):
    run_dir = tmp_path / "k"
    train_args = ["train", str(DEMO), *args(tmp_path, "k", 6, "train.save_every=2")]
    sentinel = tmp_path / "writing"
    log = tmp_path / "killed.log"
    proc = start([sys.executable, "-c", KILL_WHILE_SAVING, str(sentinel), *train_args], log)
    try:
        deadline = time.monotonic() + 180
        while not sentinel.exists():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the second checkpoint never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert Path(sentinel.read_text()).parent.name == ".tmp-checkpoint-00000004"
    assert checkpoint_steps(run_dir) == [2]
    assert (run_dir / ".sam_medft_lock").exists()  # the dead process's record stays

    done = run_ok([SAM_MEDFT, *train_args, "--resume"])
    text = done.stderr + (run_dir / "logs" / "train.log").read_text()
    assert f"taking over the lock of train by pid {proc.pid}" in text
    assert f"resumed from {run_dir / 'checkpoints' / 'checkpoint-00000002'}" in text
    assert checkpoint_steps(run_dir) == [4, 6]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
