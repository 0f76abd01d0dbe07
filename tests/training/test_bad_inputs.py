"""Every mistake a user can make fails before training with one clear message, and the run
folder holds nothing but its marker and the log afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam_medft.config import load_recipe
from sam_medft.data.synthetic import write_synthetic
from sam_medft.errors import SamMedftError
from sam_medft.training.trainer import train


@pytest.fixture
def study_data(tmp_path):
    root = tmp_path / "data"
    write_synthetic(root, n_train=6, n_val=2, n_test=2, size=64, seed=1)
    return root


def _recipe(tmp_path, root, *extra):
    return load_recipe(None, [
        f"output_dir={tmp_path / 'runs'}", "name=bad", "model.name=tiny",
        "data.source=lists", f"data.img_folder={root}", f"data.mask_folder={root}",
        f"data.train_list={root / 'train.csv'}", f"data.val_list={root / 'val.csv'}",
        "data.labels={0: background, 128: organ_a, 255: organ_b}",
        "train.max_steps=2", "train.log_with=none", *extra])


def _only_log_left(tmp_path):
    run = tmp_path / "runs" / "bad"
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    # the run marker says the folder is sam_medft's (so --overwrite may empty it later)
    assert left == [".sam_medft_run", "logs", "logs/train.log"], left


def _first_image(root):
    return sorted((root / "images").glob("train_*.png"))[0]


def _first_mask(root):
    return sorted((root / "masks").glob("train_*.png"))[0]


def test_missing_file(tmp_path, study_data):
    _first_image(study_data).unlink()
    with pytest.raises(SamMedftError, match="train_000.png"):
        train(_recipe(tmp_path, study_data))
    _only_log_left(tmp_path)


def test_corrupt_png(tmp_path, study_data):
    path = _first_image(study_data)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(SamMedftError, match="train_000.png"):
        train(_recipe(tmp_path, study_data))
    _only_log_left(tmp_path)


def test_image_mask_size_mismatch(tmp_path, study_data):
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(_first_mask(study_data))
    with pytest.raises(SamMedftError, match="train_000.png") as e:
        train(_recipe(tmp_path, study_data))
    assert "size" in str(e.value)
    _only_log_left(tmp_path)


def test_empty_list(tmp_path, study_data):
    (study_data / "train.csv").write_text("")
    with pytest.raises(SamMedftError, match="train.csv"):
        train(_recipe(tmp_path, study_data))
    _only_log_left(tmp_path)


def test_label_value_not_in_mapping(tmp_path, study_data):
    mask = np.array(Image.open(_first_mask(study_data)))
    mask[0, 0] = 77
    Image.fromarray(mask).save(_first_mask(study_data))
    with pytest.raises(SamMedftError) as e:
        train(_recipe(tmp_path, study_data))
    assert "77" in str(e.value) and "train_000.png" in str(e.value)
    _only_log_left(tmp_path)


def test_unknown_model_while_offline(tmp_path, study_data, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import by the client
    with pytest.raises(SamMedftError) as e:
        train(_recipe(tmp_path, study_data, "model.name=nobody/no-such-sam"))
    assert "nobody/no-such-sam" in str(e.value) and "model.name=tiny" in str(e.value)
    _only_log_left(tmp_path)


def test_misspelt_registry_name(tmp_path, study_data):
    with pytest.raises(SamMedftError, match="sam-vit-base"):
        train(_recipe(tmp_path, study_data, "model.name=sam-vit-bse"))
    _only_log_left(tmp_path)
