"""`sam-medft eval`: score a fine-tuned run at each image's original resolution.

The runner ties the parts together: the run's recipe (plus `--data` overrides) names the
data, the model predicts (automatic mode: all classes at once; prompt modes: one object per
GT-derived prompt, `prompt_eval`), `metrics` scores every image and class, `summary` applies
the empty-case policy once, and `report` renders the page. `--baseline` runs the very same
evaluation on the base model without the adapter, so the delta isolates what fine-tuning
bought. Everything a user can get wrong (run, split, list, overrides) fails before a model
loads.

Runs on volumes are scored per slice as predicted, then each case's slices are put back
together and scored in 3-D in mm (`VolumeStacks`): per_case.csv holds the volumes,
per_slice.csv the slices.

Outputs in `<run>/eval/` (or `--out`): per_case.csv, per_slice.csv (volumes), summary.json,
prompt_table.json (prompt runs), baseline/{per_case.csv,summary.json} and delta.json
(`--baseline`), overlays/*.png and report.html.
"""

from __future__ import annotations

import functools
import gc
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from tqdm.auto import tqdm

from sam_medft.adapters.artifact import load_adapter_model
from sam_medft.config import Recipe, load_recipe
from sam_medft.data.labels import LabelMap
from sam_medft.data.lists import read_pair_list
from sam_medft.data.mixture import ConcatSource, data_splits
from sam_medft.data.sources import PairSource, SampleSource
from sam_medft.data.volume_source import VolumeSliceSource, cases_from_list, list_names_volumes
from sam_medft.data.volumes import plane_spacing, read_geometry
from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import HD95_DEFINITION, NSD_DEFINITION, case_metrics
from sam_medft.eval.per_dataset import labelled_rows, per_dataset_summaries
from sam_medft.eval.prompt_eval import (
    build_prompt_table,
    predict_settings,
    table_settings,
    write_prompt_table,
)
from sam_medft.eval.report import (
    overlay_path,
    pick_cases,
    render_overlay,
    render_volume_strip,
    write_report,
)
from sam_medft.eval.summary import (
    compare,
    json_clean,
    summarize,
    write_per_case_csv,
    write_summary_json,
)
from sam_medft.hub import resolve_run
from sam_medft.infer.pipeline import predict_images
from sam_medft.infer.predict import FineTunedSam
from sam_medft.models.loading import load_base_model, resolve_model_name
from sam_medft.models.registry import is_random_model
from sam_medft.runs import AdapterMeta, RunFolder, run_recipe_file
from sam_medft.tasks import task_from_meta
from sam_medft.version import __version__

EVAL_SEED = 0  # prompt simulation seed when the recipe has no `eval.seed` (always recorded)
AUTOMATIC = "automatic"
_OUTPUTS = (
    "per_case.csv",
    "per_slice.csv",
    "summary.json",
    "prompt_table.json",
    "delta.json",
    "report.html",
    "baseline",
    "overlays",
)  # what a new evaluation replaces (never anything else)


@dataclass
class EvalData:
    """What is evaluated: the recipe (with overrides), the samples and how to name them."""

    recipe: Recipe
    source: SampleSource
    split: str  # "test", "val" or "list:<file>"
    description: str

    @property
    def seed(self) -> int:
        """Prompt simulation seed: `eval.seed` when the recipe schema has it, else 0."""
        return int(getattr(self.recipe.eval, "seed", EVAL_SEED))


@dataclass
class EvalResult:
    eval_dir: Path
    summary: dict
    rows: list[dict]
    mode: str  # "automatic" or the main prompt setting's label
    baseline_summary: dict | None = None
    delta: dict | None = None
    baseline_note: str = ""
    prompt_table: dict | None = None
    report: Path | None = None
    overlays: list[Path] = field(default_factory=list)
    slice_summary: dict | None = None  # volumes: the per-slice numbers beside the 3-D ones


# ---- resolving the run and the data ------------------------------------------------------------
def find_run(run: str | Path, revision: str | None = None) -> tuple[Path, Path | None, bool]:
    """-> (adapter folder, recipe.yaml or None, is_local). Local folders win over Hub ids."""
    folder = Path(resolve_run(str(run), revision=revision))
    return folder, run_recipe_file(folder), Path(str(run)).expanduser().is_dir()


