"""EmbeddingCache: same decoder gradients as the uncached path; keys, LRU, disk."""

from __future__ import annotations

import pytest
import torch

from sam_medft.adapters.methods import apply_method, encoder_is_frozen
from sam_medft.config import LossConfig, PeftSettings
from sam_medft.errors import SamMedftError
from sam_medft.models.forward import automatic_forward, image_embeddings
from sam_medft.models.registry import build_tiny
from sam_medft.tasks.losses import iou_head_loss, segmentation_loss
from sam_medft.training.embedding_cache import EmbeddingCache, content_key, content_keys, model_key


@pytest.fixture(scope="module")
def decoder_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = apply_method(build_tiny(2), PeftSettings(method="lora", scope="decoder"))
    assert encoder_is_frozen(model)
    return model.train()


def _batch(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 256, 256, generator=gen), torch.randint(
        0, 2, (n, 64, 64), generator=gen
    )


def _grads(model, pixels, labels, embeddings=None) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    if embeddings is None:
        logits, iou = automatic_forward(model, pixels, frozen_encoder=True)
    else:
        logits, iou = automatic_forward(model, embeddings=embeddings)
    loss = segmentation_loss(logits, labels, LossConfig())["loss"] + iou_head_loss(
        iou, logits.detach(), labels
    )
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cached_embeddings_give_the_same_decoder_gradients(decoder_model) -> None:
    pixels, labels = _batch()
    ref = _grads(decoder_model, pixels, labels)
    cache = EmbeddingCache(model_key(decoder_model), device="cpu")
    keys = content_keys(pixels)
    calls = []

    def encode(px: torch.Tensor) -> torch.Tensor:
        calls.append(px.shape[0])
        return image_embeddings(decoder_model, px)

    first = _grads(decoder_model, pixels, labels, cache.get_or_compute(keys, pixels, encode))
    second = _grads(decoder_model, pixels, labels, cache.get_or_compute(keys, pixels, encode))
    assert calls == [2]  # the encoder ran once, for the first epoch only
    assert cache.stats() == {"items": 2, "hits": 2, "disk_hits": 0, "misses": 2}
    assert ref and ref.keys() == first.keys() == second.keys()
    assert all("vision_encoder" not in n for n in ref)
    for name in ref:
        torch.testing.assert_close(first[name], ref[name], rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(second[name], ref[name], rtol=1e-6, atol=1e-7, msg=name)


def _fake_encoder(calls: list[int]):
    """A deterministic per-image 'encoder' (a real function of the pixels) that counts rows."""

    def encode(px: torch.Tensor) -> torch.Tensor:
        calls.append(px.shape[0])
        return px.mean(dim=(2, 3))[:, :, None] * torch.ones(1, 1, 4)

    return encode


def test_partial_hits_keep_batch_order_and_compute_only_the_missing() -> None:
    calls: list[int] = []
    encode = _fake_encoder(calls)
    pixels = torch.randn(4, 3, 8, 8)
    keys = content_keys(pixels)
    cache = EmbeddingCache("m", max_items=None)
    cache.get_or_compute(keys[:2], pixels[:2], encode)
    out = cache.get_or_compute(keys[::-1], pixels.flip(0), encode)
    assert calls == [2, 2]
    torch.testing.assert_close(out, encode(pixels.flip(0)))
    dup = cache.get_or_compute([keys[0], keys[0]], pixels[[0, 0]], encode)
    torch.testing.assert_close(dup[0], dup[1])
    assert calls == [2, 2, 4]  # the last one is the check above, not the cache


def test_lru_bound_evicts_the_least_recently_used() -> None:
    calls: list[int] = []
    encode = _fake_encoder(calls)
    pixels = torch.randn(3, 3, 8, 8)
    keys = content_keys(pixels)
    cache = EmbeddingCache("m", max_items=2)
    cache.get_or_compute(keys[:2], pixels[:2], encode)
    cache.get_or_compute(keys[:1], pixels[:1], encode)  # key 0 is now the most recent
    cache.get_or_compute(keys[2:], pixels[2:], encode)  # evicts key 1
    assert len(cache) == 2
    cache.get_or_compute(keys[:1], pixels[:1], encode)
    assert calls == [2, 1]
    cache.get_or_compute(keys[1:2], pixels[1:2], encode)
    assert calls == [2, 1, 1]


def test_disk_cache_survives_a_new_process_state(tmp_path) -> None:
    calls: list[int] = []
    encode = _fake_encoder(calls)
    pixels = torch.randn(2, 3, 8, 8)
    keys = content_keys(pixels)
    first = EmbeddingCache("abc", disk_dir=tmp_path).get_or_compute(keys, pixels, encode)
    assert sorted(p.name for p in (tmp_path / "abc").iterdir()) == sorted(
        f"{k}.safetensors" for k in keys
    )
    again = EmbeddingCache("abc", disk_dir=tmp_path)
    out = again.get_or_compute(keys, pixels, encode)
    assert calls == [2] and again.disk_hits == 2
    torch.testing.assert_close(out, first)
    other = EmbeddingCache("other-model", disk_dir=tmp_path)
    other.get_or_compute(keys, pixels, encode)
    assert calls == [2, 2]  # another encoder never reads these files


def test_content_key_sees_any_change_of_the_image() -> None:
    img = torch.randn(3, 16, 16)
    assert content_key(img) == content_key(img.clone())
    assert content_key(img) != content_key(img.flip(-1))  # spatial augmentation
    assert content_key(img) != content_key(img * 1.05)  # intensity augmentation
    changed = img.clone()
    changed[0, 0, 0] += 1e-3
    assert content_key(img) != content_key(changed)
    assert content_key(img) != content_key(img.to(torch.float64))
    assert content_key(img) != content_key(img.reshape(3, 8, 32))


def test_model_key_covers_weights_preset_and_precision(tiny_model) -> None:
    base = model_key(tiny_model, model_id="tiny", normalization="sam", precision="bf16")
    assert base == model_key(tiny_model, model_id="tiny", normalization="sam", precision="bf16")
    assert base != model_key(tiny_model, model_id="tiny", normalization="medsam", precision="bf16")
    assert base != model_key(tiny_model, model_id="tiny", normalization="sam", precision="fp32")
    with torch.no_grad():
        tiny_model.vision_encoder.layers[0].mlp.lin1.weight[0, 0] += 1e-4
    assert base != model_key(tiny_model, model_id="tiny", normalization="sam", precision="bf16")


def test_user_errors_are_explained(tmp_path) -> None:
    cache = EmbeddingCache("m")
    with pytest.raises(SamMedftError, match="one key per image"):
        cache.get_or_compute(["a"], torch.zeros(2, 3, 8, 8), _fake_encoder([]))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SamMedftError, match="writable disk_dir"):
        EmbeddingCache("m", disk_dir=blocker)
    with pytest.raises(SamMedftError, match="max_items=0"):
        EmbeddingCache("m", max_items=0)
