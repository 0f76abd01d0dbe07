"""Prompted prediction without ground truth: prompts.json, --box/--point, checks, overlaps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import sam_medft
from sam_medft.cli import app
from sam_medft.errors import SamMedftError
from sam_medft.infer.pipeline import to_image
from sam_medft.infer.predict import predict_paths_with_prompts
from sam_medft.infer.prompted import paint_labels

runner = CliRunner()


@pytest.fixture(scope="module")
def case(box_run: Path, tmp_path_factory):
    """A non-square synthetic test image copied into a folder, its class map and organ boxes."""
    from sam_medft.config import load_recipe
    from sam_medft.data.labels import LabelMap
    from sam_medft.data.sources import build_splits

    recipe = load_recipe(box_run / "recipe.yaml")
    src = build_splits(recipe.data)["test"]
    i = max(range(len(src)), key=lambda j: abs(np.subtract(*src.load(j).raw_mask.shape)))
    sample = src.load(i)
    ref = LabelMap(recipe.data.labels).apply(sample.raw_mask)
    folder = tmp_path_factory.mktemp("prompted") / "in"
    folder.mkdir()
    shutil.copy(src.image_path(i), folder / "slice.png")
    boxes = {}
    for c in (1, 2):
        ys, xs = np.nonzero(ref == c)
        boxes[c] = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    return folder, ref, boxes


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_prompts_file_gives_label_map_at_original_size(box_run, case, tmp_path):
    folder, ref, boxes = case
    prompts = tmp_path / "prompts.json"
    centre = [(boxes[2][0] + boxes[2][2]) / 2, (boxes[2][1] + boxes[2][3]) / 2]
    entries = [
        {"label": "organ_a", "box": boxes[1]},
        {"label": 2, "box": boxes[2], "points": [centre]},
    ]
    prompts.write_text(json.dumps({"slice.png": entries}))
    out = tmp_path / "out"
    written = predict_paths_with_prompts(
        str(box_run), [folder], out, prompts_file=prompts, show_progress=False
    )
    assert written == [out / "slice.png"]
    labels = np.asarray(Image.open(written[0]))
    assert labels.shape == ref.shape and ref.shape[0] != ref.shape[1]
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 2).any()
    # the tiny model trained 40 steps finds the organs (it does not yet tell them apart by
    # the box: that is what the geometry check below is for)
    assert _dice(labels > 0, ref > 0) > 0.5
    legend = json.loads((out / "legend.json").read_text())
    assert legend["1"]["name"] == "organ_a"


def test_box_geometry_matches_transformers_processor(box_run, case):
    """A box in original pixels goes through our model-frame conversion and un-padding
    exactly like transformers' SamProcessor (same pixels in): identical logits, while a box
    moved by one pixel changes them, so the check can fail."""
    from transformers import SamImageProcessorPil, SamProcessor

    from sam_medft.data.prompts import prompt_sets_from_entries
    from sam_medft.infer.prompted import decode, embed_image
    from sam_medft.tasks.prompted import select_masks

    folder, ref, boxes = case
    predictor = sam_medft.load(box_run, device="cpu")
    array = to_image(folder / "slice.png", predictor.intensity)
    emb, original = embed_image(predictor, array)

    def ours(box):
        entry = {"label": 1, "box": box, "points": [], "point_labels": []}
        [(_, ps)] = prompt_sets_from_entries([entry])
        return decode(predictor, emb, ps, original).logits[0]

    g = predictor.geometry
    processor = SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": g.input_size},
            pad_size={"height": g.input_size, "width": g.input_size},
            mask_size={"longest_edge": g.mask_size},
            mask_pad_size={"height": g.mask_size, "width": g.mask_size},
        )
    )
    box = [float(v) for v in boxes[1]]
    inputs = processor(
        images=Image.open(folder / "slice.png").convert("RGB"),
        input_boxes=[[box]],
        return_tensors="pt",
    )
    pixels, _ = predictor.pixel_batch([array])
    with torch.no_grad():
        out = predictor.model(
            pixel_values=pixels,
            input_boxes=inputs["input_boxes"].float(),
            multimask_output=predictor.multimask,
        )
    low = select_masks(out.pred_masks, out.iou_scores)[:, :, None]
    theirs = processor.post_process_masks(
        low, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
    )[0][0, 0]
    mine = ours(box)
    assert mine.shape == ref.shape
    assert torch.allclose(mine, theirs, atol=1e-5)
    moved = ours([v + 1 for v in box])
    assert (moved - mine).abs().max() > 100 * (mine - theirs).abs().max() + 1e-4


def test_python_api_prompts_and_cli_box(box_run, case, tmp_path):
    folder, ref, boxes = case
    predictor = sam_medft.load(box_run, device="cpu")
    image = np.asarray(Image.open(folder / "slice.png"))
    labels = predictor.predict(image, prompts=[{"label": 1, "box": boxes[1]}])
    assert labels.shape == ref.shape and set(np.unique(labels)) <= {0, 1}
    assert (labels[ref == 1] == 1).mean() > 0.5  # the prompted organ is found
    box = ",".join(map(str, boxes[2]))
    res = runner.invoke(
        app,
        ["predict", str(box_run), str(folder / "slice.png"), "--box", f"organ_b:{box}",
         "--out", str(tmp_path / "cli")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cli = np.asarray(Image.open(tmp_path / "cli" / "slice.png"))
    assert cli.shape == ref.shape and set(np.unique(cli)) <= {0, 2} and (cli == 2).any()
    # several classes and no label: the error says how to name one
    with pytest.raises(SamMedftError, match="organ_a:x0,y0,x1,y1"):
        predict_paths_with_prompts(predictor, [folder / "slice.png"], tmp_path / "x", box=box)


@pytest.fixture
def weightless_run(box_run: Path, tmp_path: Path) -> Path:
    """The box run with its weights removed: any attempt to load the model would fail."""
    run = tmp_path / "run"
    shutil.copytree(box_run / "adapter", run / "adapter")
    for f in (run / "adapter").glob("*.safetensors"):
        f.unlink()
    return run


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"slice.png": [{"label": 1, "box": [5, 5, 500, 40]}]}, "outside the"),
        (
            {"other.png": [{"label": 1, "box": [5, 5, 20, 20]}]},
            "unknown image 'other.png'.*slice.png",
        ),
        ({"slice.png": [{"label": "liver", "box": [5, 5, 20, 20]}]}, "unknown class name 'liver'"),
        ({"slice.png": [{"label": 3, "points": [[5, 5]]}]}, "label 3 is out of range"),
    ],
)
def test_bad_prompts_fail_before_the_model_loads(weightless_run, case, tmp_path, prompts, message):
    folder, _, _ = case
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    with pytest.raises(SamMedftError, match=message):
        predict_paths_with_prompts(
            str(weightless_run), [folder], tmp_path / "out", prompts_file=path, show_progress=False
        )
    assert not (tmp_path / "out").exists()


def test_flag_errors(weightless_run, case, tmp_path):
    folder, _, _ = case
    other = folder.parent / "second"
    other.mkdir(exist_ok=True)
    shutil.copy(folder / "slice.png", other / "b.png")
    run = str(weightless_run)
    with pytest.raises(SamMedftError, match="apply to one image"):
        predict_paths_with_prompts(run, [folder, other], tmp_path, box="1:1,1,9,9")
    with pytest.raises(SamMedftError, match="different labels"):
        predict_paths_with_prompts(run, [folder], tmp_path, box="1:1,1,9,9", points=["2:3,3"])
    with pytest.raises(SamMedftError, match="no prompts"):
        predict_paths_with_prompts(run, [folder], tmp_path)
    with pytest.raises(SamMedftError, match="--box"):
        predict_paths_with_prompts(run, [folder], tmp_path, box="1:9,9,1,1")


def test_automatic_run_refuses_prompts(untrained_run, case, tmp_path):
    folder, _, boxes = case
    run = untrained_run("none")
    with pytest.raises(SamMedftError, match="automatic mode.*not prompt tokens"):
        predict_paths_with_prompts(str(run), [folder], tmp_path, box="1:1,1,9,9")
    predictor = sam_medft.load(run, device="cpu")
    with pytest.raises(SamMedftError, match="automatic mode"):
        predictor.predict(np.zeros((20, 30), np.uint8), prompts=[{"label": 1, "box": boxes[1]}])


def test_overlaps_go_to_the_highest_logit():
    logits = torch.full((3, 4, 5), -1.0)
    logits[0, :, :3] = 2.0  # class 1 covers columns 0-2
    logits[1, :, 2:] = 1.0  # class 2 covers columns 2-4, weaker at column 2
    logits[2, 0, 4] = 5.0  # a second class-1 object, confident at one pixel
    labels = paint_labels(logits, [1, 2, 1], (4, 5))
    expected = np.array([[1, 1, 1, 2, 1]] + [[1, 1, 1, 2, 2]] * 3)
    assert np.array_equal(labels, expected)
    assert paint_labels(torch.zeros((0, 4, 5)), [], (4, 5)).shape == (4, 5)
    assert not paint_labels(torch.full((1, 4, 5), -0.5), [2], (4, 5)).any()


@pytest.mark.parametrize("family", ["sam", "sam_hq"])
def test_decode_equals_a_plain_forward(family):
    """Cached embeddings + objects on the batch axis (what decode does, for refinement) give
    the same masks as SamModel/SamHQModel on pixels with the prompts on the point_batch axis."""
    from transformers import SamConfig, SamHQConfig, SamHQModel, SamModel

    from sam_medft.data.prompts import PromptSet
    from sam_medft.infer.predict import FineTunedSam
    from sam_medft.infer.prompted import decode, embed_image
    from sam_medft.models.registry import TINY_CONFIG
    from sam_medft.runs import AdapterMeta
    from sam_medft.tasks.prompted import select_masks

    torch.manual_seed(0)
    if family == "sam_hq":  # its HQ head reads the 64-wide tiny encoder features
        model = SamHQModel(SamHQConfig(**TINY_CONFIG, mask_decoder_config={"vit_dim": 64}))
    else:
        model = SamModel(SamConfig(**TINY_CONFIG))
    meta = AdapterMeta("tiny", 2, ["background", "thing"], "vanilla", "decoder", "sam", 256, 64,
                       mask_outputs=3, prompt_mode="hybrid")  # fmt: skip
    predictor = FineTunedSam(model, meta, device="cpu")
    image = np.random.default_rng(0).uniform(0, 255, (90, 120, 3)).astype(np.float32)
    ps = PromptSet(
        points=np.array([[[30.0, 40.0]], [[90.0, 20.0]]], np.float32),
        point_labels=np.ones((2, 1), np.int64),
        boxes=np.array([[10, 20, 60, 70], [70, 5, 115, 50]], np.float32),
        targets=None,
        class_ids=np.array([1, 1]),
    )
    emb, original = embed_image(predictor, image)
    ours = decode(predictor, emb, ps, original)
    pixels, _ = predictor.pixel_batch([image])
    g = predictor.geometry
    with torch.no_grad():
        out = model(
            pixel_values=pixels,
            input_points=g.coords_to_model(ps.points, original)[None],
            input_labels=torch.ones((1, 2, 1), dtype=torch.int64),
            input_boxes=g.coords_to_model(ps.boxes, original)[None],
            multimask_output=True,
        )
    plain = select_masks(out.pred_masks, out.iou_scores)[0]
    assert torch.allclose(ours.lowres, plain, atol=1e-4)
    assert ours.logits.shape == (2, *original)
    # a previous mask fed back changes the answer (the refinement input is used)
    again = decode(predictor, emb, ps, original, input_masks=ours.lowres)
    assert not torch.allclose(again.lowres, ours.lowres, atol=1e-3)


@pytest.mark.parametrize("overwrite", [False, True])
def test_prompted_out_in_the_input_folder_is_refused(weightless_run, case, overwrite):
    """The prompted route keeps the input scans too: --out inside the input folder is refused
    before the model loads, whatever --overwrite says, and the scans are unchanged."""
    folder, _, _ = case
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(SamMedftError, match="is the input folder") as e:
        predict_paths_with_prompts(str(weightless_run), [folder], folder, box="1:1,1,9,9",
                                   overwrite=overwrite, show_progress=False)
    assert "--overwrite" not in str(e.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_prompted_overlays_draw_the_prompts(box_run, case, tmp_path):
    """--overlays on the prompted route: an overlay per image, the box drawn as a rectangle in
    its class's colour and the points as markers; --values raw writes the raw mask values."""
    from sam_medft.infer.predict import PALETTE

    folder, ref, boxes = case
    x0, y0, x1, y1 = boxes[1]
    cx, cy = (boxes[2][0] + boxes[2][2]) // 2, (boxes[2][1] + boxes[2][3]) // 2
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"slice.png": [
        {"label": "organ_a", "box": boxes[1]},
        {"label": 2, "points": [[cx, cy], [2, 2]], "point_labels": [1, 0]},
    ]}))  # fmt: skip
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", str(box_run), str(folder), "--prompts", str(prompts),
                              "--overlays", "--values", "raw", "--out", str(out)])
    assert res.exit_code == 0, res.output
    overlay = np.asarray(Image.open(out / "slice.overlay.png").convert("RGB"))
    assert overlay.shape == (*ref.shape, 3)
    box_colour = np.array(PALETTE[1])
    for edge in (overlay[y0, x0 : x1 + 1], overlay[y1, x0 : x1 + 1],
                 overlay[y0 : y1 + 1, x0], overlay[y0 : y1 + 1, x1]):  # fmt: skip
        assert (edge == box_colour).all()
    assert not (overlay[(y0 + y1) // 2, (x0 + x1) // 2] == box_colour).all()  # not filled
    assert (overlay[cy, cx] == PALETTE[2]).all() and (overlay[2, 2] == PALETTE[2]).all()
    # the label PNG holds the synthetic masks' raw values (0/128/255), as the classes map them
    raw = np.asarray(Image.open(out / "slice.png"))
    predictor = sam_medft.load(box_run, device="cpu")
    entries = json.loads(prompts.read_text())["slice.png"]
    classes = predictor.predict(folder / "slice.png", prompts=entries)
    assert np.array_equal(raw, np.array([0, 128, 255], np.uint8)[classes]) and (raw == 128).any()
    legend = json.loads((out / "legend.json").read_text())
    assert [legend[k]["png_value"] for k in ("0", "1", "2")] == [0, 128, 255]


def test_prompted_overlay_names_are_checked_before_the_model_loads(weightless_run, case, tmp_path):
    """A file of the user's where the overlay would go: refused before the (here missing)
    weights are looked at; without --overlays the same folder is fine to check."""
    folder, _, _ = case
    out = tmp_path / "out"
    out.mkdir()
    (out / "slice.overlay.png").write_bytes(b"mine")
    with pytest.raises(SamMedftError, match="slice.overlay.png exists and was not written"):
        predict_paths_with_prompts(str(weightless_run), [folder], out, box="1:1,1,9,9",
                                   overlays=True, show_progress=False)
    assert (out / "slice.overlay.png").read_bytes() == b"mine"
    res = runner.invoke(app, ["predict", str(weightless_run), str(folder), "--box", "1:1,1,9,9",
                              "--probs", "--out", str(out)])
    assert isinstance(res.exception, SamMedftError), res.output
    assert "--probs is for automatic-mode runs" in str(res.exception)


def test_prompt_markers_tell_positive_from_negative_points():
    """On a plain grey 160x120 overlay (markers of radius 3): a positive point is a filled disc
    with a white rim, a negative point a cross (diagonals in the class colour, nothing drawn
    straight beside it), a box a rectangle in the class colour with the inside untouched."""
    from sam_medft.infer.predict import PALETTE, draw_prompts

    grey = np.full((120, 160, 3), 90, np.uint8)
    entries = [{"label": 1, "box": [10, 10, 80, 70]},
               {"label": 2, "points": [[110, 40], [130, 90]], "point_labels": [1, 0]}]
    drawn = np.asarray(draw_prompts(Image.fromarray(grey), entries))
    colour, white = np.array(PALETTE[2]), np.array([255, 255, 255])
    assert (drawn[40, 110:113] == colour).all() and (drawn[40, 113] == white).all()  # disc
    assert (drawn[90, 133] == 90).all() and (drawn[92, 132] == colour).all()  # cross
    assert (drawn[10, 10:81] == PALETTE[1]).all() and (drawn[70, 10:81] == PALETTE[1]).all()
    assert (drawn[40, 45] == 90).all()  # the box is not filled