def default_eval_dir(
    run: str | Path, adapter: Path, recipe_file: Path | None, is_local: bool
) -> Path:
    """<run>/eval for local runs; ./eval/<owner>--<name> for Hub ids (the cache is not ours)."""
    if not is_local:
        return Path("eval") / str(run).replace("/", "--")
    run_dir = recipe_file.parent if recipe_file is not None else adapter
    return run_dir / "eval"


_HUB_NEEDS_DATA = (
    "evaluating a Hub model needs data: pass --list FILE (with --data data.img_folder=... "
    "--data data.mask_folder=... when its paths are relative to a root) or --data "
    "data.source=lists --data data.test_list=FILE (a Hub model's recipe names data on the "
    "machine it was trained on)"
)
_LIST_KEYS = ("data.train_list", "data.val_list", "data.test_list")


def load_eval_data(
    recipe_file: Path | None,
    *,
    split: str | None = None,
    list_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    is_local: bool = True,
) -> EvalData:
    """The recipe the run was trained with, `overrides` applied, and the samples to score."""
    if not is_local and not overrides and list_file is None:
        raise SamMedftError(_HUB_NEEDS_DATA)
    if recipe_file is None and not overrides and list_file is None:
        raise SamMedftError(
            "the run has no recipe.yaml to say what data it was trained on: pass --list FILE "
            "or --data overrides (e.g. --data data.source=lists --data data.test_list=test.csv)"
        )
    if split is not None and split not in ("val", "test"):
        raise SamMedftError(f"--split {split!r} is not known: use val or test")
    if split is not None and list_file is not None:
        raise SamMedftError("give either --split or --list, not both")
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise SamMedftError(
                f"--data {item!r} must look like key=value with a dotted recipe key, e.g. "
                "--data data.test_list=other.csv or --data eval.empty_policy=count"
            )
    recipe = load_recipe(recipe_file, [_with_section(o) for o in overrides])
    data = recipe.data
    if list_file is not None:
        list_file = Path(list_file)
        if list_names_volumes(list_file, data.img_folder):  # image,label volume pairs
            cases = cases_from_list(list_file, data.img_folder, data.mask_folder)
            source = VolumeSliceSource(cases, data.volumes, data.intensity)
            return EvalData(recipe, source, f"list:{list_file}", f"volume list {list_file}")
        pairs = read_pair_list(list_file, data.img_folder, data.mask_folder)
        root = data.img_folder if data.img_folder is not None else list_file.parent
        source = PairSource(pairs, data.intensity, root=root)
        return EvalData(recipe, source, f"list:{list_file}", f"pair list {list_file}")
    touched = [o.split("=", 1)[0].strip() for o in overrides]
    stray = [k for k in touched if _with_section(k) in _LIST_KEYS]
    if stray and data.source != "lists":
        raise SamMedftError(
            f"--data {stray[0]}=... has no effect because data.source is {data.source!r}: add "
            "--data data.source=lists (and data.img_folder/data.mask_folder if the list's "
            "paths are relative to them), or pass the list with --list FILE"
        )
    which = split or recipe.eval.split
    splits = data_splits(data)
    named = getattr(data, f"{which}_list", None) if data.source == "lists" else None
    if which not in splits and named is not None:
        raise SamMedftError(
            f"data.{which}_list {named} does not exist, so there is no {which} split to "
            f"evaluate: pass --list FILE (e.g. --list val.csv) or --data data.{which}_list=FILE"
            + ("" if which == "val" else ", or --split val")
        )
    if which not in splits:
        have = ", ".join(s for s in splits if s != "train") or "none"
        raise SamMedftError(
            f"the recipe has no {which} split (data.{which}_list / the {which} fraction is not "
            f"set; splits with data: {have}): pass --split val, --list FILE, or "
            f"--data data.{which}_list=FILE"
        )
    source = splits[which]
    if len(source) == 0:
        raise SamMedftError(f"the {which} split is empty: nothing to evaluate; pass --list FILE")
    return EvalData(recipe, source, which, f"{which} split of {describe(recipe)}")


