"""One sample path, one prediction pipeline: what training, eval and prediction feed the
model and what they predict are the same, bit for bit, whichever route an image takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sam_medft
from sam_medft.config import DataConfig, load_recipe
from sam_medft.data.dataset import ModelFrameSpec, SamSegmentationDataset, collate
from sam_medft.data.labels import LabelMap
from sam_medft.data.model_frame import finish_batch
from sam_medft.data.preprocessed import PreprocessedStore
from sam_medft.data.sources import build_splits
from sam_medft.data.synthetic import SYNTHETIC_LABELS, write_synthetic
from sam_medft.data.transforms import SamGeometry
from sam_medft.eval.evaluate import iter_cases, label_map_of
from sam_medft.infer.pipeline import Images, model_batches
from sam_medft.infer.predict import predict_paths, predict_paths_with_prompts
from sam_medft.infer.prompted import check_prompts, predict_prompted

GEOM = SamGeometry(96, 24)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DataConfig:
    """Synthetic slices of several sizes (square and not: padding right or at the bottom)."""
    root = tmp_path_factory.mktemp("syn")
    write_synthetic(root, n_train=8, n_val=2, n_test=0, size=64)
    return DataConfig(source="folder", folder=root, labels=dict(SYNTHETIC_LABELS), val_fraction=0)


def _training_pixels(source, geometry: SamGeometry, norm: str) -> list[torch.Tensor]:
    """What training feeds the model for each sample, by both of its routes (finished per
    item in the loader, and from the store finished as a batch on the accelerator); the
    two must agree before either is compared with prediction."""
    spec = ModelFrameSpec(geometry, norm, LabelMap(dict(SYNTHETIC_LABELS)))
    per_item = [SamSegmentationDataset(source, spec)[i]["pixel_values"] for i in range(len(source))]
    store = PreprocessedStore.build(source, geometry, spec.label_map)
    raw = SamSegmentationDataset(source, spec, store=store, finish_in_loader=False)
    batch = finish_batch(collate([raw[i] for i in range(len(source))]), geometry, norm)
    assert torch.equal(batch["pixel_values"], torch.stack(per_item))
    return per_item


@pytest.mark.parametrize("norm", ["sam", "medsam"])
def test_training_and_prediction_feed_the_model_the_same_pixels(data, norm):
    """No train/inference skew: prediction's pipeline (files decoded in loader workers,
    uint8 batches normalised at once) gives training's normalised pixels bit for bit. The
    float path prediction used before (normalised without rounding to uint8) differs by up
    to half a grey level, so this fails if a route stops rounding where training does."""
    source = build_splits(data)["train"]
    want = _training_pixels(source, GEOM, norm)
    paths = [source.image_path(i) for i in range(len(source))]
    got = torch.cat([b.pixels for b in model_batches(
        Images(paths, data.intensity), GEOM, norm, "cpu", batch_size=3, num_workers=2)])
    assert len({tuple(Image.open(p).size) for p in paths}) > 1  # square and non-square
    assert torch.equal(got, torch.stack(want))
    assert (got != 0).any() and torch.isfinite(got).all()


def test_the_python_api_feeds_the_model_training_pixels(untrained_run, data):
    """`FineTunedSam.pixel_batch` (the Python API's and `embed_image`'s batch) is the same
    pipeline: arrays decoded like the training data give training's pixels."""
    predictor = sam_medft.load(untrained_run("box"), device="cpu")
    source = build_splits(data)["train"]
    want = _training_pixels(source, predictor.geometry, predictor.meta.normalization)
    pixels, originals = predictor.pixel_batch([source.load(i).image for i in range(len(source))])
    assert torch.equal(pixels, torch.stack(want))
    assert originals == [source.load(i).image.shape[:2] for i in range(len(source))]


