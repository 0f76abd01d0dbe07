"""Raw mask values -> class indices, and back.

Masks store arbitrary integers (0/255, 0/128/255, 16-bit atlas ids). The model needs
contiguous class indices 0..K-1 with background first. The study's code silently kept raw
values (a CUDA assert for anything >= num_cls) or broke on its pickled mapping; here a
value that the recipe does not map is an error that names the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import numpy as np

from sam_medft.errors import SamMedftError

_LUT_LIMIT = 1 << 20  # raw values below this map through a lookup table (fast path)


class LabelMap:
    """`values`: raw value -> class name (0 must be mapped; equal names share a class), or
    `binary=True`: every value > 0 is one foreground class (the study's `combine_all`)."""

    def __init__(self, values: Mapping[int, str] | None = None, binary: bool = False) -> None:
        if binary == (values is not None):
            raise SamMedftError(
                "a label map needs either data.labels (raw value -> class name) or "
                "data.binary: true, not both and not neither"
            )
        self.binary = binary
        self.values: dict[int, str] | None = None
        if binary:
            self.class_names = ["background", "foreground"]
            self._raw_to_class: dict[int, int] = {}
            return
        values = {_raw_value(k): str(v) for k, v in values.items()}
        if 0 not in values:
            raise SamMedftError(
                "data.labels must map the background value 0 (e.g. `0: background`)"
            )
        blank = sorted(k for k, v in values.items() if not v.strip())
        if blank:
            raise SamMedftError(
                f"data.labels gives the value {blank[0]} an empty class name; name every class "
                f"(e.g. `{blank[0]}: class_{blank[0]}`)"
            )
        ordered = {0: values[0], **{k: v for k, v in values.items() if k != 0}}
        names: list[str] = []
        for name in ordered.values():
            if name not in names:
                names.append(name)
        if len(names) < 2:
            raise SamMedftError(
                f"data.labels maps every value to the background class {names[0]!r}, so there "
                "is nothing to segment; map the foreground values to class names (e.g. "
                "`255: organ`), or set data.binary: true"
            )
        self.values = ordered
        self.class_names = names
        self._raw_to_class = {k: names.index(v) for k, v in ordered.items()}

    # ---- properties ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes including background (the model's output channels)."""
        return len(self.class_names)

    @property
    def raw_values(self) -> list[int]:
        """For each class index, the raw value to write in a predicted mask (the first raw
        value mapped to it; binary: 0 and 1)."""
        if self.binary:
            return [0, 1]
        out: list[int] = []
        for c in range(self.num_classes):
            out.append(next(k for k, v in self._raw_to_class.items() if v == c))
        return out

    # ---- mapping -------------------------------------------------------------------------
    def apply(self, raw: np.ndarray, source: str = "mask") -> np.ndarray:
        """HxW raw values -> HxW int64 class indices; unmapped values raise (naming `source`)."""
        raw = np.asarray(raw)
        if self.binary:
            return (raw > 0).astype(np.int64)
        if raw.size == 0:
            return raw.astype(np.int64)
        lo, hi = int(raw.min()), int(raw.max())
        if lo >= 0 and hi < _LUT_LIMIT:
            lut = np.full(hi + 1, -1, dtype=np.int64)
            for k, c in self._raw_to_class.items():
                if 0 <= k <= hi:
                    lut[k] = c
            out = lut[raw]
            if (out < 0).any():
                self._unmapped(np.unique(raw[out < 0]), source)
            return out
        uniq, inverse = np.unique(raw, return_inverse=True)
        unknown = [int(v) for v in uniq if int(v) not in self._raw_to_class]
        if unknown:
            self._unmapped(unknown, source)
        classes = np.array([self._raw_to_class[int(v)] for v in uniq], dtype=np.int64)
        return classes[inverse].reshape(raw.shape)

    def unmapped(self, values: Iterable[int]) -> list[int]:
        """The raw values among `values` that this map does not know (binary: none)."""
        if self.binary:
            return []
        return sorted(int(v) for v in values if int(v) not in self._raw_to_class)

    def _unmapped(self, unknown: Iterable[int], source: str) -> None:
        unknown = sorted(int(v) for v in unknown)
        mapped = ", ".join(f"{k}: {v}" for k, v in (self.values or {}).items())
        example = "\n".join(f"    {v}: class_{v}" for v in unknown[:3])
        raise SamMedftError(
            f"{source}: mask values {_short(unknown)} are not in data.labels (mapped: {mapped}). "
            f"Add them to data.labels, e.g.\n  labels:\n{example}\n"
            "or make every value > 0 one foreground class with the override data.binary=true "
            "(it replaces the recipe's labels; drop a data.labels=... override), or in the "
            "recipe file replace `labels:` with `binary: true`"
        )

    # ---- inference ------------------------------------------------------------------------
    @classmethod
    def infer(cls, values_seen: Iterable[int]) -> LabelMap:
        """For recipes that give neither labels nor binary: values 0..K (contiguous) become
        classes background, class_1..class_K; anything else asks the user to say what they mean."""
        seen = sorted({int(v) for v in values_seen})
        if len(seen) > 1 and seen == list(range(len(seen))):
            return cls({0: "background", **{v: f"class_{v}" for v in seen[1:]}})
        if seen == [0] or not seen:
            raise SamMedftError(
                "every mask is empty (only the value 0 was found): there is no foreground to "
                "learn; check data.mask_folder and that the masks are the label maps"
            )
        fg = [v for v in seen if v != 0]
        snippet = "\n".join(
            ["data:", "  labels:", "    0: background"]
            + [f"    {v}: class_{i}" for i, v in enumerate(fg[:20], 1)]
        )
        hint = (
            f" (or `binary: true` if {fg[0]} is simply foreground)"
            if len(fg) == 1
            else " (or `binary: true` to merge all of them into one foreground class)"
        )
        raise SamMedftError(
            f"the masks contain the values {_short(seen)}, which are not 0..K; say what they "
            f"mean in the recipe{hint}, e.g.\n{snippet}"
        )

    # ---- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "binary": self.binary,
            "values": None if self.values is None else {str(k): v for k, v in self.values.items()},
            "class_names": self.class_names,
        }

    def to_json(self) -> str:
        """JSON text (keys as strings) to save beside the adapter."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, data: str | Mapping) -> LabelMap:
        """Read `to_json`'s text (or dict) back; anything else is one clear error."""
        try:
            d = json.loads(data) if isinstance(data, str) else data
        except json.JSONDecodeError as e:
            raise SamMedftError(f"saved label map is not valid JSON ({e})") from None
        if not isinstance(d, Mapping):
            raise SamMedftError(f"saved label map must be a JSON object, got {d!r}")
        if d.get("binary") is True:
            return cls(binary=True)
        values = d.get("values")
        if not isinstance(values, Mapping):
            raise SamMedftError(
                f"saved label map {dict(d)!r} has neither `binary: true` nor a `values` object "
                "(raw value -> class name); re-save the adapter with this version of sam_medft"
            )
        try:
            return cls(values)
        except SamMedftError as e:
            raise SamMedftError(f"saved label map {dict(values)!r}: {e}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        if self.binary:
            return "LabelMap(binary=True)"
        return f"LabelMap({self.values})"


def _raw_value(key: object) -> int:
    """A label-map key as an int mask value (JSON and the Python API may give strings)."""
    if isinstance(key, bool) or not isinstance(key, int | str | np.integer):
        raise SamMedftError(f"data.labels key {key!r} is not an integer mask value")
    try:
        return int(key)
    except ValueError:
        raise SamMedftError(
            f"data.labels key {key!r} is not an integer mask value (keys are the raw pixel "
            "values, e.g. `255: organ`)"
        ) from None


def _short(values: list[int], n: int = 10) -> str:
    head = ", ".join(str(v) for v in values[:n])
    return (
        f"[{head}{', ...' if len(values) > n else ''}] ({len(values)} values)"
        if len(values) > n
        else f"[{head}]"
    )
