"""Medical-SAM-Adapter bottleneck adapters, as a PEFT adapter that saves, loads and pushes.

Placement (the study's, on transformers' module names):
- encoder block N (`vision_encoder.layers.N`): `attn` is wrapped so its output becomes
  `a + up(act(down(a)))` (the study's Space_Adapter); `mlp` is wrapped as
  `mlp(x) + mlp_scale * up(act(down(x)))` (MLP_Adapter, in parallel, scale 0.5).
- mask-decoder two-way block M (`mask_decoder.transformer.layers.M`): `layer_norm2` is wrapped
  as `norm(q + up(act(down(q))))`, i.e. an adapter on the queries after the token-to-image
  cross-attention residual and before its norm; `mlp` as above; `layer_norm4` the same way on
  the keys after the image-to-token residual. The study shares ONE adapter between the q and
  k positions; here each position has its own weights (cleaner state-dict keys, and the
  queries and image keys are different distributions), so a decoder block has 3 adapters.
- bottleneck dim = round(ratio * hidden); the up-projection starts at zero so a fresh
  adapter is exactly the identity (the study initialised it randomly, which perturbs frozen
  features whenever an adapter receives no gradient).

Why LoRA's custom-module dispatch: PEFT 0.21 has no bottleneck method and
`register_peft_method` only accepts names already in the `PeftType` enum, so a new tuner
cannot be loaded by `PeftModel.from_pretrained`. LoRA's experimental
`LoraConfig._register_custom_module({TargetClass: LayerClass})` replaces any module class
with our own `LoraLayer` subclass and keeps PEFT's whole machinery (freezing, adapter-only
state dict, `modules_to_save`, `disable_adapter()`, `save_pretrained`, `push_to_hub`). The
dispatch is keyed by the target's class, so there is one layer class per role (attention,
MLP block, LayerNorm); the target regex names the exact modules, which keeps the generic
`nn.LayerNorm` key from touching any other norm. The class mapping is not saved, so loading
must go through `load_bottleneck` (it re-registers it).

What `adapter_config.json` holds (peft_type stays "LORA"):
- `rank_pattern`: bottleneck dim per module group (encoder / decoder differ in width);
- `alpha_pattern`: `alpha = scale * dim`, so LoRA's own rule `scaling = alpha / r` gives the
  adapter's output scale (1 for the attention/norm adapters, `mlp_scale` for MLP adapters);
- `bottleneck`: an extra field of `BottleneckConfig` (a LoraConfig subclass) with the
  `BottleneckSettings` (ratio, activation, mlp_scale, encoder_layers, decoder). The
  activation lives only here; its presence is also what `is_bottleneck_adapter` checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from pydantic import ValidationError
from torch import nn

from sam_medft.adapters.compat import peft_call
from sam_medft.config import PeftSettings
from sam_medft.errors import SamMedftError

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
ENCODER_PREFIX = "vision_encoder.layers"
DECODER_PREFIX = "mask_decoder.transformer.layers"
_ENCODER_PARTS = ("attn", "mlp")  # per encoder block: adapter roles, by child name
_DECODER_PARTS = ("layer_norm2", "mlp", "layer_norm4")
_CONFIG_FILE = "adapter_config.json"


# BottleneckSettings field -> its `peft:` recipe key (the schema holds default and range)
_RECIPE_KEYS = {"ratio": "bottleneck_ratio", "activation": "activation", "mlp_scale": "mlp_scale"}


def _recipe_default(field_name: str) -> Any:
    return PeftSettings.model_fields[_RECIPE_KEYS[field_name]].default


@dataclass(frozen=True)
class BottleneckSettings:
    """The adapter knobs. ratio, activation and mlp_scale take their defaults and ranges from
    the recipe schema (`PeftSettings`: the study's 0.25, GELU, 0.5); `encoder_layers`
    defaults to the study's blocks [0,1,10,11] (a recipe's `peft.layers` is passed in).

    `encoder_layers`: block indices, "all", or None/empty for decoder-only scope.
    """

    ratio: float = _recipe_default("ratio")
    activation: str = _recipe_default("activation")
    mlp_scale: float = _recipe_default("mlp_scale")
    encoder_layers: tuple[int, ...] | Literal["all"] | None = (0, 1, 10, 11)
    decoder: bool = True

    def __post_init__(self) -> None:
        try:
            checked = PeftSettings(
                method="adapter", **{key: getattr(self, name) for name, key in _RECIPE_KEYS.items()}
            )
        except ValidationError as e:
            first = e.errors()[0]
            name = next(n for n, k in _RECIPE_KEYS.items() if k == first["loc"][0])
            fix = first["msg"].replace("Input should be", "it should be")
            raise SamMedftError(f"bottleneck {name} {first['input']!r} is invalid: {fix}, "
                                f"e.g. {_recipe_default(name)!r} (the study's value)") from None
        for name, key in _RECIPE_KEYS.items():  # as the schema parsed them ("0.5" -> 0.5)
            object.__setattr__(self, name, getattr(checked, key))
        layers = self.encoder_layers
        if layers is None or layers == "all":
            normalised: tuple[int, ...] | str | None = layers
        elif isinstance(layers, str):
            raise SamMedftError(
                f"bottleneck encoder_layers {layers!r} is not valid; use a list of block "
                "indices such as [0, 1, 10, 11], 'all', or an empty list for decoder only"
            )
        else:
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise SamMedftError(
                    f"bottleneck encoder_layers {list(layers)!r} must hold non-negative "
                    "integer block indices, e.g. [0, 1, 10, 11]"
                )
            normalised = tuple(sorted(set(layers))) or None
        object.__setattr__(self, "encoder_layers", normalised)
        if self.encoder_layers is None and not self.decoder:
            raise SamMedftError(
                "bottleneck settings select no module: encoder_layers is empty and decoder is "
                "off; set encoder_layers (e.g. [0, 1, 10, 11] or 'all') or decoder: true"
            )

    @classmethod
    def from_recipe(cls, peft: PeftSettings, encoder_layers: Sequence[int] | None,
                    ) -> BottleneckSettings:
        """The recipe's bottleneck keys with its resolved encoder blocks (None/[]: decoder only)."""
        return cls(**{name: getattr(peft, key) for name, key in _RECIPE_KEYS.items()},
                   encoder_layers=encoder_layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.encoder_layers, tuple):
            d["encoder_layers"] = list(self.encoder_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BottleneckSettings:
        d = dict(d)
        if isinstance(d.get("encoder_layers"), list):
            d["encoder_layers"] = tuple(d["encoder_layers"])
        return cls(**d)


@dataclass
class BottleneckConfig(LoraConfig):
    """A LoraConfig that also persists the bottleneck settings (the activation is only here)."""

    bottleneck: dict[str, Any] | None = field(
        default=None, metadata={"help": "BottleneckSettings.to_dict() of this adapter"}
    )

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> BottleneckConfig:
        # PEFT maps peft_type "LORA" to LoraConfig, which would drop the `bottleneck` field.
        kwargs.pop("peft_type", None)
        return super().from_peft_type(**kwargs)


class _BottleneckLayer(nn.Module, LoraLayer):
    """Base of the three wrappers: one down/act/up bottleneck per adapter name.

    Parameter names start with `lora_` because LoRA's trainable-parameter marking and its
    state-dict filter select parameters by that prefix.
    """

    adapter_layer_names = ("lora_down", "lora_up")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_act")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: LoraConfig,
        r: int,
        lora_alpha: float,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        self.lora_down = nn.ModuleDict()
        self.lora_up = nn.ModuleDict()
        self.lora_act = nn.ModuleDict()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, config)

    @staticmethod
    def _features(base: nn.Module) -> int:
        """Width of the tensor the adapter sees."""
        raise NotImplementedError

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        # PEFT only knows Linear/Conv widths; without this it warns "Unsupported layer type".
        dim = self._features(module)
        return dim, dim

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig, **kwargs: Any
    ) -> None:
        settings = getattr(config, "bottleneck", None)
        if not settings:
            raise SamMedftError(
                "a bottleneck adapter layer was built from a LoraConfig without bottleneck "
                "settings; build the config with bottleneck_lora_config() or load the folder "
                "with load_bottleneck()"
            )
        base = self.get_base_layer()
        ref = next(base.parameters())
        dim = self.in_features
        down = nn.Linear(dim, r, device=ref.device, dtype=ref.dtype)
        up = nn.Linear(r, dim, device=ref.device, dtype=ref.dtype)
        if config.init_lora_weights is not False:  # False: the study's random init (tests)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.lora_down[adapter_name] = down
        self.lora_up[adapter_name] = up
        self.lora_act[adapter_name] = ACTIVATIONS[settings["activation"]]()
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """Sum of the active adapters' outputs, or None when none applies."""
        if self.disable_adapters:
            return None
        out = None
        for name in self.active_adapters:
            if name not in self.lora_down:
                continue
            down = self.lora_down[name]
            h = self.lora_up[name](self.lora_act[name](down(x.to(down.weight.dtype))))
            h = (h * self.scaling[name]).to(x.dtype)
            out = h if out is None else out + h
        return out

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise SamMedftError(
            "bottleneck adapters are non-linear and cannot be merged into the base weights; "
            "keep the adapter and load it with sam_medft.adapters.bottleneck.load_bottleneck()"
        )

    def unmerge(self) -> None:  # nothing is ever merged
        return None

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


