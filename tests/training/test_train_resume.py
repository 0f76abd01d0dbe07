"""Runs that survive interruption, in real processes: killed (SIGKILL, every process of a
2-process DDP run) or stopped (SIGTERM, one process) after a checkpoint, then `--resume`d,
they end with the weights of an uninterrupted run.

The interruption lands in the second epoch or later and mid-epoch, so the resumed run must
restore the epoch's data order and position, the optimizer, the cosine schedule and the
step. Reference: one uninterrupted process with the same global batch (2 x 2 = 1 x 4, see
test_train_distributed).

Each interrupted run is compared with the same launch uninterrupted (one process with one
process, two with two), so the comparison isolates what the interruption and resume add;
the gradient all-reduce of two processes sums in another order than one process does, and
after a dozen Adam steps through the decoder's ReLU MLPs that float noise can flip a unit
(measured: 2 x batch 2 vs 1 x batch 4 ended 1.5e-6 or 6.8e-4 apart depending on the data's
last bits; test_train_distributed checks that equivalence over 4 steps).

Tolerances, measured (max |diff| of the final trainable tensors, 14 AdamW steps, lr 1e-3):
- one process, stopped + resumed vs uninterrupted: 0.0 (bitwise) -> ATOL_ONE = 1e-6;
- two processes, killed + resumed vs uninterrupted two processes: 0.0 -> ATOL_DDP = 1e-6;
- for scale, a resume that replays the wrong epoch order (the bug these tests caught in
  the first version of the loop) ends 5e-3 away.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from launching import checkpoint_steps, free_port, max_diff, run_env, two_process_train
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "demo.yaml"
CPU_CONFIG = REPO / "accelerate_configs" / "cpu.yaml"
ATOL_ONE = 1e-6
ATOL_DDP = 1e-6
MAX_STEPS = 14

pytestmark = pytest.mark.slow




def overrides(out: Path, name: str, batch: int) -> list[str]:
    """8 training images: 2 steps per epoch at a global batch of 4; checkpoints every 3 steps
    (step 3 is mid-epoch 1), validation only at the end (keeps the test short)."""
    base = {
        "name": name,
        "output_dir": str(out),
        "data.synthetic.n_train": 8,
        "data.synthetic.n_val": 2,
        "data.synthetic.n_test": 1,
        "data.synthetic.size": 64,
        "train.batch_size": batch,
        "train.max_steps": MAX_STEPS,
        "train.warmup_steps": 2,
        "train.eval_every": 1000,
        "train.save_every": 3,
        "train.keep_last": 2,
        "train.log_with": "none",
    }
    return [f"{k}={v}" for k, v in base.items()]


def one_process_cmd(args: list[str], flag: str) -> list[str]:
    return [sys.executable, "-m", "sam_medft", "train", str(DEMO), *args, flag]


def two_process_cmd(args: list[str], flag: str) -> list[str]:
    return two_process_train(args, flag)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-6000:]}"
    return proc


def start_and_wait_for_checkpoint(cmd: list[str], run_dir: Path, log: Path) -> subprocess.Popen:
    out = log.open("w")
    proc = subprocess.Popen(
        cmd, env=run_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not checkpoint_steps(run_dir):
        assert proc.poll() is None, (
            f"the run ended before its first checkpoint:\n{log.read_text()[-4000:]}"
        )
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    return proc


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    steps = checkpoint_steps(run_dir)
    assert steps[-1] == MAX_STEPS
    return load_file(
        str(run_dir / "checkpoints" / f"checkpoint-{steps[-1]:08d}" / "trainable.safetensors")
    )



@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run: one process, batch 4."""
    out = tmp_path_factory.mktemp("reference")
    run(one_process_cmd(overrides(out, "ref", 4), "--overwrite"))
    return final_weights(out / "ref")


