"""Shared by the multi-process tests: the environment, ports and binaries for real
`accelerate launch` runs on CPU, and weight comparison."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import torch


def run_env() -> dict[str, str]:
    """One thread per process (2 cores), CPU gloo, no network."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        ACCELERATE_USE_CPU="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_bin() -> str:
    path = Path(sys.executable).with_name("accelerate")
    return str(path) if path.exists() else shutil.which("accelerate")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the run's complete checkpoints (a temporary or set-aside one is not)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in root.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "demo.yaml"
CPU_CONFIG = REPO / "accelerate_configs" / "cpu.yaml"


def two_process_train(args: list[str], *flags: str) -> list[str]:
    """`accelerate launch` of `sam-medft train recipes/demo.yaml` on 2 CPU (gloo) processes."""
    return [accelerate_bin(), "launch", "--config_file", str(CPU_CONFIG), "--multi_gpu",
            "--num_processes", "2", "--main_process_port", str(free_port()),
            "-m", "sam_medft", "train", str(DEMO), *args, *flags]