class BottleneckAttention(_BottleneckLayer):
    """Wraps a vision attention block: `out + adapter(out)` on its first output."""

    @staticmethod
    def _features(base: nn.Module) -> int:
        return base.proj.out_features

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        delta = self._delta(hidden)
        if delta is None:
            return out
        hidden = hidden + delta
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


class BottleneckMLP(_BottleneckLayer):
    """Wraps an MLP block: `mlp(x) + mlp_scale * adapter(x)` (parallel adapter)."""

    @staticmethod
    def _features(base: nn.Module) -> int:
        return base.lin1.in_features

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        delta = self._delta(x)
        return out if delta is None else out + delta


class BottleneckNorm(_BottleneckLayer):
    """Wraps the LayerNorm after a residual: `norm(x + adapter(x))` (the study's placement)."""

    @staticmethod
    def _features(base: nn.Module) -> int:
        return base.normalized_shape[-1]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        delta = self._delta(x)
        return self.base_layer(x if delta is None else x + delta, *args, **kwargs)


_ROLE_LAYER = {"attn": BottleneckAttention, "mlp": BottleneckMLP, "norm": BottleneckNorm}
_PART_ROLE = {"attn": "attn", "mlp": "mlp", "layer_norm2": "norm", "layer_norm4": "norm"}


