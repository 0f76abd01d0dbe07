"""Preprocessed once, finished per batch: the fast data path gives what decoding every time gives.

Reference: `to_model_input` (the one sample path for one image: resize, round to uint8,
pad, normalise) and `mask_to_lowres` on each decoded sample. The store keeps what
`preprocess_image` makes, so pixels and labels are equal bit for bit. Finishing a batch at
once (the accelerator path) must equal finishing each item in the loader bit for bit on the
CPU, in any batch order.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sam_medft.config import AugmentConfig, DataConfig
from sam_medft.data.dataset import ModelFrameSpec, SamSegmentationDataset, collate
from sam_medft.data.labels import LabelMap
from sam_medft.data.model_frame import finish_batch
from sam_medft.data.preprocessed import (
    PreprocessedStore,
    choose_mode,
    estimate_bytes,
    image_key,
    mask_dtype,
    preprocess_sample,
    stored_to_labels,
)
from sam_medft.data.sources import build_splits
from sam_medft.data.synthetic import SYNTHETIC_LABELS, write_synthetic
from sam_medft.data.transforms import IGNORE_INDEX, SamGeometry, to_model_input

GEOM = SamGeometry(96, 24)
AUG = AugmentConfig(p=1.0, hflip=0.5, vflip=0.5, rotate_degrees=25, scale=(0.8, 1.2),
                    brightness=0.1, contrast=0.1, gamma=0.2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Synthetic slices, some non-square (padding on the right or at the bottom)."""
    root = tmp_path_factory.mktemp("syn")
    write_synthetic(root, n_train=10, n_val=2, n_test=0, size=64)
    data = DataConfig(source="folder", folder=root, labels=dict(SYNTHETIC_LABELS), val_fraction=0)
    return build_splits(data)["train"]


@pytest.fixture(scope="module")
def label_map() -> LabelMap:
    return LabelMap(dict(SYNTHETIC_LABELS))


def _spec(label_map, norm="sam") -> ModelFrameSpec:
    return ModelFrameSpec(GEOM, norm, label_map)


@pytest.mark.parametrize("norm", ["sam", "medsam"])
def test_finished_items_match_decoding_every_time(source, label_map, norm):
    ds = SamSegmentationDataset(source, _spec(label_map, norm))
    shapes = set()
    for i in range(len(source)):
        sample = source.load(i)
        ref, original, resized = to_model_input(sample.image, GEOM, norm)
        labels = GEOM.mask_to_lowres(label_map.apply(sample.raw_mask))
        item = ds[i]
        shapes.add(resized)
        assert torch.equal(item["labels"], labels)
        assert torch.equal(item["pixel_values"], ref)
        assert (item["pixel_values"][:, resized[0]:, :] == 0).all()  # padding stays zero
        assert (item["pixel_values"][:, :, resized[1]:] == 0).all()
        assert tuple(item["original_size"].tolist()) == original
    assert len(shapes) > 1  # square and non-square images were both checked


def test_store_items_equal_decoded_items(source, label_map, tmp_path):
    memory = PreprocessedStore.build(source, GEOM, label_map)
    disk = PreprocessedStore.build(source, GEOM, label_map, mode="disk", folder=tmp_path / "st")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]  # no .tmp left behind
    assert memory.mode == "memory" and disk.mode == "disk"
    assert memory.nbytes() == disk.nbytes() == estimate_bytes(len(source), GEOM, 3)
    for i in range(len(source)):
        ref = preprocess_sample(source.load(i), GEOM, label_map)
        for store in (memory, disk):
            got = store[i]
            assert torch.equal(got.image, ref.image) and got.image.dtype == torch.uint8
            assert torch.equal(got.mask, ref.mask) and torch.equal(got.lowres, ref.lowres)
            assert (got.resized, got.original) == (ref.resized, ref.original)
            assert store.keys[i] == image_key(ref.image)
    # a loader worker gets the disk store without its arrays, and re-opens the files
    clone = pickle.loads(pickle.dumps(disk))
    assert clone._arrays == {} and torch.equal(clone[3].image, memory[3].image)


def test_a_failed_build_leaves_nothing(source, label_map, tmp_path):
    class Broken:
        names = source.names

        def __len__(self):
            return len(source)

        def load(self, i):
            if i == 4:
                raise OSError("unreadable slice 4")
            return source.load(i)

    with pytest.raises(OSError, match="slice 4"):
        PreprocessedStore.build(Broken(), GEOM, label_map, mode="disk", folder=tmp_path / "st")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("norm", ["sam", "medsam"])
@pytest.mark.parametrize("augment", [None, AUG], ids=["plain", "augmented"])
def test_batch_finish_equals_item_finish(source, label_map, norm, augment):
    """The accelerator path (uint8 batch, finished at once) is the loader path, bit for bit."""
    spec = _spec(label_map, norm)
    store = PreprocessedStore.build(source, GEOM, label_map)
    per_item = SamSegmentationDataset(source, spec, augment, seed=5, store=store)
    raw = SamSegmentationDataset(source, spec, augment, seed=5, store=store,
                                 finish_in_loader=False)
    order = [7, 2, 9, 0, 4]
    for epoch in (0, 3):
        per_item.set_epoch(epoch)
        raw.set_epoch(epoch)
        batch = collate([raw[i] for i in order])
        assert batch["image_u8"].dtype == torch.uint8 and "pixel_values" not in batch
        done = finish_batch(batch, GEOM, norm, augment)
        assert set(done) == {"pixel_values", "labels", "original_size", "index", "host"}
        want = collate([per_item[i] for i in order])
        assert torch.equal(done["pixel_values"], want["pixel_values"])
        assert torch.equal(done["labels"], want["labels"])
    if augment is not None:  # the epoch changes the augmentation, not the item
        per_item.set_epoch(0)
        first = per_item[7]["pixel_values"]
        per_item.set_epoch(1)
        assert not torch.equal(first, per_item[7]["pixel_values"])


