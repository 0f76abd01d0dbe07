"""Push a fine-tuned run to the Hugging Face Hub with a model card, and pull it back.

Why not `PeftModel.push_to_hub`: it goes through transformers' push, which overwrites
README.md with a generic card (`library_name: transformers`) and uploads the adapter alone.
A sam_medft repo needs the adapter, our card, the resolved recipe and the eval summary in
ONE commit (a half-pushed repo would load with the wrong card or no metadata), and errors
a user can act on. Everything that can be checked locally is checked before the first
request, and the run folder is only read (files are staged in a temporary folder).

Repo layout (flat, so `PeftModel.from_pretrained(repo_id)` also works):
`README.md`, the adapter files (`sam_medft.json`, `adapter_config.json`,
`adapter_model.safetensors` or `trainable_model.safetensors`, ...), `recipe.yaml`,
`eval/summary.json`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import (
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_token,
    try_to_load_from_cache,
)
from huggingface_hub import snapshot_download as _snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id

from sam_medft.config import read_recipe_file
from sam_medft.errors import SamMedftError
from sam_medft.model_names import lookup
from sam_medft.runs import (
    ADAPTER_DIR,
    ENCODER_DIR,
    ENCODER_META,
    ENCODER_WEIGHTS,
    META_FILE,
    RECIPE_FILE,
    AdapterMeta,
    find_adapter_folder,
    run_recipe_file,
)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
CARD_TAGS = ["medical-imaging", "image-segmentation", "segment-anything", "sam_medft"]
TOKEN_HELP = "run `hf auth login` or set HF_TOKEN (a token with write access)"
TOKENS_URL = "https://huggingface.co/settings/tokens"
_SKIP_FROM_ADAPTER = {"README.md"}  # PEFT's stub card: ours replaces it


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level errors of the HTTP library the client uses (2.x: httpx2, 1.x: httpx)."""
    found: list[type[Exception]] = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()


# ---- names ---------------------------------------------------------------------------------


def is_hub_id(s: str) -> bool:
    """True if `s` is a syntactically valid Hub repo id ("name" or "namespace/name").

    Syntax only: whether the repo exists is the Hub's answer, whether a folder of that name
    exists locally is `resolve_run`'s first question, and `looks_like_path` says how a string
    that is neither is read.
    """
    if not isinstance(s, str) or not s:
        return False
    try:
        validate_repo_id(s)
    except HFValidationError:
        return False
    return True


def looks_like_path(text: str) -> bool:
    """Whether a string naming a run or model that is not an existing folder means a local
    path (then it is reported missing, never looked up on the Hub).

    The rule: only `owner/name` is a Hub id, and only when no local folder `owner/` exists.
    A path is anything else: a bare `name`; a string starting with `.`, `/`, `~` or `\\` or
    holding a backslash or a drive (`C:`); two or more `/` (`a/b/c`), a trailing `/` or an
    empty part; and `runs/typo` when `runs/` is a local folder (a typo inside a local folder
    is a missing folder, not a missing Hub repo)."""
    text = str(text)
    if not text or text[0] in "./~\\" or "\\" in text or (len(text) > 1 and text[1] == ":"):
        return True
    for sep in {os.sep, os.altsep} - {None, "/"}:
        if sep in text:
            return True
    parts = text.split("/")
    if len(parts) != 2 or not all(parts):
        return True
    return Path(parts[0]).expanduser().is_dir()


def missing_folder_message(kind: str, text: str, fix: str) -> str:
    """`no such <kind> folder: <text>` with what the parent folder holds and the fix."""
    parent = Path(text).expanduser().parent
    why = near = ""
    parts = str(text).split("/")
    if len(parts) == 2 and all(parts) and text[0] not in "./~" and Path(parts[0]).is_dir():
        why = (f" ({parts[0]}/ is a local folder, so {text!r} is read as a path, not a Hub id; "
               f"for the Hub repo of that name, run the command from another folder)")
    if str(parent) not in ("", ".") and parent.is_dir():
        names = sorted(p.name for p in parent.iterdir() if p.is_dir())
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        near = f"; {parent}/ holds: {shown}" if names else f"; {parent}/ holds no folders"
    return f"no such {kind} folder: {text}{why}{near}. {fix}"


