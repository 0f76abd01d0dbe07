"""Prompt simulation: per-object prompts, geometry, batching through a real tiny SamModel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from sam_medft.config import PromptConfig
from sam_medft.data.prompts import (
    PAD_LABEL,
    PROMPT_KEYS,
    PromptSettings,
    collate_prompts,
    corrective_click,
    load_prompts_file,
    parse_box,
    parse_point,
    prompt_sets_from_entries,
    simulate_prompts,
    to_model_frame,
)
from sam_medft.data.transforms import IGNORE_INDEX, SamGeometry
from sam_medft.errors import SamMedftError
from sam_medft.models.registry import build_tiny
from sam_medft.tasks.prompted import prompt_settings

GEOM = SamGeometry(input_size=256, mask_size=64)


def scene() -> np.ndarray:
    """60x100 label map: two class-1 objects, one class-2 object touching the second one,
    one class-1 object cut by the image border."""
    lm = np.zeros((60, 100), np.int64)
    lm[5:20, 5:25] = 1
    lm[30:50, 60:90] = 1
    lm[30:50, 40:60] = 2  # touches the class-1 block at column 60
    lm[52:60, 0:10] = 1  # on the bottom-left border
    return lm


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def xy_in(mask: np.ndarray, xy: np.ndarray) -> bool:
    x, y = xy
    assert float(x).is_integer() and float(y).is_integer()
    return bool(mask[int(y), int(x)])


# ---- objects, points, boxes --------------------------------------------------------------------
def test_one_prompt_set_per_object_and_class_with_own_target():
    lm = scene()
    ps = simulate_prompts(lm, PromptSettings(mode="box"), rng())
    assert len(ps) == 4
    assert ps.class_ids.tolist() == [1, 1, 1, 2]
    # each target is one connected object of one class, never a union
    for t, c in zip(ps.targets, ps.class_ids, strict=True):
        assert t.dtype == bool and t.shape == lm.shape
        assert (lm[t] == c).all()
        assert ndimage.label(t, structure=np.ones((3, 3)))[1] == 1
    assert ps.targets.sum(0).max() == 1  # disjoint
    assert ps.targets.sum() == (lm > 0).sum()  # and together they cover every object


def test_two_class1_one_class2_gives_three():
    lm = np.zeros((32, 32), np.int64)
    lm[2:8, 2:8] = 1
    lm[20:28, 20:28] = 1
    lm[10:14, 2:30] = 2
    ps = simulate_prompts(lm, PromptSettings(mode="hybrid"), rng())
    assert len(ps) == 3 and sorted(ps.class_ids.tolist()) == [1, 1, 2]
    assert ps.points.shape == (3, 1, 2) and ps.boxes.shape == (3, 4)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 1e-6])
def test_points_are_in_the_object_interior(fraction):
    lm = scene()
    s = PromptSettings(mode="point", n_points=5, interior_fraction=fraction)
    for seed in range(3):
        ps = simulate_prompts(lm, s, rng(seed))
        assert ps.points.shape == (4, 5, 2) and ps.boxes is None
        assert (ps.point_labels == 1).all()
        for pts, t in zip(ps.points, ps.targets, strict=True):
            dist = ndimage.distance_transform_edt(np.pad(t, 1))[1:-1, 1:-1]
            values = dist[t]
            allowed = max(1, math.ceil(fraction * values.size))
            for xy in pts:
                assert xy_in(t, xy)
                # fewer than `allowed` object pixels are strictly more interior
                assert (values > dist[int(xy[1]), int(xy[0])]).sum() < allowed


def test_tiny_fraction_gives_the_most_interior_pixel():
    lm = np.zeros((40, 40), np.int64)
    lm[10:21, 4:15] = 3  # 11x11 square: centre (x=9, y=15)
    lm[0:9, 0:40] = 1  # touches the top border: the border counts as background
    ps = simulate_prompts(lm, PromptSettings(mode="point", interior_fraction=1e-6), rng())
    assert ps.class_ids.tolist() == [1, 3]
    assert ps.points[1, 0].tolist() == [9.0, 15.0]
    assert ps.points[0, 0, 1] == 4.0  # row 4 is the middle of rows 0..8, not row 0


def test_negative_points_are_outside_but_near_the_object():
    lm = scene()
    s = PromptSettings(mode="point", n_points=2, n_negative=3)
    ps = simulate_prompts(lm, s, rng(1))
    assert ps.points.shape == (4, 5, 2)
    assert ps.point_labels[:, :2].tolist() == [[1, 1]] * 4
    assert ps.point_labels[:, 2:].tolist() == [[0, 0, 0]] * 4
    for pts, t in zip(ps.points, ps.targets, strict=True):
        ys, xs = np.nonzero(t)
        for x, y in pts[2:]:
            assert not xy_in(t, (x, y))
            assert xs.min() - (np.ptp(xs) + 1) <= x <= xs.max() + (np.ptp(xs) + 1)
            assert ys.min() - (np.ptp(ys) + 1) <= y <= ys.max() + (np.ptp(ys) + 1)


def test_object_filling_the_image_gets_padding_negatives():
    ps = simulate_prompts(np.ones((8, 8), np.int64), PromptSettings("point", n_negative=2), rng())
    assert ps.point_labels.tolist() == [[1, PAD_LABEL, PAD_LABEL]]


def tight_box(t: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(t)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def test_boxes_are_tight_without_jitter_and_jittered_in_and_out_and_clipped():
    lm = scene()
    ps = simulate_prompts(lm, PromptSettings(mode="box", box_jitter=0.0), rng())
    for box, t in zip(ps.boxes, ps.targets, strict=True):
        np.testing.assert_array_equal(box, tight_box(t))  # contains the object, inclusive

    j = 0.2
    deltas = []
    for seed in range(20):
        ps = simulate_prompts(lm, PromptSettings(mode="box", box_jitter=j), rng(seed))
        for box, t in zip(ps.boxes, ps.targets, strict=True):
            tight = tight_box(t)
            extent = np.array([np.ptp(tight[[0, 2]]) + 1, np.ptp(tight[[1, 3]]) + 1] * 2)
            assert (box >= 0).all() and box[0] <= 99 and box[2] <= 99 and box[1] <= 59
            assert box[3] <= 59 and box[0] <= box[2] and box[1] <= box[3]
            assert (np.abs(box - tight) <= j * extent + 1e-4).all()
            deltas.append((box - tight) / extent)
    d = np.array(deltas)
    assert (d[:, 0] > 0.05).any() and (d[:, 0] < -0.05).any()  # moved in and out
    assert (d[:, 2] > 0.05).any() and (d[:, 2] < -0.05).any()
    border = d.reshape(20, 4, 4)[:, 2]  # the object on the bottom-left border
    assert (border[:, 0] >= 0).all() and (border[:, 3] <= 0).all()  # clipped at x=0, y=59


def test_same_seed_same_prompts_other_seed_different():
    lm = scene()
    s = PromptSettings(mode="hybrid", n_points=3, n_negative=1)
    a, b, c = (simulate_prompts(lm, s, rng(seed)) for seed in (7, 7, 8))
    for name in ("points", "point_labels", "boxes", "targets", "class_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.points, c.points)
    assert not np.array_equal(a.boxes, c.boxes)


@pytest.mark.parametrize("mode,k", [("point", 3), ("box", 0), ("hybrid", 3)])
def test_empty_mask_gives_no_prompts(mode, k):
    s = PromptSettings(mode=mode, n_points=2, n_negative=1)
    ps = simulate_prompts(np.zeros((20, 30), np.int64), s, rng())
    assert len(ps) == 0 and ps.points.shape == (0, k, 2) and ps.targets.shape == (0, 20, 30)
    assert (ps.boxes is None) == (mode == "point")
    # a class that is absent, and objects below min_object_area, give nothing either
    assert len(simulate_prompts(scene(), s, rng(), class_ids=[5])) == 0
    lm = np.zeros((20, 30), np.int64)
    lm[3, 3] = 1
    lm[10:14, 10:14] = 2
    ps = simulate_prompts(lm, PromptSettings(mode=mode, min_object_area=2), rng())
    assert ps.class_ids.tolist() == [2]


def test_object_cap_keeps_a_seeded_random_subset():
    lm = np.zeros((40, 40), np.int64)
    for i in range(4):
        for j in range(3):
            lm[i * 10 : i * 10 + 5, j * 10 : j * 10 + 5] = 1 + (i + j) % 2
    s = PromptSettings(mode="box", max_objects_per_image=5)
    assert (
        len(simulate_prompts(lm, PromptSettings(mode="box", max_objects_per_image=None), rng()))
        == 12
    )
    kept = []
    for seed in range(6):
        ps = simulate_prompts(lm, s, rng(seed))
        assert len(ps) == 5 and ps.targets.shape == (5, 40, 40)
        assert ps.targets.sum(0).max() == 1  # 5 different objects
        kept.append(tuple(ps.targets.reshape(5, -1).argmax(1)))
    assert len(set(kept)) > 1  # the subset depends on the seed
    assert kept[0] == tuple(simulate_prompts(lm, s, rng(0)).targets.reshape(5, -1).argmax(1))


def test_touching_same_class_objects_follow_connectivity():
    lm = np.zeros((10, 10), np.int64)
    lm[2:4, 2:4] = 1
    lm[4:6, 4:6] = 1  # diagonal neighbour
    assert len(simulate_prompts(lm, PromptSettings(connectivity=2), rng())) == 1
    assert len(simulate_prompts(lm, PromptSettings(connectivity=1), rng())) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mode="mask"),
        dict(mode="point", n_points=0),
        dict(interior_fraction=0.0),
        dict(box_jitter=-0.1),
        dict(max_objects_per_image=0),
        dict(n_negative=-1),
    ],
)
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(SamMedftError, match="prompts\\."):
        PromptSettings(**kwargs)


def test_settings_take_defaults_and_ranges_from_the_recipe_schema():
    """The recipe's `prompt:` section is the one home of the shared defaults and ranges."""
    assert prompt_settings(PromptConfig(mode="box")) == PromptSettings()
    with pytest.raises(SamMedftError, match="prompts.box_jitter=1.0 is invalid: it should be less"):
        PromptSettings(box_jitter=1.0)
    assert PromptSettings(mode="point", n_points="2").n_points == 2  # parsed as the schema does
    assert PromptSettings(mode="box", n_points=0).n_points == 0  # box mode places no points