def test_eval_scores_what_predict_writes(demo_run, tmp_path):
    """Eval's automatic predictions are `predict_paths`'s label maps for the same images."""
    predictor = sam_medft.load(demo_run, device="cpu")
    source = build_splits(load_recipe(demo_run / "recipe.yaml").data)["test"]
    paths = [Path(source.image_path(i)) for i in range(len(source))]
    written = predict_paths(predictor, paths, tmp_path / "out", batch_size=4, num_workers=2,
                            show_progress=False)
    fg = [1, 2]
    cases = list(iter_cases(predictor, source, label_map_of(predictor.meta), None, batch_size=4))
    assert [c.index for c in cases] == list(range(len(source)))
    for case, png in zip(cases, written, strict=True):
        labels = np.asarray(Image.open(png))
        assert np.array_equal(case.predictions["automatic"],
                              np.stack([labels == c for c in fg])), case.name
    assert any(c.predictions["automatic"].any() for c in cases)  # it finds organs


def _boxes(reference: np.ndarray, classes) -> list[dict]:
    entries = []
    for c in classes:
        ys, xs = np.nonzero(reference == c)
        if len(ys):
            entries.append({"label": int(c), "box": [int(xs.min()), int(ys.min()),
                                                     int(xs.max()), int(ys.max())]})
    return entries


def test_prompted_predict_equals_the_batched_pipeline(box_run, tmp_path):
    """`predict_paths_with_prompts --box` on one image equals the pipeline run on a batch of
    images (one encoder call for all, each image's boxes decoded against its embeddings),
    and the Python API's `predict(image, prompts=...)`."""
    predictor = sam_medft.load(box_run, device="cpu")
    recipe = load_recipe(box_run / "recipe.yaml")
    source = build_splits(recipe.data)["test"]
    lm = LabelMap(recipe.data.labels)
    n = min(4, len(source))
    paths = [Path(source.image_path(i)) for i in range(n)]
    refs = [lm.apply(source.load(i).raw_mask) for i in range(n)]
    entries = [check_prompts(_boxes(r, [1, 2]), r.shape, predictor.class_names) for r in refs]
    batched = [d.decoded for d in predict_prompted(predictor, paths, entries, batch_size=n)]
    painted = 0
    for k, path in enumerate(paths):
        for e in entries[k]:  # one CLI box per run, for each class of the image
            box = ",".join(map(str, e["box"]))
            out = tmp_path / f"{k}_{e['label']}"
            [png] = predict_paths_with_prompts(predictor, [path], out, box=f"{e['label']}:{box}",
                                               show_progress=False)
            single = next(predict_prompted(predictor, [path], [[e]])).decoded
            assert np.array_equal(np.asarray(Image.open(png)), single)
            painted += int(single.any())
        assert np.array_equal(predictor.predict(path, prompts=entries[k]), batched[k])
    assert painted > 0  # the boxes segment something, so the comparisons can fail


def test_prompts_file_route_is_the_batched_pipeline(box_run, tmp_path):
    """A prompts.json over several images (embedded a batch at a time) gives the label maps
    of each image predicted on its own."""
    predictor = sam_medft.load(box_run, device="cpu")
    recipe = load_recipe(box_run / "recipe.yaml")
    source = build_splits(recipe.data)["test"]
    lm = LabelMap(recipe.data.labels)
    folder = tmp_path / "in"
    folder.mkdir()
    prompts = {}
    for i in range(min(4, len(source))):
        name = f"{i}.png"
        Image.open(source.image_path(i)).save(folder / name)
        prompts[name] = _boxes(lm.apply(source.load(i).raw_mask), [1, 2])
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    written = predict_paths_with_prompts(predictor, [folder], tmp_path / "out",
                                         prompts_file=tmp_path / "prompts.json", batch_size=3,
                                         show_progress=False)
    for png in written:
        alone = predictor.predict(folder / png.name, prompts=prompts[png.name])
        assert np.array_equal(np.asarray(Image.open(png)), alone), png.name