def _repo_id_rule(repo_id: str) -> str | None:
    """The Hub's naming rule `repo_id` breaks (None when it is valid)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        # the client's text repeats the id and mentions its own `repo_type` argument: drop both
        rule = str(e).split(" Use `repo_type`")[0].replace(f": '{repo_id}'", "")
        return rule.rstrip(". ") + "."
    return None


def check_repo_id(repo_id: str) -> str:
    """Validate a repo id locally; SamMedftError naming the id and the rule it breaks."""
    rule = _repo_id_rule(repo_id)
    if rule is not None:
        raise SamMedftError(
            f"{repo_id!r} is not a valid Hub repo id: {rule} "
            "Give it as 'your-name/model-name', e.g. 'jane/prostate-lora'."
        )
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to use: the argument, else HF_TOKEN, else the saved `hf auth login` token."""
    token = token or get_token()
    if not token:
        raise SamMedftError(
            f"no Hugging Face token found: {TOKEN_HELP}. Create one at {TOKENS_URL}."
        )
    return token


def check_push_target(repo_id: str, token: str | None = None) -> str:
    """Everything about a push target that can be checked without the network.

    Call it when a recipe says `hub.push: true`, before training starts, so a typo in the
    repo id or a missing login fails in a second rather than after hours of training.
    Returns the token to use.
    """
    check_repo_id(repo_id)
    _refuse_offline(f"pushing to {repo_id!r}")
    return resolve_token(token)


def offline_mode() -> bool:
    """HF_HUB_OFFLINE as the client sees it (read once at its import, or its function)."""
    is_offline = getattr(constants, "is_offline_mode", None)
    return bool(is_offline() if is_offline is not None else constants.HF_HUB_OFFLINE)


def _refuse_offline(action: str) -> None:
    if offline_mode():
        raise SamMedftError(
            f"{action} needs the network but HF_HUB_OFFLINE=1 is set: unset HF_HUB_OFFLINE "
            "(or run the command where the Hub is reachable)."
        )


# ---- the local run folder ------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """What a run folder holds for the Hub (paths that exist, meta already parsed)."""

    run_dir: Path
    adapter_dir: Path
    meta: AdapterMeta
    recipe: Path | None
    summary: Path | None


def inspect_run(run_dir: str | Path) -> RunFiles:
    """Check a run folder has what a push needs (meta + weights), reading only sam_medft.json
    (strictly, as loading will: a repo this sam_medft could not load is never pushed).

    The repo gets sam_medft.json as it is: an older format (1, no multimask) stays loadable
    from the Hub because recipe.yaml travels beside it, where `AdapterMeta.read` looks."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise SamMedftError(
            f"run folder {run_dir} does not exist: pass the folder training wrote (runs/<name>)."
        )
    adapter_dir = find_adapter_folder(run_dir)
    meta = AdapterMeta.read(adapter_dir)
    weights = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise SamMedftError(
            f"{adapter_dir} has {META_FILE} but no weights (adapter_model.safetensors or "
            "trainable_model.safetensors): the training did not finish; re-run it."
        )
    if (
        any(w in PEFT_WEIGHTS for w in weights)
        and not (adapter_dir / "adapter_config.json").is_file()
    ):
        raise SamMedftError(
            f"{adapter_dir} has PEFT weights but no adapter_config.json: the adapter folder is "
            "incomplete; re-run training (or copy adapter_config.json back)."
        )
    # eval/ sits next to adapter/ (also when the adapter/ folder itself is given)
    root = adapter_dir.parent if adapter_dir.name == "adapter" else adapter_dir
    summary = root / "eval" / "summary.json"
    return RunFiles(
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        meta=meta,
        recipe=run_recipe_file(adapter_dir),
        summary=summary if summary.is_file() else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SamMedftError(
            f"{path} is not readable JSON ({e}): re-run training to rewrite it."
        ) from None
    if not isinstance(data, dict):
        raise SamMedftError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


# ---- model card ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One evaluation number for the card (and the model-index)."""

    metric_type: str  # "dice", "nsd", ...
    scope: str  # "foreground mean" or a class name
    value: float


KNOWN_METRICS = ("dice", "iou", "nsd", "hd95", "hd", "assd", "precision", "recall")


