"""Image embeddings computed once per image, for frozen-encoder (decoder-only) scopes.

With a frozen encoder the decoder step needs only the (256, E, E) image embedding, and the
encoder forward is ~99% of the step's compute. From the second epoch on the embedding of an
unchanged image can come from this cache instead.

What a key covers, and so what invalidates an entry:
- the image: a SHA-256 of the *preprocessed* `pixel_values` tensor (after resize, pad and
  normalisation, its dtype and shape included). Any change of the pixels changes the key:
  every spatial augmentation (flip, rotation, scale, crop) and every intensity augmentation
  (brightness, contrast, gamma, noise) gives a new tensor, so with augmentation on, training
  batches never hit and the cache must be bypassed for training (it would only fill up);
  validation and test images are not augmented and always can use it. A change of the
  normalisation preset or the input size also changes the tensor, hence the key.
- the encoder: `model_key` hashes the vision config, every vision-encoder tensor (so a
  continued run whose encoder was fine-tuned never reuses the base model's embeddings),
  the model id, the normalisation preset and the compute precision (bf16 autocast and fp32
  embeddings differ).

Hashing a 1024 x 1024 float image takes ~10 ms on one core, so the trainer's keys are made
once per image where the image is made: `preprocessed.image_key` hashes the stored uint8
image (input size, before normalisation, which the model key covers), and the keys travel
with the batch (`HostMeta.keys`). `content_keys` on a float batch is the fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import SamModel

from sam_medft.config import TrainConfig
from sam_medft.errors import SamMedftError
from sam_medft.models.forward import image_embeddings
from sam_medft.models.loading import unwrap
from sam_medft.tasks import Task


def content_key(image: torch.Tensor) -> str:
    """SHA-256 of one preprocessed image tensor (bytes, shape and dtype)."""
    t = image.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(_bytes(t))
    return h.hexdigest()


def content_keys(pixel_values: torch.Tensor) -> list[str]:
    """One `content_key` per image of a (B, 3, S, S) batch."""
    return [content_key(img) for img in pixel_values]


def model_key(
    model: torch.nn.Module, *, model_id: str = "", normalization: str = "", precision: str = "fp32"
) -> str:
    """Identity of the encoder that makes the embeddings (config, weights, id, preset,
    precision), as a short hex string (also the cache's folder name on disk)."""
    encoder = unwrap(model).vision_encoder
    h = hashlib.sha256()
    meta = {
        "id": model_id,
        "norm": normalization,
        "precision": precision,
        "config": encoder.config.to_dict(),
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if tensor.device.type != "meta":
            h.update(_bytes(tensor.detach().cpu()))
    return h.hexdigest()[:24]


def _bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


class EmbeddingCache:
    """Memory (optionally LRU-bounded) and optional disk cache of per-image embeddings.

    `device`: where cached embeddings live in memory and are returned. `disk_dir`: embeddings
    are also written as `<disk_dir>/<model_key>/<image key>.safetensors` and read back on a
    memory miss (survives restarts and `max_items` eviction).
    """

    def __init__(
        self,
        model_key: str,
        device: torch.device | str = "cpu",
        max_items: int | None = None,
        disk_dir: str | Path | None = None,
    ) -> None:
        if max_items is not None and max_items < 1:
            raise SamMedftError(
                f"embedding cache max_items={max_items}: use a positive number "
                f"of images, or None for no limit"
            )
        self.model_key = model_key
        self.device = torch.device(device)
        self.max_items = max_items
        self.folder = None if disk_dir is None else Path(disk_dir) / model_key
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SamMedftError(
                    f"embedding cache folder {self.folder} cannot be created "
                    f"({e.strerror}); pass a writable disk_dir or none"
                ) from None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.disk_hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def stats(self) -> dict[str, int]:
        return {
            "items": len(self),
            "hits": self.hits,
            "disk_hits": self.disk_hits,
            "misses": self.misses,
        }

    def clear(self) -> None:
        """Drop the in-memory entries (files on disk stay)."""
        self._memory.clear()

    def get_or_compute(
        self,
        keys: Sequence[str],
        pixel_values: torch.Tensor,
        compute_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Embeddings (B, ...) for the B images: cached ones looked up, the others computed
        in one `compute_fn(pixel_values[missing])` call under no_grad and stored."""
        if len(keys) != pixel_values.shape[0]:
            raise SamMedftError(
                f"embedding cache: {len(keys)} keys for a batch of "
                f"{pixel_values.shape[0]} images; pass one key per image"
            )
        found: dict[str, torch.Tensor] = {}
        missing: list[int] = []
        for i, key in enumerate(keys):
            if key in found:
                continue
            value = self._lookup(key)
            if value is None:
                if key not in (keys[j] for j in missing):
                    missing.append(i)
            else:
                found[key] = value
        if missing:
            index = torch.tensor(missing, device=pixel_values.device)
            with torch.no_grad():
                computed = compute_fn(pixel_values.index_select(0, index)).detach()
            self.misses += len(missing)
            for row, i in enumerate(missing):
                found[keys[i]] = self._store(keys[i], computed[row])
            if len(missing) == len(keys):
                return computed.to(self.device)
        return torch.stack([found[k] for k in keys])

    # ---- storage ------------------------------------------------------------------------

    def _lookup(self, key: str) -> torch.Tensor | None:
        value = self._memory.get(key)
        if value is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return value
        path = self._path(key)
        if path is not None and path.is_file():
            value = load_file(str(path), device=str(self.device))["embedding"]
            self.disk_hits += 1
            self._remember(key, value)
            return value
        return None

    def _store(self, key: str, value: torch.Tensor) -> torch.Tensor:
        value = value.to(self.device).clone()  # its own storage: a batch view would pin the batch
        self._remember(key, value)
        path = self._path(key)
        if path is not None:
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            save_file({"embedding": value.cpu().contiguous()}, tmp)
            os.replace(tmp, path)  # atomic: concurrent readers see a whole file or none
        return value

    def _remember(self, key: str, value: torch.Tensor) -> None:
        self._memory[key] = value
        if self.max_items is not None:
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.safetensors"


def embedding_cache(train: TrainConfig, task: Task, model, frozen_encoder: bool, base_id: str,
                    normalization: str) -> EmbeddingCache | None:
    """An embedding cache for frozen-encoder scopes of tasks whose embeddings hold no prompt
    (None otherwise, or with `train.cache_embeddings: false`)."""
    want = train.cache_embeddings
    if want is True and not frozen_encoder:
        raise SamMedftError("train.cache_embeddings: true needs a frozen encoder "
                            "(peft.scope=decoder); set it to auto or false")
    cacheable = frozen_encoder and task.caches_embeddings and isinstance(
        unwrap(model), SamModel)  # SAM-HQ also needs its intermediate embeddings
    if want is False or not cacheable:
        return None
    key = model_key(model, model_id=base_id, normalization=normalization,
                    precision=train.mixed_precision)
    return EmbeddingCache(key, device="cpu", max_items=train.cache_max_items)


def cached_embeddings(cache: EmbeddingCache | None, model, pixel_values: torch.Tensor,
                      keys: list[str] | None = None):
    """Embeddings from the cache (computed once per image), or None without a cache. `keys`:
    the batch's precomputed keys (`HostMeta.keys`); without them the pixels are hashed."""
    if cache is None:
        return None
    if keys is None:
        keys = content_keys(pixel_values)
    emb = cache.get_or_compute(keys, pixel_values, lambda px: image_embeddings(model, px))
    return emb.to(pixel_values.device, non_blocking=True)


def batch_keys(batch: dict) -> list[str] | None:
    """The embedding-cache keys the loader computed for this batch, if any."""
    host = batch.get("host")
    return None if host is None else host.keys