def _with_section(key_or_item: str) -> str:
    """`test_list=x.csv` is accepted for `data.test_list=x.csv` (the option is named --data)."""
    key = key_or_item.split("=", 1)[0].strip()
    if "." in key or key in Recipe.model_fields:
        return key_or_item
    return f"data.{key_or_item.strip()}"


def describe(recipe: Recipe) -> str:
    d = recipe.data
    if d.source == "synthetic":
        return "the built-in synthetic data set"
    if d.source == "hf" and d.hf is not None:
        return f"dataset {d.hf.path}"
    if d.source == "folder":
        return f"folder {d.folder}"
    if d.source == "mixture":
        return "the data sets " + ", ".join(e.name for e in d.datasets)
    return f"lists in {d.train_list.parent if d.train_list else '.'}"


def label_map_of(meta) -> LabelMap:
    """The label map the model was trained with (its classes are what gets scored)."""
    if meta.binary or not meta.labels:
        return LabelMap(binary=True)
    return LabelMap({int(k): v for k, v in meta.labels.items()})


# ---- predictions -------------------------------------------------------------------------------
@dataclass
class Case:
    index: int
    name: str
    image: np.ndarray  # HxWx3 float32 [0, 255]
    reference: np.ndarray  # HxW int64 class ids
    spacing: tuple[float, float] | None
    predictions: dict[str, np.ndarray]  # setting key -> (K,H,W) bool mask per fg class
    volume: str | None = None  # slices of volumes: the volume's case id
    slice_index: int | None = None


class _EvalSamples:
    """The samples to score, as prediction-pipeline inputs: loader workers decode each
    sample and map its reference; both travel with the prediction."""

    def __init__(self, source: SampleSource, indices: Sequence[int], label_map: LabelMap):
        self.source, self.indices, self.label_map = source, list(indices), label_map

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, k: int):
        i = self.indices[k]
        sample = self.source.load(i)
        return sample.image, (sample, self.label_map.apply(sample.raw_mask,
                                                           source=self.source.where(i)))


def iter_cases(
    predictor,
    source: SampleSource,
    label_map: LabelMap,
    settings: Sequence | None,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    seed: int = EVAL_SEED,
    num_workers: int = 0,
) -> Iterator[Case]:
    """Predict each sample with the prediction pipeline (`infer.pipeline`, as `predict`
    does): automatic mode as label maps; prompt modes (`settings`) embed a batch of images
    at once and decode each image's simulated prompts against its embeddings. Prompts are
    seeded by (seed, image index), so a case predicts the same every time."""
    indices = list(range(len(source))) if indices is None else list(indices)
    fg = list(range(1, label_map.num_classes))
    decode = None
    if settings is not None:

        def decode(emb, original, k, extra):
            return predict_settings(
                predictor, emb, original, extra[1], fg, settings, index=indices[k], seed=seed
            )

    inputs = _EvalSamples(source, indices, label_map)
    for done in predict_images(
        predictor, inputs, batch_size=batch_size, num_workers=num_workers, decode_image=decode
    ):
        sample, ref = done.extra
        if decode is None:
            pred = {AUTOMATIC: np.stack([done.labels == c for c in fg])}
        else:
            pred = done.decoded
        yield Case(indices[done.index], sample.name, sample.image, ref, sample.spacing, pred,
                   sample.case, sample.slice_index)


def volume_spacing(source: VolumeSliceSource, case_id: str) -> tuple[float, float, float]:
    """(slice, row, column) voxel size in mm of a case's slices stacked in slice order."""
    case = next(c for c in source.cases if c.case_id == case_id)
    spacing = read_geometry(case.image).spacing
    return (float(spacing[source.axis]), *plane_spacing(spacing, source.axis))