def read_eval_metrics(summary: dict[str, Any]) -> list[Metric]:
    """summary.json -> metrics. The one place that knows that file's layout.

    Layout (sam_medft.eval.summary): {"foreground_mean": {"dice": {"mean": x, ...}, ...,
    "n_classes": 2}, "per_class": {"1": {"name": "zone_a", "dice": {"mean": x}, "n_rows": 9,
    ...}}}. A metric is a dict with a finite "mean", or a bare number under a known metric
    name; counters, NaN/None and anything else are skipped rather than guessed.
    """

    def value(name: str, v: Any) -> float | None:
        if isinstance(v, dict):
            v = v.get("mean")
        elif name not in KNOWN_METRICS:
            return None  # a bare number under another name is a counter (n_rows, n_classes)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    groups: list[tuple[str, Any]] = [("foreground mean", summary.get("foreground_mean"))]
    per_class = summary.get("per_class")
    if isinstance(per_class, dict):
        for key, entry in per_class.items():
            name = entry.get("name") if isinstance(entry, dict) else None
            groups.append((str(name or key), entry))
    out: list[Metric] = []
    for scope, metrics in groups:
        if not isinstance(metrics, dict):
            continue
        for name, v in metrics.items():
            if (x := value(str(name).lower(), v)) is not None:
                out.append(Metric(str(name).lower(), scope, x))
    return out


def _card_base_model(base: Any) -> str | None:
    """The Hub id to put in `base_model:` (None for the tiny test model or a local folder)."""
    if not isinstance(base, str) or not base:
        return None
    entry = lookup(base)
    if entry is not None:
        return entry.hub_id
    if "/" in base and is_hub_id(base) and not Path(base).expanduser().exists():
        return base
    return None


def _class_rows(meta: AdapterMeta) -> list[tuple[int, str, str]]:
    """(class index, name, raw mask value) for the card's class table."""
    names = meta.class_names or [f"class_{i}" for i in range(meta.num_classes)]
    value_of = {name: raw for raw, name in (meta.labels or {}).items()}
    return [(i, n, str(value_of.get(n, i))) for i, n in enumerate(names)]


_METHOD_TEXT = {
    "lora": "LoRA",
    "adapter": "bottleneck adapters",
    "vanilla": "full fine-tuning of the trainable part (vanilla)",
}
_SCOPE_TEXT = {"decoder": "mask decoder only", "encdec": "image encoder + mask decoder"}
_PROMPT_TEXT = {
    "none": "none: automatic, prompt-free multi-class segmentation",
    "point": "point prompts (one set per object)",
    "box": "box prompts (one per object)",
    "hybrid": "points + boxes",
}
_NORM_TEXT = {
    "sam": "`sam`: RGB scaled to [0, 1], then ImageNet mean/std",
    "medsam": "`medsam`: min-max to [0, 1] per image",
}

CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

A medical image segmentation model: {{ method_text }} ({{ scope_text }}) on top of
{{ base_text }}, fine-tuned with `sam_medft`.
This repo holds only the trained weights (the frozen base model is not included), the
exact training recipe and the evaluation summary.

## Classes

{% if binary %}Binary segmentation (foreground vs background).
{% endif %}| class index | name | value in the label masks |
|---|---|---|
{% for idx, name, raw in classes %}| {{ idx }} | {{ name }} | {{ raw }} |
{% endfor %}
## Model details

- Base model: {{ base_text }}
- Fine-tuning: {{ method_text }} ({{ scope_text }})
- Prompts: {{ prompt_text }}
- Normalisation: {{ norm_text }}
- Geometry: longest side resized to {{ input_size }}, padded bottom/right to \
{{ input_size }}x{{ input_size }}; masks predicted at {{ mask_size }}x{{ mask_size }} and \
resized back to the original image
- Files: {{ files }}
- sam_medft version: {{ version }}

## Training data

{{ data_description }}

## Evaluation

{% if metrics %}On the {{ split + " split" if split else "evaluation set" }}\
{% if n_cases %} ({{ n_cases }} cases){% endif %}:

| metric | class | value |
|---|---|---|
{% for m in metrics %}| {{ m.metric_type }} | {{ m.scope }} | {{ "%.4f" | format(m.value) }} |
{% endfor %}
{% if policy %}
Empty cases: {{ policy }}
{% endif %}
The full summary is in `eval/summary.json`.
{% else %}No evaluation summary was pushed with this model.
{% endif %}
## Usage

```bash
pip install sam_medft
```

```python
import sam_medft

model = sam_medft.load("{{ repo_id }}")
labels = model.predict("slice.png")  # integer label map at the image's original size
```

From the command line (one label image per input image):

