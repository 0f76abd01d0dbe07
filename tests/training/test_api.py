"""`sam_medft.train(...)`: the Python face of the trainer, with data in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from datasets import Dataset
from PIL import Image
from safetensors.numpy import load_file

import sam_medft
from sam_medft.data.lists import read_pair_list
from sam_medft.data.synthetic import SYNTHETIC_LABELS, write_synthetic
from sam_medft.errors import SamMedftError

SHORT = {"train": {"max_steps": 4, "batch_size": 2, "eval_every": 2, "save_every": 100,
                   "log_with": "none"}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_data")
    write_synthetic(root, n_train=6, n_val=2, n_test=0, size=64, seed=3)
    return root


def _pairs(root, split):
    return [(Image.open(p.image), Image.open(p.mask)) for p in read_pair_list(root / f"{split}.csv")]


def _weights(run_dir):
    return load_file(str(run_dir / "adapter" / "trainable_model.safetensors"))


def test_in_memory_dataset_trains_as_the_same_files_do(files, tmp_path):
    """A `datasets.Dataset` in memory takes the one sample path: the adapter equals the one
    trained from the same images as list files (same order, same seed), bit for bit."""
    def table(split):
        pairs = _pairs(files, split)
        return Dataset.from_dict({"image": [i for i, _ in pairs], "mask": [m for _, m in pairs]})

    from_memory = sam_medft.train("demo", table("train"), table("val"), output_dir=tmp_path,
                                  name="memory", **SHORT)
    from_files = sam_medft.train(
        "demo", output_dir=tmp_path, name="files", **SHORT,
        data={"source": "lists", "train_list": files / "train.csv",
              "val_list": files / "val.csv", "img_folder": files, "mask_folder": files,
              "labels": dict(SYNTHETIC_LABELS)})
    assert from_memory.steps == from_files.steps == 4
    a, b = _weights(from_memory.run_dir), _weights(from_files.run_dir)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert from_memory.history == from_files.history
    recipe = yaml.safe_load((from_memory.run_dir / "recipe.yaml").read_text())
    assert recipe["data"]["source"] == "python" and recipe["data"]["labels"]
    meta = json.loads((from_memory.run_dir / "adapter" / "sam_medft.json").read_text())
    assert meta["data_description"].startswith("data handed over in Python")


def test_list_of_pairs_without_validation_and_override_spellings(files, tmp_path):
    result = sam_medft.train("recipes/demo.yaml", _pairs(files, "train"), output_dir=tmp_path,
                             name="pairs", train__max_steps=2, **{"train.batch_size": 2},
                             train={"log_with": "none"})
    assert result.steps == 2 and result.best_step == 2  # no validation: the last step's adapter
    assert (result.run_dir / "adapter" / "sam_medft.json").is_file()
    assert sam_medft.load(result.run_dir, device="cpu").predict(np.zeros((40, 50, 3))).shape == (40, 50)


def test_mistakes_are_one_message_before_training(files, tmp_path):
    with pytest.raises(SamMedftError, match="val_data needs train_data"):
        sam_medft.train("demo", val_data=_pairs(files, "val"), output_dir=tmp_path)
    with pytest.raises(SamMedftError, match=r"train_data\[0\]: item is tuple"):
        sam_medft.train("demo", [(1, 2, 3)], output_dir=tmp_path, name="bad", **SHORT)
    with pytest.raises(SamMedftError, match="max_stepz"):
        sam_medft.train("demo", _pairs(files, "train"), output_dir=tmp_path, train__max_stepz=1)
    assert not (tmp_path / "bad" / "adapter").exists()