class VolumeStacks:
    """Slices of volumes put back together: once every slice of a case has been predicted,
    `add` hands back the case's (K, D, H, W) masks per setting and its (D, H, W) reference.
    Only masks (and, with `keep_image`, a uint8 grey slice) are held, never the RGB input."""

    def __init__(self, source: VolumeSliceSource, indices: Sequence[int] | None = None, *,
                 keep_image: bool = False):
        self.source, self.keep_image = source, keep_image
        wanted = range(len(source)) if indices is None else indices
        self.expected: dict[str, int] = {}
        for i in wanted:
            cid = source.cases[source.index[i][0]].case_id
            self.expected[cid] = self.expected.get(cid, 0) + 1
        self.parts: dict[str, dict[int, tuple]] = {}

    def add(
        self, case: Case
    ) -> tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray | None] | None:
        """-> (case id, masks per setting, reference, grey image or None) once the volume
        is whole, else None."""
        got = self.parts.setdefault(str(case.volume), {})
        grey = None
        if self.keep_image:  # the middle channel is the slice itself (2.5-D: its neighbours)
            grey = np.clip(case.image[..., case.image.shape[-1] // 2], 0, 255).astype(np.uint8)
        got[int(case.slice_index or 0)] = (case.predictions, case.reference, grey)
        if len(got) < self.expected.get(str(case.volume), 0):
            return None
        slices = [got[k] for k in sorted(got)]
        del self.parts[str(case.volume)]
        masks = {key: np.stack([s[0][key] for s in slices], axis=1) for key in slices[0][0]}
        reference = np.stack([s[1] for s in slices])
        image = np.stack([s[2] for s in slices]) if self.keep_image else None
        return str(case.volume), masks, reference, image


def score(
    predictor,
    data: EvalData,
    label_map: LabelMap,
    settings: Sequence | None,
    *,
    desc: str,
    show_progress: bool,
) -> tuple[dict[str, list[dict]], list, dict[str, list[dict]]]:
    """Per-case rows for every setting key, each case's spacing (None: pixels) and, for
    slices of volumes, the per-slice rows (the per-case rows are then 3-D, one per volume
    and class, in mm)."""
    cfg = data.recipe.eval
    names = {c: n for c, n in enumerate(label_map.class_names) if c}
    rows: dict[str, list[dict]] = {}
    slice_rows: dict[str, list[dict]] = {}
    spacings = []
    stacks = VolumeStacks(data.source) if isinstance(data.source, VolumeSliceSource) else None
    cases = iter_cases(predictor, data.source, label_map, settings, seed=data.seed)
    for case in tqdm(
        cases, total=len(data.source), desc=desc, unit="img", disable=not show_progress
    ):
        if stacks is None:
            spacings.append(case.spacing)
        for key, masks in case.predictions.items():
            scored = score_masks(
                masks, case.reference, names, case.spacing, cfg.nsd_tolerance, case.name
            )
            if stacks is None:
                rows.setdefault(key, []).extend(scored)
            elif any(r["empty_case"] != "both_empty" for r in scored):
                # per-slice numbers: slices with a scored class on either side (as `eval
                # --pred` counts them); the 3-D rows below see every slice
                slice_rows.setdefault(key, []).extend(scored)
        whole = stacks.add(case) if stacks is not None else None
        if whole is not None:
            cid, masks_by, reference, _ = whole
            spacing = volume_spacing(stacks.source, cid)
            spacings.append(spacing)
            for key, masks in masks_by.items():
                rows.setdefault(key, []).extend(
                    score_masks(masks, reference, names, spacing, cfg.nsd_tolerance, cid)
                )
    return rows, spacings, slice_rows


def score_masks(
    masks: np.ndarray,
    reference: np.ndarray,
    names: dict[int, str],
    spacing: Sequence[float] | None,
    nsd_tolerance: float,
    case: str,
) -> list[dict]:
    """One row per class, each class scored on its own mask (prompted classes may overlap:
    an object's pixels are never taken away by another class's prompt); masks (K, H, W) of
    an image or (K, D, H, W) of a volume."""
    rows = []
    for k, (cid, _) in enumerate(names.items()):
        rows += case_metrics(
            masks[k].astype(np.int64) * cid,
            np.where(reference == cid, cid, 0),
            [cid],
            spacing,
            nsd_tolerance,
            case=case,
            class_names=names,
        )
    return rows


def baseline_note(meta: AdapterMeta) -> str:
    """What `--baseline` evaluates, said beside its numbers (a random base's is chance level)."""
    outputs = meta.mask_outputs or meta.num_classes
    if not task_from_meta(meta).prompted:
        note = (
            f"Baseline: the base model {meta.base_model} without the adapter, automatic mode. "
            "SAM has no class outputs of its own: its mask tokens are class-agnostic"
            + (
                f" and the {outputs} class heads (mask tokens, hypernetwork MLPs, IoU head) are "
                "freshly initialised because the class count differs from SAM's 3"
                if outputs != 3
                else ""
            )
            + ", so this is the zero-shot score of the architecture, not of a trained head."
        )
    else:
        note = (
            f"Baseline: the base model {meta.base_model} without the adapter, zero-shot, "
            "with the same GT-derived prompts."
        )
    if is_random_model(meta.base_model):
        note += (f" ({meta.base_model} is a random test model, no pretrained weights: its "
                 "baseline is chance level.)")
    return note


@contextmanager
def baseline_of(predictor) -> Iterator[tuple[Any, str]]:
    """The base model without the adapter, in the same mode, and a note saying what it is.

    PEFT runs switch the adapter off in place (`disable_adapter`); vanilla runs have no
    adapter to switch off, so the base model is loaded fresh (seeded: new class heads are
    random, and the same every time).
    """
    meta = predictor.meta
    outputs = meta.mask_outputs or meta.num_classes
    note = baseline_note(meta)
    if isinstance(predictor.model, PeftModel):
        with predictor.model.disable_adapter():
            yield predictor, note
        return
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        base = load_base_model(
            resolve_model_name(meta.base_model, meta.normalization),
            outputs,
            revision=meta.base_revision,
        )
    finally:
        torch.random.set_rng_state(state)
    other = FineTunedSam(base, meta, device=str(predictor.device), multimask=predictor.multimask)
    try:
        yield other, note
    finally:
        del other, base
        gc.collect()


# ---- the runner --------------------------------------------------------------------------------
def _clear(eval_dir: Path) -> None:
    """Remove the outputs of an earlier evaluation (only ours), so nothing stale survives."""
    for name in _OUTPUTS:
        p = eval_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _spacing_units(spacings: Sequence) -> str:
    known = sum(s is not None for s in spacings)
    if known == len(spacings):
        return "mm (from the data)"
    if known == 0:
        return "pixels (the data carries no spacing)"
    return f"mixed: mm for {known} of {len(spacings)} cases, pixels for the rest"


@contextmanager
def _eval_lock(run: str | Path, out_dir: str | Path | None) -> Iterator[None]:
    """A local run folder's eval outputs have one writer at a time: its lock, as training
    holds it (an eval into a run that is training, or a second eval, stops with a message)."""
    folder = Path(str(run)).expanduser()
    root = next((c for c in (folder, folder.parent) if (c / "recipe.yaml").is_file()), None)
    if not folder.is_dir() or root is None:
        yield  # a Hub id (./eval/<id>) or a bare adapter folder: not a run folder
        return
    target = Path(out_dir).expanduser() if out_dir is not None else root / "eval"
    if not target.resolve().is_relative_to(root.resolve()):
        yield
        return
    with RunFolder(root).lock("eval"):
        yield


def _one_writer(fn):
    """`evaluate_run` under the run folder's lock (taken before any model loads)."""

    @functools.wraps(fn)
    def locked(run, *args, out_dir=None, **kwargs):
        with _eval_lock(run, out_dir):
            return fn(run, *args, out_dir=out_dir, **kwargs)

    return locked


@_one_writer
def evaluate_run(
    run: str | Path,
    *,
    split: str | None = None,
    list_file: str | Path | None = None,
    data_overrides: Sequence[str] = (),
    baseline: bool = False,
    out_dir: str | Path | None = None,
    clicks: int | None = None,
    device: str | None = None,
    revision: str | None = None,
    show_progress: bool = True,
) -> EvalResult:
    """Evaluate a run folder, adapter folder or Hub id; writes the eval folder (see module)."""
    if clicks is not None and clicks < 0:
        raise SamMedftError(f"--clicks {clicks} must be 0 or more")
    if not Path(str(run)).expanduser().is_dir() and not data_overrides and list_file is None:
        raise SamMedftError(_HUB_NEEDS_DATA)  # before anything is downloaded
    adapter, recipe_file, is_local = find_run(run, revision)
    meta = AdapterMeta.read(adapter)
    data = load_eval_data(
        recipe_file, split=split, list_file=list_file, overrides=data_overrides, is_local=is_local
    )
    label_map = label_map_of(meta)
    eval_dir = (
        Path(out_dir)
        if out_dir is not None
        else default_eval_dir(run, adapter, recipe_file, is_local)
    )
    task = task_from_meta(meta, data.recipe.prompt)
    settings, main = None, AUTOMATIC
    if task.prompted:  # scored per prompt setting (box, points, clicks), not per class map
        main, settings = table_settings(task.prompt, clicks)

    model, meta = load_adapter_model(adapter)
    predictor = FineTunedSam(model, meta, device=device, multimask=meta.multimask)
    rows_by, spacings, slice_rows_by = score(
        predictor, data, label_map, settings, desc="eval", show_progress=show_progress
    )
    names = {c: n for c, n in enumerate(label_map.class_names) if c}
    policy = data.recipe.eval.empty_policy
    mixture = isinstance(data.source, ConcatSource) and data.source.union is not None
    if mixture:  # Setup 2: each case scores only the classes its data set labels
        rows_by = {k: labelled_rows(data.source, r) for k, r in rows_by.items()}
    summaries = {k: summarize(r, names, policy) for k, r in rows_by.items()}
    rows, summary = rows_by[main], summaries[main]
    if mixture:
        summary["per_dataset"] = per_dataset_summaries(data.source, rows, names, policy)
    main_label = next((s.label for s in settings if s.key == main), main) if settings else main

    base_summaries, base_rows, note = None, {}, ""
    if baseline:
        with baseline_of(predictor) as (base_predictor, note):
            base_rows, _, _ = score(
                base_predictor,
                data,
                label_map,
                settings,
                desc="baseline",
                show_progress=show_progress,
            )
        base_summaries = {k: summarize(r, names, policy) for k, r in base_rows.items()}

    extra = {
        "model": str(run),
        "adapter_folder": str(adapter),
        "base_model": meta.base_model,
        "base_revision": meta.base_revision,
        "method": meta.method,
        "scope": meta.scope,
        "prompt_mode": meta.prompt_mode,
        "evaluated": main_label,
        "prompts": "GT-derived (simulated from the reference mask)" if task.prompted else "none",
        "prompt_seed": data.seed if task.prompted else None,
        "split": data.split,
        "data": data.description,
        "nsd_tolerance": data.recipe.eval.nsd_tolerance,
        "spacing": _spacing_units(spacings),
        "cases": "3-D volumes (per-slice numbers in per_slice.csv)" if slice_rows_by
        else "2-D images",
        "hd95": HD95_DEFINITION,
        "nsd": NSD_DEFINITION,
        "device": str(predictor.device),
        "sam_medft_version": __version__,
        "trained_with_sam_medft": meta.sam_medft_version,
        "recipe": data.recipe.model_dump(mode="json"),
    }
    _clear(eval_dir)
    write_per_case_csv(rows, eval_dir / "per_case.csv")
    doc = summary
    slice_summary = None
    if slice_rows_by:
        slice_summary = summarize(slice_rows_by[main], names, policy)
        write_per_case_csv(slice_rows_by[main], eval_dir / "per_slice.csv")
        doc = summary | {"per_slice": slice_summary}
    write_summary_json(doc, eval_dir / "summary.json", extra)
    result = EvalResult(eval_dir, summary, rows, main_label, slice_summary=slice_summary)
    if base_summaries is not None:
        result.baseline_summary = base_summaries[main]
        result.delta = compare(summary, base_summaries[main])
        result.baseline_note = note
        write_per_case_csv(base_rows[main], eval_dir / "baseline" / "per_case.csv")
        write_summary_json(
            base_summaries[main],
            eval_dir / "baseline" / "summary.json",
            extra | {"baseline": note, "adapter_folder": None},
        )
        delta_doc = {"note": note, **result.delta}
        (eval_dir / "delta.json").write_text(json.dumps(json_clean(delta_doc), indent=2) + "\n")
    if settings is not None:
        result.prompt_table = build_prompt_table(
            settings, summaries, main, seed=data.seed, baseline=base_summaries
        )
        write_prompt_table(result.prompt_table, eval_dir / "prompt_table.json")
    result.overlays = render_overlays(predictor, data, label_map, settings, rows, main, eval_dir)
    result.report = write_eval_report(result, extra)
    return result


def render_overlays(
    predictor,
    data: EvalData,
    label_map: LabelMap,
    settings,
    rows: list[dict],
    key: str,
    eval_dir: Path,
) -> list[Path]:
    """Worst and best cases per class (`eval.overlays` each), re-predicted (deterministic:
    the prompt seeds depend on the image index) rather than kept in memory for every case."""
    k = data.recipe.eval.overlays
    if k <= 0:
        return []
    picks = pick_cases(rows, k=k)
    if isinstance(data.source, VolumeSliceSource):
        return _volume_strips(predictor, data, label_map, settings, picks, key, eval_dir)
    index_of = {n: i for i, n in enumerate(data.source.names)}
    wanted = sorted({index_of[p["case"]] for p in picks})
    only = None if settings is None else [s for s in settings if s.key == key]
    found = iter_cases(predictor, data.source, label_map, only, wanted, seed=data.seed)
    cases = {c.name: c for c in found}
    paths = []
    for p in picks:
        case = cases[p["case"]]
        image = np.clip(case.image, 0, 255).astype(np.uint8)
        title = (
            f"{p['pick']} · class {p['class_id']} {p['class_name']} · {p['case']} · "
            f"Dice {float(p['dice']):.3f}"
        )
        cid = int(p["class_id"])
        pred = case.predictions[key][cid - 1].astype(np.int64) * cid  # masks are classes 1..K
        paths.append(
            render_overlay(
                image,
                case.reference,
                pred,
                [cid],
                overlay_path(eval_dir, p),
                title=title,
            )
        )
    return paths


def _volume_strips(predictor, data: EvalData, label_map: LabelMap, settings, picks, key: str,
                   eval_dir: Path) -> list[Path]:
    """The picked volumes re-predicted slice by slice and drawn as strips of slices."""
    source = data.source
    only = None if settings is None else [s for s in settings if s.key == key]
    paths = []
    for p in picks:
        indices = source.slices_of(p["case"])
        stacks = VolumeStacks(source, indices, keep_image=True)
        whole = None
        for case in iter_cases(predictor, source, label_map, only, indices, seed=data.seed):
            whole = stacks.add(case) or whole
        _, masks_by, reference, image = whole
        cid = int(p["class_id"])
        title = (
            f"{p['pick']} · class {cid} {p['class_name']} · {p['case']} · "
            f"Dice {float(p['dice']):.3f}"
        )
        pred = masks_by[key][cid - 1].astype(np.int64) * cid  # masks are classes 1..K
        paths.append(
            render_volume_strip(
                np.where(reference == cid, cid, 0), pred, cid, overlay_path(eval_dir, p),
                spacing=volume_spacing(source, p["case"]), image=image, title=title,
            )
        )
    return paths


def write_eval_report(result: EvalResult, extra: dict) -> Path:
    """report.html with the run facts, the summary, the baseline delta and the prompt table."""
    facts = {k: v for k, v in extra.items() if k != "recipe" and v is not None}
    where = extra["split"]
    title = f"Evaluation of {Path(str(extra['model'])).name or extra['model']} ({where})"
    return write_report(
        result.eval_dir,
        result.summary,
        result.rows,
        result.overlays,
        title,
        extra=facts,
        delta=result.delta,
        delta_note=result.baseline_note,
        prompt_table=result.prompt_table,
        slice_summary=result.slice_summary,
    )


__all__ = [
    "AUTOMATIC",
    "EVAL_SEED",
    "EvalData",
    "EvalResult",
    "baseline_note",
    "baseline_of",
    "evaluate_run",
    "find_run",
    "iter_cases",
    "label_map_of",
    "load_eval_data",
    "score",
    "volume_spacing",
]