def test_cache_keys_travel_on_the_host(source, label_map):
    store = PreprocessedStore.build(source, GEOM, label_map)
    ds = SamSegmentationDataset(source, _spec(label_map), store=store, finish_in_loader=False,
                                cache_keys=True)
    batch = collate([ds[3], ds[1]])
    assert batch["host"].keys == [store.keys[3], store.keys[1]]
    undecoded = SamSegmentationDataset(source, _spec(label_map), cache_keys=True)
    assert undecoded[3]["host"].keys == [store.keys[3]]  # same key without a store
    assert SamSegmentationDataset(source, _spec(label_map))[3]["host"].keys is None


def test_masks_are_compact_and_map_back_to_labels():
    assert mask_dtype(3) == (torch.uint8, 255)
    assert mask_dtype(300) == (torch.int16, -1)
    stored = torch.tensor([[0, 2, 255]], dtype=torch.uint8)
    assert stored_to_labels(stored, 255).tolist() == [[0, 2, IGNORE_INDEX]]
    stored = torch.tensor([[0, 299, -1]], dtype=torch.int16)
    assert stored_to_labels(stored, -1).tolist() == [[0, 299, IGNORE_INDEX]]


def test_auto_mode_spills_to_disk_when_memory_is_short():
    one = estimate_bytes(1, SamGeometry(1024, 256), 3)
    assert one == 3 * 1024**2 + 1024**2 + 256**2 + 16  # ~4 MiB per 1024 px image
    n = 1000  # ~3.9 GiB
    assert choose_mode("auto", n, SamGeometry(1024, 256), 3, limit_gib=16) == "memory"
    assert choose_mode("auto", n, SamGeometry(1024, 256), 3, limit_gib=16,
                       processes_per_node=8) == "disk"
    assert choose_mode("off", n, SamGeometry(1024, 256), 3, limit_gib=16) == "off"


def test_workers_read_the_shared_store(source, label_map):
    """Two loader workers read the memory store (inherited, not rebuilt) and agree with one."""
    store = PreprocessedStore.build(source, GEOM, label_map, num_workers=2)
    ds = SamSegmentationDataset(source, _spec(label_map), AUG, seed=1, store=store)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    got = torch.cat([b["pixel_values"] for b in loader])
    want = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    assert torch.equal(got, want)
    assert np.isfinite(got.numpy()).all()



def test_persistent_workers_augment_with_the_current_epoch(source, label_map):
    """Workers keep their dataset copy across epochs; the sampler's (epoch, index) keys,
    not the copy's epoch, seed the augmentation (a stale copy would repeat epoch 0)."""
    from sam_medft.data.dataset import EpochSampler

    store = PreprocessedStore.build(source, GEOM, label_map)
    ds = SamSegmentationDataset(source, _spec(label_map), AUG, seed=4, store=store)
    sampler = EpochSampler(len(ds), seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=sampler, num_workers=2,
                                         persistent_workers=True, collate_fn=collate)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)  # the trainer also sets the main copy's epoch; not needed
        got = torch.cat([b["pixel_values"] for b in loader])
        keys = list(sampler)
        assert {e for e, _ in keys} == {epoch}
        assert torch.equal(got, torch.stack([ds[k]["pixel_values"] for k in keys]))
        seen.append(dict(zip([i for _, i in keys], got, strict=True)))
    assert not torch.equal(seen[0][3], seen[1][3])  # a new augmentation in the new epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_finish_on_the_gpu_matches_the_cpu(source, label_map):
    """The accelerator path on a real GPU: no host sync (the step queued before it keeps
    running), the same pixels up to float rounding of the resampling, the same labels but
    for nearest-neighbour ties (< 0.1% of pixels)."""
    from accelerate.utils import send_to_device

    store = PreprocessedStore.build(source, GEOM, label_map)
    raw = SamSegmentationDataset(source, _spec(label_map), AUG, seed=2, store=store,
                                 finish_in_loader=False)
    batch = collate([raw[i] for i in range(len(raw))])
    on_cpu = finish_batch(batch, GEOM, "sam", AUG)
    batch = send_to_device(batch, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a host sync in finishing would raise here
    try:
        on_gpu = finish_batch(batch, GEOM, "sam", AUG)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert on_gpu["pixel_values"].is_cuda and on_gpu["labels"].is_cuda
    torch.testing.assert_close(on_gpu["pixel_values"].cpu(), on_cpu["pixel_values"],
                               atol=1e-4, rtol=1e-4)
    assert (on_gpu["labels"].cpu() != on_cpu["labels"]).float().mean() < 1e-3