@pytest.fixture(scope="module")
def reference_ddp(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run: two processes, batch 2 each."""
    out = tmp_path_factory.mktemp("reference_ddp")
    run(two_process_cmd(overrides(out, "ref", 2), "--overwrite"))
    return final_weights(out / "ref")


def test_sigkill_of_a_two_process_run_then_resume(tmp_path, reference_ddp):
    run_dir = tmp_path / "ddp"
    args = overrides(tmp_path, "ddp", 2)
    proc = start_and_wait_for_checkpoint(
        two_process_cmd(args, "--overwrite"), run_dir, tmp_path / "killed.log"
    )
    # a machine failure: every process (launcher and both workers) dies at once
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 3, family
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)
    done = checkpoint_steps(run_dir)
    assert done and done[-1] < MAX_STEPS, f"the run finished before the kill ({done})"
    assert not (run_dir / "train_summary.json").exists()

    run(two_process_cmd(args, "--resume"))
    log = (run_dir / "logs" / "train.log").read_text()
    assert f"resumed from {run_dir / 'checkpoints' / f'checkpoint-{done[-1]:08d}'}" in log
    diff = max_diff(final_weights(run_dir), reference_ddp)
    assert diff < ATOL_DDP, f"killed at step {done[-1]} + resumed vs uninterrupted: {diff:.2e}"
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and [h["n_images"] for h in summary["history"]] == [2]


def test_sigterm_of_one_process_checkpoints_then_resume(tmp_path, reference):
    run_dir = tmp_path / "single"
    args = overrides(tmp_path, "single", 4)
    log = tmp_path / "stopped.log"
    proc = start_and_wait_for_checkpoint(one_process_cmd(args, "--overwrite"), run_dir, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3  # a clean stop (exit status 3: resumable)
    text = log.read_text()
    assert "stopped by SIGTERM" in text and "--resume" in text
    done = checkpoint_steps(run_dir)
    assert done and done[-1] < MAX_STEPS, f"the run finished before SIGTERM ({done})"
    state = json.loads(
        (run_dir / "checkpoints" / f"checkpoint-{done[-1]:08d}" / "trainer_state.json").read_text()
    )
    assert state["step"] == done[-1]
    assert f"after step {done[-1]} " in text  # the checkpoint is of the step it stopped at

    run(one_process_cmd(args, "--resume"))
    diff = max_diff(final_weights(run_dir), reference)
    assert diff < ATOL_ONE, f"stopped at step {done[-1]} + resumed vs uninterrupted: {diff:.2e}"


FSDP2_WORKER = """
import json, sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from safetensors.torch import load_file

from sam_medft.models.registry import build_tiny
from sam_medft.training.checkpoint import load_checkpoint, save_checkpoint, is_sharded
from sam_medft.training.schedules import build_scheduler

root = Path(sys.argv[1])
acc = Accelerator(cpu=True)
assert acc.num_processes == 2, acc.state


def sharded(seed):
    torch.manual_seed(seed)
    m = build_tiny(3)
    for p in m.prompt_encoder.parameters():
        p.requires_grad_(False)  # frozen and trainable tensors mixed, as under PEFT
    for layer in m.vision_encoder.layers:
        fully_shard(layer)
    fully_shard(m)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    return m, opt, build_scheduler(opt, warmup=1, total=10, kind="cosine")


def step(m, opt, sched, seed):
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(seed))
    out = m(pixel_values=x, multimask_output=True)
    (out.pred_masks.float().square().mean() + out.iou_scores.float().sum()).backward()
    opt.step(); opt.zero_grad(); sched.step()


def full(m):
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in m.named_parameters()}


