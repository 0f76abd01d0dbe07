"""Pin the package's observable behaviour before a refactor, and compare two pins.

    python scripts/behaviour_snapshot.py record OUT    # train, eval, predict: automatic + box
    python scripts/behaviour_snapshot.py compare A B   # bit for bit (tolerance printed)

`record` runs the real commands (the same ones a user runs) on the demo recipe with a fixed
seed and a short schedule: the trained adapter tensors, the label maps and probabilities
`predict` writes for the test split, and `eval`'s per_case.csv, for the automatic recipe
and its box-prompt variant. `compare` prints the largest difference of each and exits 1
when any exceeds the tolerance.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["data.synthetic.n_train=16", "data.synthetic.n_val=4", "data.synthetic.n_test=6",
         "train.log_with=none", "train.batch_size=4", "train.max_steps=12",
         "train.eval_every=6", "train.save_every=6", "train.seed=3"]
RUNS = {"auto": [], "box": ["prompt.mode=box"]}
TOL = 1e-6


def _sam(*args: str) -> None:
    exe = Path(sys.executable).parent / "sam-medft"
    subprocess.run([str(exe), *args], check=True, cwd=ROOT)


def record(out: Path) -> None:
    out = out.resolve()
    _sam("data", "synth", str(out / "data"), "--n-train", "4", "--n-val", "2", "--n-test", "6",
         "--seed", "0")
    for name, extra in RUNS.items():
        _sam("train", "recipes/demo.yaml", f"output_dir={out}", f"name={name}", *SMALL, *extra)
        _sam("eval", str(out / name))
        if name == "auto":
            _sam("predict", str(out / name), str(out / "data" / "test.csv"), "--out",
                 str(out / name / "pred"), "--probs")


def _weights(adapter: Path) -> dict[str, np.ndarray]:
    """The adapter's saved tensors (PEFT's file, or the vanilla method's trainable tensors)."""
    out: dict[str, np.ndarray] = {}
    for f in sorted(adapter.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _numeric_diff(a: str, b: str) -> float:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return 0.0 if a == b else float("inf")
    if np.isnan(x) and np.isnan(y):
        return 0.0
    return abs(x - y)


def compare(a: Path, b: Path) -> int:
    worst: dict[str, float] = {}
    for name in RUNS:
        ta, tb = _weights(a / name / "adapter"), _weights(b / name / "adapter")
        if set(ta) != set(tb):
            worst[f"{name}: adapter tensor names"] = float("inf")
        else:
            worst[f"{name}: adapter weights"] = max(
                float(np.abs(ta[k].astype(np.float64) - tb[k]).max()) for k in ta)
        ra, rb = _rows(a / name / "eval" / "per_case.csv"), _rows(b / name / "eval" / "per_case.csv")
        d = float("inf") if len(ra) != len(rb) else max(
            (_numeric_diff(x[k], y.get(k, "?")) for x, y in zip(ra, rb, strict=True) for k in x),
            default=0.0)
        worst[f"{name}: eval per_case.csv"] = d
    pa, pb = a / "auto" / "pred", b / "auto" / "pred"
    pngs = sorted(str(p.relative_to(pa)) for p in pa.rglob("*.png"))
    if not pngs:
        worst["auto: no predictions found"] = float("inf")
    worst["auto: predicted label maps (pixels differing)"] = float(sum(
        int((np.asarray(Image.open(pa / n)) != np.asarray(Image.open(pb / n))).sum()) for n in pngs))
    worst["auto: predicted probabilities"] = max(
        float(np.abs(np.load(p).astype(np.float64) - np.load(pb / p.relative_to(pa))).max())
        for p in pa.rglob("*.npy"))
    bad = 0
    for what, d in worst.items():
        ok = d <= TOL
        bad += not ok
        print(f"{'ok  ' if ok else 'DIFF'} {what}: max difference {d:.3g}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