```bash
sam-medft predict {{ repo_id }} images/ --out preds/
```
{% if recipe %}
## Training recipe

The resolved recipe (`recipe.yaml` in this repo); `sam-medft train recipe.yaml` re-runs it.

<details>
<summary>recipe.yaml</summary>

```yaml
{{ recipe }}
```

</details>
{% endif %}
## Limitations

Trained and evaluated on the data described above only; not a medical device. Check the
predictions on your own data before relying on them.
"""


def build_model_card(
    run_dir: str | Path, repo_id: str | None = None, *, license: str | None = None
) -> ModelCard:
    """The model card (README.md) for a run: Hub metadata + classes, preprocessing, metrics.

    `repo_id` goes into the usage snippet (the run folder's path when None, so a local card
    is also correct). The license comes from the argument, else `license` in sam_medft.json,
    else `hub.license` in the recipe; it is left out when none says.
    """
    return _build_card(inspect_run(run_dir), repo_id, license)


def _build_card(run: RunFiles, repo_id: str | None, license: str | None) -> ModelCard:
    meta = run.meta
    recipe = read_recipe_file(run.recipe) if run.recipe else {}
    summary = _read_json(run.summary) if run.summary else {}
    metrics = read_eval_metrics(summary)
    target = repo_id or str(run.run_dir)
    title = (repo_id or run.run_dir.resolve().name).split("/")[-1]

    hub_cfg = recipe.get("hub")
    license = (
        license
        or meta.license
        or (hub_cfg.get("license") if isinstance(hub_cfg, dict) else None)
    )
    method = meta.method
    base = meta.base_model
    base_id = _card_base_model(base)
    run_info = summary.get("run") if isinstance(summary.get("run"), dict) else {}
    split = summary.get("split") or run_info.get("split")
    split = str(split) if split else None
    data_description = meta.data_description.strip()
    dataset_type = str(summary.get("dataset") or run_info.get("data") or "custom")[:80]
    dataset_name = (data_description.splitlines() or ["own data"])[0][:80] or "own data"

    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Image Segmentation",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=m.metric_type,
            metric_name=f"{m.metric_type} ({m.scope})",
            metric_value=round(m.value, 4),
        )
        for m in metrics
    ]
    tags = list(dict.fromkeys([*CARD_TAGS, method.lower(), "peft"]))
    card_data = ModelCardData(
        library_name="peft",
        base_model=base_id,
        license=license,
        tags=tags,
        pipeline_tag="image-segmentation",
        model_name=title,
        eval_results=eval_results or None,
    )
    if base_id:
        base_text = f"[{base_id}](https://huggingface.co/{base_id})"
    elif not base or (lookup(base) is not None and lookup(base).is_tiny):  # tiny-mobilesam too
        base_text = (f"the built-in random `{base or 'tiny'}` model (built from a config with "
                     "random weights: a test/demo model, not for real use)")
    else:
        base_text = f"`{base}` (a local model folder)"
    if meta.base_revision:
        base_text += f" at revision `{meta.base_revision}`"
    recipe_text = run.recipe.read_text(encoding="utf-8").rstrip() if run.recipe else ""
    files = ", ".join(
        f"`{p.name}`"
        for p in sorted(run.adapter_dir.iterdir())
        if p.is_file() and p.name not in _SKIP_FROM_ADAPTER
    )
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        title=title,
        repo_id=target,
        base_text=base_text,
        method_text=_METHOD_TEXT.get(method.lower(), f"PEFT `{method}`"),
        scope_text=_SCOPE_TEXT.get(meta.scope, meta.scope),
        prompt_text=_PROMPT_TEXT.get(meta.prompt_mode, meta.prompt_mode),
        norm_text=_NORM_TEXT.get(meta.normalization, f"`{meta.normalization}`"),
        input_size=meta.input_size,
        mask_size=meta.mask_size,
        binary=meta.binary,
        classes=_class_rows(meta),
        data_description=data_description or "Not described.",
        metrics=metrics,
        split=split,
        n_cases=summary.get("n_cases") or summary.get("num_cases"),
        policy=summary.get("policy_description"),
        files=files,
        version=meta.sam_medft_version,
        recipe=recipe_text if len(recipe_text) < 20_000 else "",
    )


# ---- push ----------------------------------------------------------------------------------


def _stage(run: RunFiles, card: ModelCard, dest: Path) -> list[str]:
    """Lay out the repo in `dest` (hard links where possible: the run folder is only read)."""

    def put(src: Path, rel: str) -> None:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # never write through a link into the run folder
        try:
            os.link(src, target)
        except OSError:  # other file system, or links not allowed
            shutil.copy2(src, target)

    for src in sorted(run.adapter_dir.rglob("*")):
        rel = src.relative_to(run.adapter_dir).as_posix()
        if src.is_file() and rel not in _SKIP_FROM_ADAPTER and not rel.startswith("."):
            put(src, rel)
    if run.recipe:
        put(run.recipe, RECIPE_FILE)
    if run.summary:
        put(run.summary, "eval/summary.json")
    (dest / "README.md").unlink(missing_ok=True)
    (dest / "README.md").write_text(str(card), encoding="utf-8")
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a run (adapter + card + recipe + eval summary) as ONE commit; return its URL.

    `private=True` creates the repo private; False leaves the Hub's (or the organisation's)
    default, and an existing repo keeps its visibility. `revision` pushes to that branch,
    created from main when missing. The run folder is never written to.
    """
    if is_encoder_run(run_dir):
        return push_encoder(run_dir, repo_id, private=private, revision=revision, token=token,
                            endpoint=endpoint, commit_message=commit_message)
    run = inspect_run(run_dir)
    if revision is not None and not revision.strip():
        raise SamMedftError("--revision is empty: give a branch name (e.g. v1) or leave it out.")
    token = check_push_target(repo_id, token)
    api = HfApi(endpoint=endpoint, token=token, library_name="sam_medft")
    where = f"pushing {run.run_dir} to {repo_id!r} on {api.endpoint}"
    card = _build_card(run, repo_id, None)
    with hub_errors(where, repo_id, api.endpoint, push=True):
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        repo_id = repo_url.repo_id or repo_id  # a bare name lands in the token owner's namespace
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sam_medft-push-") as tmp:
            _stage(run, card, Path(tmp))
            api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                revision=revision,
                commit_message=commit_message
                or f"Upload {run.run_dir.resolve().name} with sam_medft",
            )
    url = f"{api.endpoint}/{repo_id}"
    return f"{url}/tree/{revision}" if revision else url