def _get(model: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        return None


def _describe(model: nn.Module) -> str:
    """What the model has instead: its class and top-level / vision-encoder children."""
    top = [n for n, _ in model.named_children()]
    enc = _get(model, "vision_encoder")
    extra = f", vision_encoder has {[n for n, _ in enc.named_children()]}" if enc else ""
    return f"{type(model).__name__} with children {top}{extra}"


def _fits(block: nn.Module, part: str) -> bool:
    """Whether `block.part` exists and its wrapper can read its width (SAM's layout)."""
    module = getattr(block, part, None)
    if not isinstance(module, nn.Module):
        return False
    try:
        return isinstance(_ROLE_LAYER[_PART_ROLE[part]]._features(module), int)
    except (AttributeError, IndexError, TypeError):
        return False


def _blocks(
    model: nn.Module, prefix: str, parts: Sequence[str], what: str, skip: str
) -> list[nn.Module]:
    """The blocks under `prefix`, or a SamMedftError saying what was expected and found."""
    blocks = _get(model, prefix)
    ok = isinstance(blocks, nn.ModuleList) and len(blocks) > 0
    if ok:
        ok = all(_fits(b, p) for b in blocks for p in parts)
    if not ok:
        raise SamMedftError(
            f"bottleneck adapters need {what}: `{prefix}.N.{{{','.join(parts)}}}` (SamModel, "
            f"SamHQModel, MedSAM, SlimSAM), but the model is {_describe(model)}; use "
            f"method 'lora' for this model, or leave this part out ({skip})"
        )
    return list(blocks)


def _resolve(model: nn.Module, settings: BottleneckSettings) -> tuple[list[int], int]:
    """The encoder block indices to adapt and the number of decoder blocks (0 = none)."""
    if isinstance(model, PeftModel):
        raise SamMedftError(
            "the model already has a PEFT adapter; pass the plain base model (e.g. "
            "peft_model.get_base_model() after unload()) to apply bottleneck adapters"
        )
    enc: list[int] = []
    if settings.encoder_layers is not None:
        n = len(
            _blocks(
                model, ENCODER_PREFIX, _ENCODER_PARTS, "SAM encoder blocks", "encoder_layers: []"
            )
        )
        enc = list(range(n)) if settings.encoder_layers == "all" else list(settings.encoder_layers)
        bad = [i for i in enc if i >= n]
        if bad:
            raise SamMedftError(
                f"bottleneck encoder_layers {bad} do not exist: this encoder has {n} blocks "
                f"(0..{n - 1}); pick indices in that range or 'all'"
            )
    n_dec = 0
    if settings.decoder:
        what = "SAM two-way decoder blocks"
        n_dec = len(_blocks(model, DECODER_PREFIX, _DECODER_PARTS, what, "decoder: false"))
    return enc, n_dec


def _targets(enc: list[int], n_dec: int) -> dict[str, str]:
    """Full module name -> role (attn | mlp | norm) for every module that gets an adapter."""
    names = {f"{ENCODER_PREFIX}.{i}.{p}": _PART_ROLE[p] for i in enc for p in _ENCODER_PARTS}
    names |= {
        f"{DECODER_PREFIX}.{i}.{p}": _PART_ROLE[p] for i in range(n_dec) for p in _DECODER_PARTS
    }
    return names


def _custom_modules(model: nn.Module, targets: dict[str, str]) -> dict[type, type]:
    """Target class -> wrapper class, from the classes this model really has."""
    mapping: dict[type, type] = {}
    for name, role in targets.items():
        cls = type(model.get_submodule(name))
        layer = _ROLE_LAYER[role]
        if mapping.get(cls, layer) is not layer:
            raise SamMedftError(
                f"module class {cls.__name__} is used for two adapter roles in this model "
                f"({name}); bottleneck adapters cannot wrap it, use method 'lora' instead"
            )
        mapping[cls] = layer
    return mapping


def _modules_to_save(
    model: nn.Module, names: Sequence[str] | None, targets: dict[str, str]
) -> list[str] | None:
    """Checked full names; a ModuleList/ModuleDict becomes its children (PEFT rejects both)."""
    if not names:
        return None
    out: list[str] = []
    for name in names:
        module = _get(model, name)
        if module is None:
            raise SamMedftError(
                f"modules_to_save entry {name!r} is not a module of {type(model).__name__}; "
                "use full names such as 'mask_decoder.iou_prediction_head'"
            )
        inside = [t for t in targets if t == name or t.startswith(name + ".")]
        if inside:
            raise SamMedftError(
                f"modules_to_save entry {name!r} contains bottleneck adapter targets "
                f"({inside[0]}, ...); list only the decoder heads (mask_tokens, "
                "output_hypernetworks_mlps, iou_prediction_head), not a whole block"
            )
        if isinstance(module, nn.ModuleList | nn.ModuleDict):
            out += [f"{name}.{child}" for child, _ in module.named_children()]
        else:
            out.append(name)
    return out


def _group_regexes(enc: list[int], dec: bool) -> dict[str, str]:
    """Regex per (scope, role) group; full names, so nothing else (e.g. other norms) matches."""
    groups: dict[str, str] = {}
    if enc:
        idx = "|".join(str(i) for i in enc)
        groups["enc_attn"] = rf"{re.escape(ENCODER_PREFIX)}\.(?:{idx})\.attn"
        groups["enc_mlp"] = rf"{re.escape(ENCODER_PREFIX)}\.(?:{idx})\.mlp"
    if dec:
        groups["dec_norm"] = rf"{re.escape(DECODER_PREFIX)}\.\d+\.(?:layer_norm2|layer_norm4)"
        groups["dec_mlp"] = rf"{re.escape(DECODER_PREFIX)}\.\d+\.mlp"
    return groups


def bottleneck_lora_config(
    model: nn.Module,
    settings: BottleneckSettings | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> BottleneckConfig:
    """The PEFT config for `model`, with the wrapper classes registered for its module classes.

    `modules_to_save` (e.g. the class-dependent decoder heads) are trained in full and stored
    in the adapter file, as with LoRA.
    """
    settings = settings or BottleneckSettings()
    enc, n_dec = _resolve(model, settings)
    targets = _targets(enc, n_dec)
    groups = _group_regexes(enc, n_dec > 0)
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for group, regex in groups.items():
        first = next(n for n in targets if re.fullmatch(regex, n))
        hidden = _ROLE_LAYER[targets[first]]._features(model.get_submodule(first))
        dim = max(1, round(settings.ratio * hidden))
        scale = settings.mlp_scale if group.endswith("mlp") else 1.0
        ranks[regex] = dim
        alphas[regex] = scale * dim
    first_group = next(iter(groups.values()))
    config = BottleneckConfig(
        r=ranks[first_group],
        lora_alpha=alphas[first_group],
        rank_pattern=ranks,
        alpha_pattern=alphas,
        target_modules="|".join(f"(?:{r})" for r in groups.values()),
        lora_dropout=0.0,
        bias="none",
        modules_to_save=_modules_to_save(model, modules_to_save, targets),
        bottleneck=settings.to_dict(),
    )
    config._register_custom_module(_custom_modules(model, targets))
    return config


def apply_bottleneck(
    model: nn.Module,
    settings: BottleneckSettings | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> PeftModel:
    """Wrap `model` (modified in place) with fresh identity bottleneck adapters; base frozen."""
    with peft_call():
        return get_peft_model(model, bottleneck_lora_config(model, settings, modules_to_save))


def _config_path(path: str | Path) -> Path:
    p = Path(path)
    cfg = p / _CONFIG_FILE if p.is_dir() else p
    if not cfg.is_file():
        raise SamMedftError(
            f"{p} has no {_CONFIG_FILE}; pass the folder written by save_pretrained() "
            "(download Hub adapters first, e.g. huggingface_hub.snapshot_download)"
        )
    return cfg


def is_bottleneck_adapter(path: str | Path) -> bool:
    """True when the local adapter folder (or its adapter_config.json) holds bottleneck adapters."""
    cfg = _config_path(path)
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SamMedftError(f"{cfg} is not valid JSON ({e}); re-save the adapter") from e
    return isinstance(data, dict) and isinstance(data.get("bottleneck"), dict)


def read_bottleneck_settings(path: str | Path) -> BottleneckSettings:
    """The BottleneckSettings stored in a saved adapter folder (for cards and summaries)."""
    if not is_bottleneck_adapter(path):
        raise SamMedftError(
            f"{path} is not a bottleneck adapter (its {_CONFIG_FILE} has no 'bottleneck' "
            "entry); load it as a LoRA adapter with peft.PeftModel.from_pretrained"
        )
    return BottleneckSettings.from_dict(json.loads(_config_path(path).read_text())["bottleneck"])


def load_bottleneck(
    base_model: nn.Module, path: str | Path, is_trainable: bool = False
) -> PeftModel:
    """Load a saved bottleneck adapter onto a fresh base model (re-registers the wrappers)."""
    settings = read_bottleneck_settings(path)
    folder = str(_config_path(path).parent)
    config = BottleneckConfig.from_pretrained(folder)
    targets = _targets(*_resolve(base_model, settings))
    config._register_custom_module(_custom_modules(base_model, targets))
    with peft_call():
        return PeftModel.from_pretrained(base_model, folder, config=config,
                                         is_trainable=is_trainable)