# ---- model frame ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(60, 100), (600, 1000), (100, 37)])
def test_box_lands_on_the_same_object_in_the_model_frame(shape):
    h, w = shape
    lm = np.zeros(shape, np.int64)
    lm[h // 5 : h // 2, w // 2 : w * 4 // 5] = 1
    ps = simulate_prompts(lm, PromptSettings(mode="hybrid", box_jitter=0.0), rng())
    mf = to_model_frame(ps, GEOM, shape)
    resized = GEOM.mask_to_input(lm).numpy()
    ys, xs = np.nonzero(resized == 1)
    obj = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    box = mf.boxes[0].numpy()
    scale = GEOM.resized_shape(shape)[1] / w
    # the box corners sit on the object's first/last resized pixel (up to the resize rounding)
    assert (np.abs(box - obj) <= max(1.0, scale)).all(), (box, obj)
    # and the point (+0.5: the prompt encoder's pixel centre) is inside the resized object
    x, y = mf.points[0, 0].numpy() + 0.5
    assert resized[int(y), int(x)] == 1
    # targets: the object's own mask on the low-res grid, padding ignored
    np.testing.assert_array_equal(mf.targets[0].numpy(), GEOM.mask_to_lowres(lm).numpy())
    assert mf.targets.dtype == torch.int64 and set(mf.targets.unique().tolist()) <= {
        IGNORE_INDEX,
        0,
        1,
    }


# ---- batching through the real tiny SamModel ------------------------------------------------
@pytest.fixture(scope="module")
def sam3():
    torch.manual_seed(0)
    return build_tiny(num_classes=3)


def mixed_batch(mode: str) -> tuple[list, dict[str, torch.Tensor]]:
    """Three images with 0, 1 and 3 objects."""
    lm = scene()
    s = PromptSettings(mode=mode, n_points=2, n_negative=1)
    maps = [np.zeros((40, 40), np.int64), lm[:25], lm[25:]]
    sets = [
        to_model_frame(simulate_prompts(m, s, rng(i)), GEOM, m.shape) for i, m in enumerate(maps)
    ]
    assert [len(x) for x in sets] == [0, 1, 3]
    return sets, collate_prompts(sets, max_objects=8)


@pytest.mark.parametrize("mode", ["point", "box", "hybrid"])
def test_mixed_batch_collates_and_trains_without_nan(sam3, mode):
    sets, batch = mixed_batch(mode)
    valid = batch["prompt_valid"]
    assert valid.tolist() == [[False] * 3, [True, False, False], [True] * 3]
    assert batch["targets"].shape == (3, 3, 64, 64) and batch["targets"].dtype == torch.int64
    assert (batch["targets"][~valid] == IGNORE_INDEX).all()
    assert batch["class_ids"].tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 2]]
    if mode == "box":
        assert "input_points" not in batch
    else:
        assert batch["input_points"].shape == (3, 3, 3, 2)
        assert (batch["input_labels"][~valid] == PAD_LABEL).all()
    assert ("input_boxes" in batch) == (mode != "point")

    pixel_values = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    sam3.zero_grad()
    prompts = {k: batch[k] for k in PROMPT_KEYS if k in batch}
    out = sam3(pixel_values=pixel_values, **prompts, multimask_output=False)
    logits = out.pred_masks[:, :, 0]
    assert logits.shape == (3, 3, 64, 64) and torch.isfinite(logits).all()
    assert torch.isfinite(out.iou_scores).all()
    target = batch["targets"]
    keep = valid[..., None, None] & (target != IGNORE_INDEX)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], target[keep].float())
    loss.backward()
    grads = [p.grad for p in sam3.mask_decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    # padding does not leak: image 1's real slot gives the same mask alone
    with torch.no_grad():
        alone = collate_prompts([sets[1]], max_objects=8)
        out1 = sam3(
            pixel_values=pixel_values[1:2],
            **{k: alone[k] for k in PROMPT_KEYS if k in alone},
            multimask_output=False,
        )
    torch.testing.assert_close(
        out1.pred_masks[0, 0], out.pred_masks[1, 0].detach(), atol=1e-4, rtol=1e-4
    )


def test_static_collate_and_its_checks():
    sets, _ = mixed_batch("hybrid")
    batch = collate_prompts(sets, max_objects=5, static=True)
    assert batch["input_boxes"].shape == (3, 5, 4) and batch["prompt_valid"].sum() == 4
    with pytest.raises(ValueError, match="max_objects"):
        collate_prompts(sets, max_objects=2)
    ps = simulate_prompts(scene(), PromptSettings(mode="box"), rng())
    with pytest.raises(ValueError, match="model-frame"):
        collate_prompts([ps], max_objects=8)


# ---- corrective clicks ---------------------------------------------------------------------
def test_corrective_click_targets_the_largest_error_with_the_right_label():
    target = np.zeros((50, 50), bool)
    target[10:40, 10:40] = True
    assert corrective_click(target, target, rng()) is None

    pred = target.copy()
    pred[15:26, 15:26] = False  # 11x11 hole: false negative, centre (20, 20)
    pred[0:3, 45:48] = True  # small false positive
    x, y, label = corrective_click(pred, target, rng())
    assert (x, y, label) == (20.0, 20.0, 1)

    pred = target.copy()
    pred[40:50, 0:50] = True  # 10x50 false-positive band below the object
    pred[12:14, 12:14] = False  # small false negative
    x, y, label = corrective_click(pred, target, rng())
    assert label == 0 and pred[int(y), int(x)] and not target[int(y), int(x)]
    assert y in (44.0, 45.0)  # the band's middle rows (the image border is background)

    # seeded among equally interior pixels, and always inside the error
    a = [
        corrective_click(np.zeros((20, 20), bool), np.ones((20, 20), bool), rng(s))
        for s in range(5)
    ]
    assert all(lbl == 1 for _, _, lbl in a)
    assert {(x, y) for x, y, _ in a} <= {(9.0, 9.0), (9.0, 10.0), (10.0, 9.0), (10.0, 10.0)}


# ---- user prompts file ---------------------------------------------------------------------
IMAGES = {"a.png": (60, 100), "b.png": (32, 32)}


def write(tmp_path, content) -> str:
    p = tmp_path / "prompts.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


def test_prompts_file_roundtrip_and_grouping(tmp_path, sam3):
    path = write(
        tmp_path,
        {
            "a.png": [
                {"label": 1, "box": [10, 5, 40, 30]},
                {"label": "tumour", "points": [[50, 20], [3, 3]], "point_labels": [1, 0]},
                {"label": 2, "box": [0, 0, 100, 60], "points": [[99.5, 59.5]]},
                {"label": 2, "points": [[1, 1]]},
            ],
            "b.png": [],
        },
    )
    got = load_prompts_file(path, IMAGES, class_names=["background", "tumour", "cyst"])
    assert got["b.png"] == []
    a = got["a.png"]
    assert a[0] == {"label": 1, "box": [10.0, 5.0, 40.0, 30.0], "points": [], "point_labels": []}
    assert a[1]["label"] == 1 and a[1]["point_labels"] == [1, 0]
    assert a[3]["point_labels"] == [1]
    groups = prompt_sets_from_entries(a)
    assert [idx for idx, _ in groups] == [[1, 3], [0], [2]]  # points / box / both
    pts = groups[0][1]
    assert pts.points.shape == (2, 2, 2) and pts.point_labels.tolist() == [[1, 0], [1, PAD_LABEL]]
    # each group is one real forward pass at inference (no targets)
    emb = None
    for _, ps in groups:
        batch = collate_prompts([to_model_frame(ps, GEOM, IMAGES["a.png"])], max_objects=8)
        assert "targets" not in batch
        with torch.no_grad():
            if emb is None:
                emb = sam3.get_image_embeddings(torch.zeros(1, 3, 256, 256))
            out = sam3(
                image_embeddings=emb,
                **{k: batch[k] for k in PROMPT_KEYS if k in batch},
                multimask_output=False,
            )
        assert out.pred_masks.shape[1] == len(ps) and torch.isfinite(out.pred_masks).all()


@pytest.mark.parametrize(
    "content,match",
    [
        ({"c.png": []}, r"unknown image 'c.png'; known images: a.png, b.png"),
        ({"a.png": [{"label": 1, "box": [0, 0, 101, 10]}]}, r"'a.png'.*outside the 100x60"),
        ({"a.png": [{"label": 1, "box": [-1, 0, 10, 10]}]}, r"outside"),
        ({"a.png": [{"label": 1, "box": [20, 0, 10, 10]}]}, r"x0 < x1"),
        ({"a.png": [{"label": 1, "box": [10, 0, 10, 10]}]}, r"x0 < x1"),
        ({"a.png": [{"label": 1, "box": [1, 2, 3]}]}, r"4 finite numbers"),
        ({"b.png": [{"label": 1, "points": [[32, 5]]}]}, r"'b.png'.*point \[32, 5\] lies outside"),
        ({"b.png": [{"label": 1, "points": [[3, 5]], "point_labels": [2]}]}, r"point_labels"),
        ({"b.png": [{"label": 1, "point_labels": [1]}]}, r"without \"points\""),
        ({"b.png": [{"label": 1, "bbox": [0, 0, 5, 5]}]}, r"unknown key\(s\) \['bbox'\]"),
        ({"b.png": [{"box": [0, 0, 5, 5]}]}, r"missing \"label\""),
        ({"b.png": [{"label": 0, "box": [0, 0, 5, 5]}]}, r"label 0 must be a class id >= 1"),
        ({"b.png": [{"label": "liver", "box": [0, 0, 5, 5]}]}, r"unknown class name 'liver'"),
        ({"b.png": [{"label": 3, "box": [0, 0, 5, 5]}]}, r"label 3 is out of range"),
        ({"b.png": [{"label": 1}]}, r"give a \"box\""),
        ({"b.png": {"label": 1}}, r"needs a list of prompts"),
        ([1, 2], r"top level must be an object"),
        ('{"a.png": [\n  {"label": 1,, "box": [0,0,1,1]}]}', r"invalid JSON at line 2, column"),
    ],
)
def test_prompts_file_errors(tmp_path, content, match):
    path = write(tmp_path, content)
    with pytest.raises(SamMedftError, match=match) as e:
        load_prompts_file(path, IMAGES, class_names=["background", "tumour", "cyst"])
    assert "prompts.json" in str(e.value)


def test_prompts_file_missing_and_many_known_images(tmp_path):
    with pytest.raises(SamMedftError, match="does not exist"):
        load_prompts_file(tmp_path / "nope.json", IMAGES)
    many = {f"img{i:02d}.png": (8, 8) for i in range(9)}
    with pytest.raises(SamMedftError, match=r"img04.png, \.\.\. \(9 in all\)"):
        load_prompts_file(write(tmp_path, {"x.png": []}), many)


def test_cli_box_and_point_parsing():
    assert parse_box("1, 2,30,40", (60, 100)) == [1.0, 2.0, 30.0, 40.0]
    assert parse_point("99.5,0", (60, 100)) == [99.5, 0.0]
    assert parse_box("0,0,5000,5000") == [0.0, 0.0, 5000.0, 5000.0]  # no size: no bounds check
    for text, size, match in [
        ("1,2,3", None, "4 comma-separated"),
        ("a,b,c,d", None, "numbers"),
        ("5,0,5,9", None, "x0 < x1"),
        ("0,0,101,10", (60, 100), "outside"),
        ("nan,0,1,1", None, "finite"),
    ]:
        with pytest.raises(SamMedftError, match=match) as e:
            parse_box(text, size)
        assert "--box" in str(e.value)
    for text, size, match in [
        ("1", None, "2 comma-separated"),
        ("100,3", (60, 100), "outside"),
        ("3,-1", (60, 100), "outside"),
    ]:
        with pytest.raises(SamMedftError, match=match) as e:
            parse_point(text, size)
        assert "--point" in str(e.value)