def is_encoder_run(run_dir: str | Path) -> bool:
    """A `sam-medft pretrain` run (encoder/, no adapter/)."""
    root = Path(run_dir).expanduser()
    return (root / ENCODER_DIR / ENCODER_WEIGHTS).is_file() and not (root / ADAPTER_DIR).exists()


def push_encoder(run_dir: str | Path, repo_id: str, *, private: bool = False,
                 revision: str | None = None, token: str | None = None,
                 endpoint: str | None = None, commit_message: str | None = None) -> str:
    """Upload a pretrain run's encoder (weights + sam_medft_encoder.json), its recipe and a
    card as ONE commit; fine-tuning takes the repo id as `model.encoder_weights`."""
    root = Path(run_dir).expanduser()
    folder = root / ENCODER_DIR
    meta_file = folder / ENCODER_META
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SamMedftError(f"{meta_file} is missing or not JSON ({e}): the pretraining did not "
                            f"finish; re-run `sam-medft pretrain`") from None
    token = check_push_target(repo_id, token)
    api = HfApi(endpoint=endpoint, token=token, library_name="sam_medft")
    card = (f"---\nlibrary_name: sam_medft\ntags: [{', '.join(CARD_TAGS)}, self-supervised]\n"
            f"---\n# {repo_id}\n\nA SAM image encoder pretrained with masked image modelling "
            f"(`sam-medft pretrain`, Setup 3) from `{meta.get('base_model')}`, "
            f"{meta.get('step')} steps; validation masked-reconstruction L1 "
            f"{meta.get('val_recon_loss')}.\n\nFine-tune from it:\n\n```bash\nsam-medft train "
            f"RECIPE model.name={meta.get('base_model')} model.encoder_weights={repo_id}\n```\n")
    with hub_errors(f"pushing {root} to {repo_id!r} on {api.endpoint}", repo_id, api.endpoint,
                    push=True):
        repo_id = api.create_repo(repo_id, private=True if private else None,
                                  exist_ok=True).repo_id or repo_id
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sam_medft-push-") as tmp:
            dest = Path(tmp)
            for src in (folder / ENCODER_WEIGHTS, meta_file, root / RECIPE_FILE):
                if src.is_file():
                    shutil.copy2(src, dest / src.name)
            (dest / "README.md").write_text(card, encoding="utf-8")
            api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                              commit_message=commit_message
                              or f"Upload encoder {root.resolve().name} with sam_medft")
    url = f"{api.endpoint}/{repo_id}"
    return f"{url}/tree/{revision}" if revision else url