a, oa, sa = sharded(0)
assert is_sharded(a)
step(a, oa, sa, 1); step(a, oa, sa, 2)
save_checkpoint(acc, root, 2, a, oa, sa, {"epoch": 0}, keep_last=2)
b, ob, sb = sharded(123)  # other weights, empty optimizer
state = load_checkpoint(acc, root / "checkpoint-00000002", b, ob, sb)
assert state["step"] == 2
fa, fb = full(a), full(b)
assert all(torch.equal(fa[n], fb[n]) for n in fa if "prompt_encoder" not in n)
step(a, oa, sa, 3); step(b, ob, sb, 3)  # the restored optimizer and schedule continue alike
fa, fb = full(a), full(b)
diff = max((fa[n] - fb[n]).abs().max().item() for n in fa if "prompt_encoder" not in n)
if acc.is_main_process:
    files = sorted(p.name for p in (root / "checkpoint-00000002").iterdir())
    saved = load_file(str(root / "checkpoint-00000002" / "trainable.safetensors"))
    print(json.dumps({"files": files, "n_saved": len(saved), "diff": diff,
                      "frozen_saved": any("prompt_encoder" in k for k in saved)}))
acc.wait_for_everyone()
"""


def test_fsdp2_checkpoint_roundtrip_on_cpu(tmp_path):
    """accelerate runs FSDP on GPUs only, but torch's fully_shard runs on CPU/gloo: the
    checkpoint code (gather of sharded tensors and optimizer state, load into a fresh
    sharded model) is checked for real, then the same files load into a plain model."""
    script = tmp_path / "fsdp2_worker.py"
    script.write_text(FSDP2_WORKER)
    exe = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(exe) if exe.exists() else shutil.which("torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(script),
        str(tmp_path / "ck"),
    ]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["files"] == [
        "optimizer_by_name.pt",
        "rng_0.pt",
        "rng_1.pt",
        "scheduler.pt",
        "trainable.safetensors",
        "trainer_state.json",
    ]
    assert not report["frozen_saved"] and report["n_saved"] > 100
    assert report["diff"] == 0.0  # one more step from the restored state: identical

    # the same checkpoint resumes a plain (one-process) model: full tensors, names as keys
    from accelerate import Accelerator

    from sam_medft.models.registry import build_tiny
    from sam_medft.training.checkpoint import load_checkpoint
    from sam_medft.training.schedules import build_scheduler

    model = build_tiny(3)
    for p in model.prompt_encoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = build_scheduler(opt, warmup=1, total=10, kind="cosine")
    state = load_checkpoint(
        Accelerator(cpu=True), tmp_path / "ck" / "checkpoint-00000002", model, opt, sched
    )
    saved = load_file(str(tmp_path / "ck" / "checkpoint-00000002" / "trainable.safetensors"))
    params = dict(model.named_parameters())
    assert state["step"] == 2 and sched.last_epoch == 2 and len(opt.state) == len(saved)
    assert all(torch.equal(params[k], v) for k, v in saved.items())


def test_sigterm_of_a_two_process_run_checkpoints_then_resume(tmp_path, reference_ddp):
    """Pre-emption of a whole DDP job (SIGTERM to every process, as a scheduler sends it):
    the ranks agree at the next logging/checkpoint step, stop together after it with a
    checkpoint, and the resumed run ends where an uninterrupted one does."""
    run_dir = tmp_path / "ddp_term"
    args = overrides(tmp_path, "ddp_term", 2)
    log = tmp_path / "stopped.log"
    proc = start_and_wait_for_checkpoint(two_process_cmd(args, "--overwrite"), run_dir, log)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    text = log.read_text()
    assert "stopped by SIGTERM" in text and "--resume" in text
    done = checkpoint_steps(run_dir)
    assert done and done[-1] < MAX_STEPS, f"the run finished before SIGTERM ({done})"
    assert done[-1] % 3 == 0 or done[-1] % 10 == 0  # a save or log step: no extra host sync
    assert f"after step {done[-1]} " in text
    run(two_process_cmd(args, "--resume"))
    diff = max_diff(final_weights(run_dir), reference_ddp)
    assert diff < ATOL_DDP, f"stopped at step {done[-1]} + resumed vs uninterrupted: {diff:.2e}"
