"""The recipe: a typed schema for the YAML files in `recipes/`, plus dotted CLI overrides.

A recipe is data, not code. Unknown keys and bad values fail here, before any model or
data is touched, with a message that names the key and the allowed values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sam_medft.errors import SamMedftError

log = logging.getLogger("sam_medft.config")
_SAID: set[str] = set()  # override notices already logged in this process


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: intensity presets (`data.intensity.preset`): CT windows as (center, width) in Hounsfield
#: units, and MR's robust min-max (0.5-99.5 percentiles; per volume for volumes)
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "ct_abdomen": (40.0, 400.0), "ct_soft_tissue": (50.0, 350.0), "ct_lung": (-600.0, 1500.0),
    "ct_bone": (400.0, 1800.0), "ct_brain": (40.0, 80.0)}
IntensityPreset = Literal["ct_abdomen", "ct_soft_tissue", "ct_lung", "ct_bone", "ct_brain", "mr"]


class IntensityConfig(_Section):
    """How images that are not 8-bit RGB become 0..255 (never silently clipped)."""

    mode: Literal["auto", "percentile", "window", "none"] = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: tuple[float, float] | None = None  # (center, width), e.g. CT soft tissue (40, 400)
    # a named preset sets mode and window/percentiles (CT_WINDOWS; mr: percentile 0.5-99.5)
    preset: IntensityPreset | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """`preset: ct_lung` means mode window with the lung window; a mode or window given
        beside it that says otherwise is a contradiction, not silently overridden."""
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        preset = data["preset"]
        if preset == "mr":
            implied = {"mode": "percentile", "percentiles": (0.5, 99.5)}
        elif preset in CT_WINDOWS:
            implied = {"mode": "window", "window": CT_WINDOWS[preset]}
        else:
            return data  # the Literal names the allowed presets
        for key, value in implied.items():
            given = data.get(key)
            if given is None or (key == "mode" and given == "auto"):
                continue
            if (tuple(given) if isinstance(given, list | tuple) else given) != value:
                raise ValueError(f"intensity.preset={preset} sets {key}={value}, but "
                                 f"{key}={given} is also given; keep one of them")
        return {**data, **implied}


class HFDataConfig(_Section):
    path: str  # Hub id, `load_from_disk` folder, or an imagefolder data_dir
    name: str | None = None
    revision: str | None = None
    image_column: str = "image"
    mask_column: str = "mask"
    train_split: str = "train"
    val_split: str | None = "validation"
    test_split: str | None = "test"


class SyntheticConfig(_Section):
    n_train: int = 48
    n_val: int = 12
    n_test: int = 12
    size: int = 128
    seed: int = 0


class VolumeConfig(_Section):
    """How volumes (NIfTI, DICOM series, nnU-Net raw) become 2-D samples: slicing is part of
    the data source. Volumes are reoriented to RAS first, so `axial` is the same for all."""

    axis: Literal["axial", "coronal", "sagittal"] = "axial"
    # 2.5d: the slices before and after as the first and last input channels (edges repeat)
    channels: Literal["2d", "2.5d"] = "2d"
    # share of the label-free training slices sampled (all slices with labels are kept;
    # validation and test keep every slice, so 3-D metrics see whole volumes)
    empty_fraction: float = Field(0.2, ge=0, le=1)


class DataConfig(_Section):
    # python: the data is handed over in Python (`sam_medft.train(..., train_data=...)`)
    # nnunet: `folder` is an nnU-Net raw data set (DatasetXXX_Name with imagesTr, labelsTr,
    # dataset.json); lists and folder sources may hold volumes (.nii/.nii.gz, DICOM series
    # folders) instead of 2-D images; `volumes` says how they are sliced
    # mixture: several labelled data sets (`datasets`), each its own source and labels (Setup 2)
    source: Literal["lists", "folder", "hf", "synthetic", "python", "nnunet", "mixture"] = "synthetic"
    # study layout: CSV/TSV lists of image_path,mask_path relative to the two roots
    img_folder: Path | None = None
    mask_folder: Path | None = None
    train_list: Path | None = None
    val_list: Path | None = None
    test_list: Path | None = None
    # folder layout: <folder>/images/*, <folder>/masks/* with matching names
    folder: Path | None = None
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    split_seed: int = 0
    hf: HFDataConfig | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    # classes: raw mask value -> class name (0 must be background), or binary
    labels: dict[int, str] | None = None
    binary: bool = False
    intensity: IntensityConfig = IntensityConfig()
    keep_empty: bool = True  # empty slices stay in val/test (the study dropped them: biased)
    volumes: VolumeConfig = VolumeConfig()
    # Setup 2: several labelled data sets; the classes are the union of theirs (by name), and
    # each trains only the classes it labels
    datasets: list[DatasetEntry] | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer_source(cls, data: Any) -> Any:
        """No `source:` given: the keys present say which layout it is."""
        if isinstance(data, dict) and "source" not in data:
            for key, source in (("train_list", "lists"), ("folder", "folder"), ("hf", "hf"),
                                ("datasets", "mixture")):
                if data.get(key) is not None:
                    return {**data, "source": source}
        return data

    @field_validator(
        "img_folder", "mask_folder", "train_list", "val_list", "test_list", "folder",
        mode="before",
    )
    @classmethod
    def _empty_path_is_none(cls, v: Any) -> Any:
        """`data.test_list=''` (or `test_list: ""`) means no list, as null does; an empty
        Path would be '.', a folder, and fail as "pair list . not found"."""
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        need = {
            "lists": ["train_list"],
            "folder": ["folder"],
            "nnunet": ["folder"],
            "hf": ["hf"],
            "synthetic": [],
            "python": [],
            "mixture": ["datasets"],
        }[self.source]
        for key in need:
            if getattr(self, key) is None:
                raise ValueError(f"data.source={self.source} needs data.{key}")
        if self.labels is not None and self.binary:
            raise ValueError("set either data.labels or data.binary: true, not both")
        if self.labels is not None and 0 not in self.labels:
            raise ValueError("data.labels must map the background value 0 (e.g. {0: background})")
        if self.source == "mixture":
            if self.labels is not None or self.binary:
                raise ValueError("data.source=mixture takes its classes from each data set's own "
                                 "labels (data.datasets[i].labels); remove data.labels/binary")
            if not self.datasets:
                raise ValueError("data.source=mixture needs at least one entry in data.datasets")
            names = [d.name for d in self.datasets]
            if len(set(names)) != len(names):
                raise ValueError(f"data.datasets names must be unique, got {names}")
        elif self.datasets:
            raise ValueError(f"data.datasets is for data.source=mixture, not {self.source}")
        return self


class DatasetEntry(DataConfig):
    """One data set of a Setup 2 mixture: any source, its own label map, a sampling weight
    (the share of training samples it gets, whatever its size)."""

    name: str
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _flat(self) -> DatasetEntry:
        if self.source in ("mixture", "python"):
            raise ValueError(f"data set {self.name}: source {self.source} cannot be a member of "
                             f"a mixture; use lists, folder, hf or synthetic")
        if self.binary:
            raise ValueError(f"data set {self.name}: give data.labels naming its classes (the "
                             f"class space is the union of the names), not binary: true")
        return self


DataConfig.model_rebuild()


class ModelConfig(_Section):
    name: str = "sam-vit-base"  # registry name, Hub id or local folder
    revision: str | None = None
    adapter: str | None = None  # continue from a fine-tuned run folder or Hub id
    normalization: Literal["sam", "medsam"] | None = None  # None: the registry's choice
    attn_implementation: Literal["sdpa", "eager"] | None = None
    device_map: dict[str, float] | None = None  # e.g. {"cuda:0": 0.5, "cuda:1": 0.5}
    # the registry architecture with seeded random weights, no download: dry runs,
    # benchmarks, CPU smoke tests (the adapter records the base as random:<name>)
    random_init: bool = False
    # Setup 3: image-encoder weights from `sam-medft pretrain` (its run folder, its encoder/
    # folder, or a transformers SAM folder), loaded over the base's encoder before fine-tuning
    encoder_weights: str | None = None


class PeftSettings(_Section):
    method: str = "lora"  # vanilla | lora | adapter | any PEFT type (loha, lokr, ia3, ...)
    scope: Literal["decoder", "encdec"] = "encdec"
    layers: Literal["all"] | list[int] = "all"  # encoder blocks that get LoRA/adapters
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    use_dora: bool = False
    use_rslora: bool = False
    target_modules: list[str] | str | None = None  # override the default targets
    # bottleneck adapter
    bottleneck_ratio: float = Field(0.25, gt=0, le=4)
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    mlp_scale: float = Field(0.5, allow_inf_nan=False)
    # any other PEFT config keys pass through, e.g. {init_lora_weights: pissa}
    extra: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _type_alias(cls, data: Any) -> Any:
        """`peft.type` (PEFT's own word, `peft_type`) is accepted for `peft.method`."""
        if isinstance(data, dict) and "type" in data:
            data = dict(data)
            kind = data.pop("type")
            if "method" in data and str(data["method"]).lower() != str(kind).lower():
                raise ValueError(
                    f"peft.type={kind!r} and peft.method={data['method']!r} disagree; "
                    "give only one of them"
                )
            data["method"] = kind
        return data

    @field_validator("method")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class LossConfig(_Section):
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    include_background: bool = False
    class_weights: list[float] | None = None
    iou_weight: float = 1.0  # IoU-head MSE against the real IoU (keeps every head in the loss)


class AugmentConfig(_Section):
    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.0
    rotate_degrees: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.0
    p: float = 0.8  # probability that the spatial transform is applied at all


class TrainConfig(_Section):
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1)  # optimizer updates
    lr: float = Field(1e-4, gt=0)
    head_lr: float | None = None  # lr for freshly initialised class heads (default: lr)
    weight_decay: float = 0.01
    warmup_steps: int = Field(50, ge=0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    grad_clip: float | None = 1.0
    eval_every: int = Field(100, ge=1)
    save_every: int = Field(100, ge=1)
    keep_last: int = Field(2, ge=1)
    patience: int | None = None  # evaluations without improvement before stopping
    # data-loader processes; auto: 0 without a GPU (the model step dominates), else up to 4
    # per process (they persist across epochs)
    num_workers: int | Literal["auto"] = "auto"
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    fast_attention: bool = True  # rel-pos bias folded into q/k: one fused SDPA, no N x N mask
    # frozen-encoder (decoder-only) scopes: image embeddings computed once per image; used for
    # training only without augmentation (augmented pixels never repeat), always for validation
    cache_embeddings: bool | Literal["auto"] = "auto"
    cache_max_items: int = Field(2048, ge=1)  # kept in CPU memory (ViT-B: 4 MiB per image)
    # decode, map and resize every train/val image once per run (uint8 at the input size:
    # 4 MiB per 1024 px image); auto: in memory when all processes' copies fit
    # preprocess_cache_gib, else memory-mapped .npy files in the run folder
    preprocess_cache: Literal["auto", "memory", "disk", "off"] = "auto"
    preprocess_cache_gib: float = Field(16.0, gt=0)
    # where normalisation + augmentation run: auto = on the accelerator when it is a GPU
    # (batched, no CPU cost), in the loader workers otherwise and always in prompt modes
    transform_device: Literal["auto", "accelerator", "loader"] = "auto"

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int | str:
        """One message for every bad value (not one per member of the union)."""
        if value == "auto":
            return value
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        try:
            n = int(value) if ok else -1
        except ValueError:
            n = -1
        if n < 0:
            raise ValueError(f"{value!r} is not a number of worker processes; use 0 (load in "
                             f"the training process), a positive number, or auto")
        return n

    @field_validator("preprocess_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare `off` as false: `preprocess_cache: off` means "off"."""
        return "off" if value is False else value
    log_with: Literal["tensorboard", "trackio", "none"] = "tensorboard"
    preset: Literal["auto", "none"] = "none"
    seed: int = 0


class PromptConfig(_Section):
    mode: Literal["none", "point", "box", "hybrid"] = "none"
    n_points: int = Field(1, ge=1)
    n_negative: int = Field(0, ge=0)
    interior_fraction: float = Field(0.1, gt=0, le=1)
    box_jitter: float = Field(0.1, ge=0, lt=1)
    max_objects_per_image: int = Field(8, ge=1)
    multimask: bool = True
    refine_clicks: int = Field(0, ge=0)


class PretrainConfig(_Section):
    """Setup 3, `sam-medft pretrain`: SimMIM-style masked image modelling of the encoder.
    Masked patches become a learned token (SAM's windowed + global attention needs the
    whole grid, so tokens cannot be dropped as MAE does); a 1x1-conv decoder reconstructs
    the masked pixels (L1)."""

    mask_ratio: float = Field(0.6, gt=0, lt=1)
    mask_patch_size: int = Field(32, ge=1)  # pixels at the model input; a multiple of 16
    # which splits of the recipe's data are pretrained on (masks are never read); the val
    # split (when there is one) scores the reconstruction with fixed masks
    splits: list[Literal["train", "val", "test"]] = ["train"]
    # unlabelled scans without masks: a folder of images (recursive) or a .txt list of
    # image paths; pretrained on together with `splits` (use `splits: []` for these alone)
    images: Path | None = None


class EvalConfig(_Section):
    split: Literal["val", "test"] = "test"
    empty_policy: Literal["exclude", "count"] = "exclude"
    nsd_tolerance: float = 1.0  # in the units of the pixel spacing (mm when known)
    overlays: int = 2
    seed: int = 0  # seeds the prompts simulated from the ground truth


class HubConfig(_Section):
    push: bool = False  # push the adapter + model card at the end of training (main process)
    repo_id: str | None = None
    private: bool = False
    revision: str | None = None  # a branch to push to (created if missing)
    license: str | None = None  # for the model card, e.g. apache-2.0

    @model_validator(mode="after")
    def _repo(self) -> HubConfig:
        if self.push and not self.repo_id:
            raise ValueError("hub.push: true needs hub.repo_id (e.g. your-name/sam-prostate-lora)")
        return self


class Recipe(_Section):
    name: str = "run"
    output_dir: Path = Path("runs")
    data: DataConfig = DataConfig(source="synthetic")
    model: ModelConfig = ModelConfig()
    peft: PeftSettings = PeftSettings()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    prompt: PromptConfig = PromptConfig()
    eval: EvalConfig = EvalConfig()
    hub: HubConfig = HubConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @field_validator("name", mode="before")
    @classmethod
    def _one_folder_name(cls, v: Any) -> Any:
        """The run is written to output_dir/name and `--overwrite` empties it: a name that is
        not one plain folder name could reach (and empty) a folder that is not a run."""
        if v is None:  # `name=` on the command line
            v = ""
        if not isinstance(v, str):
            return v  # the type check names it
        bad = (v.strip() in ("", ".", "..") or any(c in v for c in "/\\\0")
               or Path(v).is_absolute())
        if bad:
            raise ValueError(f"name {v!r} must be one folder name inside output_dir (not empty, "
                             f"not '.' or '..', without '/' or '\\'), e.g. name=prostate_lora; "
                             f"to write elsewhere set output_dir")
        return v

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---- loading ---------------------------------------------------------------------------


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """A recipe file as its raw YAML mapping, unvalidated: the one reader of recipe files
    (yours, and a run's recipe.yaml read by eval, the Hub card and older artifacts)."""
    path = Path(path)
    if not path.is_file():
        raise SamMedftError(f"recipe file {path} not found; `sam-medft recipes` lists the shipped ones")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SamMedftError(f"recipe {path} is not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise SamMedftError(f"recipe {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except ValueError as e:  # e.g. a number of more than 4300 digits
        raise SamMedftError(f"recipe {path} is not valid YAML: {e}") from None
    except (OSError, RecursionError) as e:  # unreadable, or nested beyond reason
        raise SamMedftError(f"recipe {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise SamMedftError(f"recipe {path} must be a YAML mapping of sections (data:, model:, ...)")
    return raw


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe, apply `a.b.c=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_recipe_file(path)
        _resolve_relative_paths(raw, path.parent)
    before = dict(raw["data"]) if isinstance(raw.get("data"), dict) else {}
    for item in overrides:
        apply_override(raw, item)
    _override_classes(raw, before, [o.split("=", 1)[0].strip() for o in overrides if "=" in o])
    return validate_recipe(raw, source=str(path) if path else "overrides")


def _override_classes(raw: dict[str, Any], before: dict[str, Any], keys: list[str]) -> None:
    """labels and binary are one choice: a command-line `data.binary=true` replaces the
    recipe's `data.labels` (and `data.labels={...}` its `binary: true`), each said once, so
    switching a recipe between the two takes one override. A `data.labels` override that
    replaces the recipe's own map says so, naming both. (Both in one file stay an error:
    which one was meant is not knowable.)"""
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    old_labels, old_binary = before.get("labels"), before.get("binary")
    if "data.binary" in keys and "data.labels" not in keys and data.get("binary") is True \
            and old_labels is not None:
        data["labels"] = None
        _say(f"data.binary=true replaces the recipe's data.labels {old_labels}: every mask "
             "value > 0 is one foreground class")
    if "data.labels" in keys and isinstance(data.get("labels"), dict):
        new = data["labels"]
        if "data.binary" not in keys and old_binary is True:
            data["binary"] = False
            _say(f"data.labels={new} replaces the recipe's binary: true")
        elif isinstance(old_labels, dict) and old_labels != new:
            _say(f"data.labels={new} replaces the recipe's data.labels {old_labels}")


def _say(text: str) -> None:
    if text not in _SAID:
        _SAID.add(text)
        log.info(text)


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise SamMedftError(_explain(e, source)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`train.max_steps=50` -> raw["train"]["max_steps"] = 50 (value parsed as YAML)."""
    if "=" not in item:
        raise SamMedftError(f"override {item!r} must look like section.key=value (e.g. train.max_steps=50)")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.strip() for p in parts):
        raise SamMedftError(
            f"override {item!r}: the key {key!r} has an empty part; write section.key=value "
            "(e.g. train.max_steps=50)"
        )
    node = raw
    for p in parts[:-1]:
        if isinstance(node, list):
            node = _list_item(node, p, item)
            continue
        if node.get(p) is None:  # absent, or a section set to null (`data.hf: null`)
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict | list):
            raise SamMedftError(f"override {item!r}: {p} is not a section")
    last = parts[-1]
    if isinstance(node, list):  # `data.datasets.0=...` replaces a whole entry
        raise SamMedftError(f"override {item!r}: set a key of the entry, e.g. {key}.weight=2")
    try:
        node[last] = yaml.safe_load(value) if value != "" else None
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML: the text as written
        node[last] = value


def _list_item(node: list, part: str, item: str) -> Any:
    """`data.datasets.1.weight=2`: a number indexes a list of sections (the mixture's data
    sets); the item must exist."""
    if not part.isdigit() or int(part) >= len(node):
        raise SamMedftError(f"override {item!r}: {part!r} is not an entry of a list of "
                            f"{len(node)} (counting from 0)")
    return node[int(part)]


_PATH_KEYS = ("img_folder", "mask_folder", "train_list", "val_list", "test_list", "folder")


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Data paths in a recipe file are relative to the current directory when they exist
    there, else to the recipe's folder (so a recipe can ship next to its data)."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    entries = data.get("datasets")
    for node in [data, *(e for e in entries if isinstance(e, dict))] if isinstance(
            entries, list) else [data]:
        for k in _PATH_KEYS:
            v = node.get(k)
            if isinstance(v, str) and not Path(v).is_absolute() and not _exists(Path(v)):
                candidate = base / v
                if _exists(candidate):
                    node[k] = str(candidate)


def _exists(p: Path) -> bool:
    """False, not OSError, for a path the OS cannot look up (a name too long, a NUL byte):
    the data check then reports it as missing, naming the key."""
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid recipe ({source}):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-after"))
        if e["type"] == "extra_forbidden":
            section = _section_for(e["loc"][:-1])
            allowed = ", ".join(section.model_fields) if section else ""
            lines.append(f"  unknown key '{loc}'. Allowed here: {allowed}")
        elif e["type"] == "literal_error":
            lines.append(f"  {loc}: {e['input']!r} is not allowed; {e['msg'].replace('Input should be', 'use')}")
        else:
            lines.append(f"  {loc or 'recipe'}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cands = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cands:
            return None
        model = cands[0]
    return model