def is_hub_run(name: str, *, ask_hub: bool = True) -> bool:
    """Whether `name` is a Hub repo that holds a sam_medft run (its sam_medft.json), e.g. a
    pushed Setup 2 model given as `model.name`. Local paths are not asked about; the Hub
    cache answers first; an unreachable Hub (or offline mode, or `ask_hub=False`) answers
    False, so a base model id takes its usual path and its usual messages."""
    if looks_like_path(name) or not is_hub_id(name) or "/" not in name:
        return False
    if isinstance(try_to_load_from_cache(name, META_FILE), str):
        return True
    if offline_mode() or not ask_hub:
        return False
    try:
        return HfApi(library_name="sam_medft").file_exists(name, META_FILE)
    except (HfHubHTTPError, HFValidationError, OSError, *TRANSPORT_ERRORS):
        return False


def download_encoder(repo_id: str, revision: str | None = None) -> Path:
    """A pushed pretrain run's files from the Hub (cached) -> the local folder."""
    where = f"downloading the encoder {repo_id!r}"
    with hub_errors(where, repo_id, constants.ENDPOINT, push=False):
        return Path(_snapshot_download(repo_id, revision=revision,
                                       allow_patterns=[ENCODER_WEIGHTS, ENCODER_META]))


def push_recipe_run(run_dir: str | Path, hub_config: Any, **kwargs: Any) -> str:
    """`hub.push: true` after training: push with the recipe's `hub.repo_id` / `hub.private`."""
    return push_run(
        run_dir,
        hub_config.repo_id,
        private=bool(getattr(hub_config, "private", False)),
        revision=getattr(hub_config, "revision", None),
        **kwargs,
    )


# ---- pull ----------------------------------------------------------------------------------


