"""The fast vision attention is the same function as transformers' (outputs, losses, grads)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import SamConfig, SamHQModel, SamModel

from sam_medft.adapters.methods import apply_method
from sam_medft.config import LossConfig, PeftSettings
from sam_medft.models.fast_attention import (
    disable_fast_attention,
    enable_fast_attention,
    enable_regional_compile,
    is_fast_attention,
)
from sam_medft.models.forward import automatic_forward
from sam_medft.models.registry import TINY_CONFIG, architecture_config, build_tiny, sam_hq_config
from sam_medft.tasks.losses import iou_head_loss, segmentation_loss


def _random_rel_pos(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """SAM initialises the rel-pos tables to zero, which would make the bias vanish."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def _vit_b(size: int) -> SamModel:
    """ViT-B's real vision layout (12 blocks, 12 heads of 64, window 14, globals 2/5/8/11)."""
    cfg = architecture_config("sam-vit-base")
    cfg.vision_config.image_size = size
    cfg.vision_config.initializer_range = 0.02
    cfg.prompt_encoder_config.image_size = size
    cfg.prompt_encoder_config.image_embedding_size = size // 16
    torch.manual_seed(0)
    return _random_rel_pos(SamModel(cfg).eval())


def _pair(model: torch.nn.Module, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    fast = copy.deepcopy(model)
    assert enable_fast_attention(fast, **kwargs) > 0
    return model, fast


@pytest.fixture(scope="module")
def vit_b_pair() -> tuple[SamModel, SamModel]:
    return _pair(_vit_b(160))  # grid 10: the 14-windows are padded, global layers are 10 x 10


def _close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """fp32 agreement up to summation order: 1e-5 of the tensor's largest value."""
    scale = float(ref.detach().abs().max()) or 1.0
    torch.testing.assert_close(got, ref, atol=1e-5 * scale, rtol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("layer", [0, 2], ids=["window", "global"])
@pytest.mark.parametrize("pad_value", [False, True], ids=["v", "v-padded"])
def test_vit_b_attention_layer_outputs_and_grads_match(
    vit_b_pair, layer: int, pad_value: bool
) -> None:
    plain, fast = vit_b_pair
    enable_fast_attention(fast, pad_value=pad_value)
    a, b = plain.vision_encoder.layers[layer], fast.vision_encoder.layers[layer]
    assert type(b.attn).__name__.startswith("Fast") and not is_fast_attention(plain)
    x = torch.randn(1, 10, 10, 768, generator=torch.Generator().manual_seed(0))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    _close(yb, ya, "output")
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    _close(xb.grad, xa.grad, "input grad")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        _close(pb.grad, pa.grad, name)
        pa.grad = pb.grad = None


def test_vit_b_image_embeddings_match(vit_b_pair) -> None:
    plain, fast = vit_b_pair
    enable_fast_attention(fast, pad_value=None)
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = plain.get_image_embeddings(x), fast.get_image_embeddings(x)
    assert ref.abs().max() > 0.5  # real activations, not SAM's 1e-10 default init
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


class _ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_fast_path_never_builds_the_token_by_token_bias() -> None:
    plain, fast = _pair(build_tiny(2))
    x = torch.randn(1, 16, 16, 64)  # a global layer of the tiny model: 256 tokens
    tokens = 16 * 16
    logs = {}
    for name, model in (("plain", plain), ("fast", fast)):
        with _ShapeLog() as log:
            model.vision_encoder.layers[1].attn(x)
        logs[name] = [s for s in log.shapes if s[-2:] == (tokens, tokens)]
    assert logs["plain"], "the plain path should materialise the (N, N) bias"
    assert logs["fast"] == []


def _train(
    model: torch.nn.Module, settings: PeftSettings, steps: int = 5, checkpointing: bool = False
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of `steps` AdamW steps, and the first step's gradients."""
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)  # the same LoRA initialisation in both copies
    model, _ = apply_method(model, settings)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 256, 256, generator=gen)
    labels = torch.randint(0, 2, (2, 64, 64), generator=gen)
    cfg = LossConfig()
    losses, grads = [], {}
    for step in range(steps):
        logits, iou = automatic_forward(model, pixels)
        loss = segmentation_loss(logits, labels, cfg)["loss"] + iou_head_loss(
            iou, logits.detach(), labels
        )
        loss.backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, grads


@pytest.mark.parametrize(
    ("settings", "checkpointing"),
    [
        (PeftSettings(method="lora", scope="encdec"), False),
        (PeftSettings(method="adapter", scope="encdec"), False),
        (PeftSettings(method="lora", scope="encdec"), True),
    ],
    ids=["lora", "adapter", "lora-checkpointing"],
)
def test_training_steps_match(settings: PeftSettings, checkpointing: bool) -> None:
    plain, fast = _pair(_random_rel_pos(build_tiny(2)))
    ref_losses, ref_grads = _train(plain, settings, checkpointing=checkpointing)
    losses, grads = _train(fast, settings, checkpointing=checkpointing)
    assert is_fast_attention(fast)
    assert len(set(ref_losses)) > 1  # the model really trains
    torch.testing.assert_close(losses, ref_losses, rtol=1e-4, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    encoder_grads = [n for n in grads if "vision_encoder" in n]
    assert encoder_grads, "the encoder adapters must receive gradients"
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_matches_within_bf16_precision() -> None:
    plain, fast = _pair(_random_rel_pos(build_tiny(2)))
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = plain.get_image_embeddings(x)  # fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref, got = plain.get_image_embeddings(x), fast.get_image_embeddings(x)
    err_fast = (got.float() - exact).abs().mean()
    err_plain = (ref.float() - exact).abs().mean()
    assert 0 < err_plain < 0.1
    assert err_fast <= 1.5 * err_plain  # no worse than transformers' own bf16 path
    # weights in bf16 (no autocast) run too
    with torch.no_grad():
        out = copy.deepcopy(fast).to(torch.bfloat16).get_image_embeddings(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_sam_hq_vision_attention_matches() -> None:
    cfg = SamConfig(**TINY_CONFIG)
    hq_cfg = sam_hq_config(cfg)
    torch.manual_seed(0)
    plain, fast = _pair(_random_rel_pos(SamHQModel(hq_cfg).eval()))
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = plain(pixel_values=x, multimask_output=True).pred_masks
        got = fast(pixel_values=x, multimask_output=True).pred_masks
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_attention_weights_still_available_on_request() -> None:
    _, fast = _pair(build_tiny(2))
    attn = fast.vision_encoder.layers[0].attn
    x = torch.randn(1, 14, 14, 64)
    assert attn(x)[1] is None
    weights = attn(x, output_attentions=True)[1]
    assert weights is not None and weights.shape == (2, 196, 196)


def test_enable_is_idempotent_and_disable_restores() -> None:
    model = build_tiny(2)
    original = {type(m) for m in model.modules()}
    assert enable_fast_attention(model) == 4
    assert enable_fast_attention(model) == 4
    assert is_fast_attention(model)
    assert disable_fast_attention(model) == 4
    assert {type(m) for m in model.modules()} == original
    assert not is_fast_attention(model)


def test_regional_compile_traces_the_fast_layer_in_one_graph() -> None:
    plain, fast = _pair(_random_rel_pos(build_tiny(2)))
    # fullgraph: a graph break inside the layer would raise; the eager backend keeps it quick
    assert enable_regional_compile(fast, backend="eager", fullgraph=True) == 4
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            fast.get_image_embeddings(x), plain.get_image_embeddings(x), atol=2e-5, rtol=1e-5
        )
