"""Images/s of the training data pipeline alone (no model), old way against new way.

    python scripts/data_throughput.py [--size 1024] [--images 32] [--batch 4] [--workers 0]

Rows (each a full pass over `--images` synthetic slices, after one untimed pass):
- decode every time: decode, map labels, resize, normalise and augment each image in the
  loader, every epoch (what the pipeline did before the preprocessed store);
- store, finish per image: the uint8 store, normalise + augment per image in the loader
  (CPU runs, prompt modes);
- store, finish per batch: uint8 batches, normalise + augment once per batch on DEVICE (the
  accelerator path; on a GPU, what training does).
Prints one JSON line per row. A model step at R images/s is fed when a row's images/s is
well above R (the pipeline runs beside the step in the workers or, on the GPU, in its own
kernels).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sam_medft.config import AugmentConfig, DataConfig
from sam_medft.data.dataset import ModelFrameSpec, SamSegmentationDataset, collate
from sam_medft.data.labels import LabelMap
from sam_medft.data.model_frame import finish_batch
from sam_medft.data.preprocessed import PreprocessedStore
from sam_medft.data.sources import build_splits
from sam_medft.data.synthetic import SYNTHETIC_LABELS, write_synthetic
from sam_medft.data.transforms import SamGeometry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="model input size")
    ap.add_argument("--source-size", type=int, default=512, help="synthetic slice size")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    geometry = SamGeometry(a.size, a.size // 4)
    labels = LabelMap(dict(SYNTHETIC_LABELS))
    spec = ModelFrameSpec(geometry, "sam", labels)
    augment = AugmentConfig(vflip=0.5, gamma=0.2)
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, n_train=a.images, n_val=0, n_test=0, size=a.source_size)
        data = DataConfig(source="folder", folder=Path(tmp), labels=dict(SYNTHETIC_LABELS),
                          val_fraction=0)
        source = build_splits(data)["train"]
        t0 = time.perf_counter()
        store = PreprocessedStore.build(source, geometry, labels, num_workers=a.workers)
        build_s = time.perf_counter() - t0
        rows = [
            ("decode every time", SamSegmentationDataset(source, spec, augment), False),
            ("store, finish per image",
             SamSegmentationDataset(source, spec, augment, store=store), False),
            (f"store, finish per batch on {device}",
             SamSegmentationDataset(source, spec, augment, store=store, finish_in_loader=False),
             True),
        ]
        for name, ds, per_batch in rows:
            loader = torch.utils.data.DataLoader(
                ds, batch_size=a.batch, num_workers=a.workers, collate_fn=collate,
                pin_memory=device.type == "cuda")

            one_pass(loader, per_batch, geometry, augment, device)
            t0 = time.perf_counter()
            one_pass(loader, per_batch, geometry, augment, device)
            seconds = time.perf_counter() - t0
            print(json.dumps({"pipeline": name, "images_per_s": round(a.images / seconds, 1),
                              "size": a.size, "batch": a.batch, "workers": a.workers,
                              "threads": torch.get_num_threads(),
                              "store_build_s": round(build_s, 2)}))


def one_pass(loader, per_batch: bool, geometry, augment, device: torch.device) -> None:
    """Every batch of one epoch, finished where the row says, consumed where it is."""
    for batch in loader:
        if per_batch:
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            batch = finish_batch(batch, geometry, "sam", augment)
        batch["pixel_values"].sum()
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