def resolve_run(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> Path:
    """A local run/adapter folder or a Hub id -> the local folder holding sam_medft.json.

    Local folders win over Hub ids of the same spelling; a string that `looks_like_path` and
    does not exist is a missing folder (no Hub request). Hub repos are downloaded with
    `snapshot_download` into the Hub cache (HF_HUB_CACHE, or `cache_dir`), so a second call,
    and a call with HF_HUB_OFFLINE=1, reads the cached copy.
    """
    text = str(path_or_repo_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return find_adapter_folder(path)
    if path.exists():
        raise SamMedftError(
            f"{path} is a file: pass a run folder (runs/<name>), its adapter/ folder or a Hub id."
        )
    if isinstance(path_or_repo_id, Path) or looks_like_path(text):
        raise SamMedftError(missing_folder_message(
            "run", text, "Check the path: `sam-medft train` writes runs/<name>/ (pass that "
            "folder or its adapter/ folder); a Hub id is written owner/name."))
    if not is_hub_id(text):
        raise SamMedftError(
            f"{text!r} is neither an existing folder nor a Hub repo id ({_repo_id_rule(text)}): "
            "check the path, or give a Hub id like your-name/model-name."
        )
    cache = Path(cache_dir).expanduser() if cache_dir else Path(constants.HF_HUB_CACHE)
    where = f"downloading {text!r}"
    with hub_errors(where, text, endpoint or constants.ENDPOINT, push=False, cache=cache):
        folder = Path(
            _snapshot_download(
                text, revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir
            )
        )
    if not (folder / META_FILE).is_file():
        raise SamMedftError(
            f"Hub repo {text!r} has no {META_FILE}: it is not a sam_medft model (push one with "
            "`sam-medft push RUN_DIR REPO_ID`), or pass the right repo id."
        )
    return folder


# ---- errors --------------------------------------------------------------------------------


@contextmanager
def hub_errors(
    where: str, repo_id: str, endpoint: str, *, push: bool, cache: Path | None = None
) -> Iterator[None]:
    """Turn the Hub client's exceptions into one SamMedftError each, with the fix."""
    tail = " No commit was made; the run folder is unchanged." if push else ""
    try:
        yield
    except OfflineModeIsEnabled:
        raise SamMedftError(
            f"{where}: HF_HUB_OFFLINE=1 is set: unset it to use the Hub.{tail}"
        ) from None
    except GatedRepoError:
        raise SamMedftError(
            f"{where}: {repo_id!r} is a gated repo: accept its conditions at "
            f"{endpoint}/{repo_id} while logged in, then run `hf auth login` or set HF_TOKEN."
            f"{tail}"
        ) from None
    except RevisionNotFoundError:
        raise SamMedftError(
            f"{where}: the revision does not exist in {repo_id!r}: check the branch, tag or commit "
            "(or leave --revision out for main)."
        ) from None
    except RepositoryNotFoundError:
        fix = (
            "check the namespace, and that your token may write there"
            if push
            else f"check the spelling (there is no local folder {repo_id!r} either); if the repo "
            f"is private, run `hf auth login` or set HF_TOKEN (a token that may read it)"
        )
        raise SamMedftError(
            f"{where}: repo {repo_id!r} was not found on {endpoint}: {fix}.{tail}"
        ) from None
    except LocalEntryNotFoundError as e:  # pull only: no network and not in the cache
        if offline_mode():
            raise SamMedftError(
                f"{where}: {repo_id!r} is not in the Hub cache ({cache}) and HF_HUB_OFFLINE=1 "
                f"forbids downloading it: unset HF_HUB_OFFLINE, or download it once while online "
                f"(`hf download {repo_id}`)."
            ) from None
        cause = e.__cause__
        status = _status(cause) if isinstance(cause, HfHubHTTPError) else None
        if status is not None and status >= 500:
            raise SamMedftError(
                f"{where}: the Hub answered {status} (a server error) and {repo_id!r} is not in "
                f"the cache ({cache}): try again in a few minutes."
            ) from None
        raise SamMedftError(
            f"{where}: could not reach {endpoint} and {repo_id!r} is not in the Hub cache "
            f"({cache}): check the network and HF_ENDPOINT ({e.__class__.__name__})."
        ) from None
    except HfHubHTTPError as e:
        status = _status(e)
        if status in (401, 403) and not push:
            raise SamMedftError(
                f"{where}: the Hub rejected the token (HTTP {status}: {_server_message(e)}); it is "
                f"invalid or expired. Create a token at {TOKENS_URL}, then run `hf auth login` "
                f"or set HF_TOKEN (or unset HF_TOKEN for a public repo)."
            ) from None
        if status in (401, 403):
            raise SamMedftError(
                f"{where}: the Hub rejected the token (HTTP {status}: {_server_message(e)}); it is "
                f"invalid, expired or has no write access to {repo_id!r}. Create a write token at "
                f"{TOKENS_URL}, then {TOKEN_HELP}.{tail}"
            ) from None
        if status == 404:
            raise SamMedftError(
                f"{where}: the Hub answered 404 ({_server_message(e)}): check the repo id and "
                f"revision.{tail}"
            ) from None
        if status is not None and status >= 500:
            raise SamMedftError(
                f"{where}: the Hub answered {status} (a server error: {_server_message(e)}); "
                f"try again in a few minutes.{tail}"
            ) from None
        raise SamMedftError(
            f"{where}: the Hub answered {status}: {_server_message(e)}.{tail}"
        ) from None
    except TRANSPORT_ERRORS as e:
        raise SamMedftError(
            f"{where}: could not reach {endpoint} ({e.__class__.__name__}: {e}): check the network "
            f"and HF_ENDPOINT.{tail}"
        ) from None
    except ValueError as e:  # the Hub refused the card's YAML header; other ValueErrors are bugs
        if "README.md" not in str(e):
            raise
        raise SamMedftError(f"{where}: {e}{tail}") from None


def _status(e: HfHubHTTPError) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _server_message(e: HfHubHTTPError) -> str:
    server = getattr(e, "server_message", None)
    if server:
        return str(server).strip().splitlines()[0]
    return str(e).strip().splitlines()[0]


__all__ = [
    "CARD_TEMPLATE",
    "Metric",
    "RunFiles",
    "build_model_card",
    "check_push_target",
    "check_repo_id",
    "inspect_run",
    "hub_errors",
    "is_hub_id",
    "looks_like_path",
    "missing_folder_message",
    "offline_mode",
    "push_recipe_run",
    "push_run",
    "read_eval_metrics",
    "resolve_run",
    "resolve_token",
]
