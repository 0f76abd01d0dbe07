"""SAM vision attention without the materialised relative-position bias.

transformers' SAM vision attention builds the decomposed relative-position bias as a dense
(B, heads, N, N) tensor and passes it to SDPA as `attn_mask`. A dense mask rules out the
flash kernel, costs N^2 memory per head in the forward and again for its gradient, and at
1024 px the 4 global layers have N = 4096 tokens. The bias is low-rank by construction:

    logits[q, k] = scale * q.k + rel_h[q, kh(k)] + rel_w[q, kw(k)]
                 = [scale * q, rel_h[q], rel_w[q]] . [k, onehot(kh(k)), onehot(kw(k))]

with rel_h[q, j] = q . Rh[qh - j] and rel_w[q, j] = q . Rw[qw - j] (mvitv2's decomposition,
as `get_decomposed_rel_pos` computes them). So one SDPA call on augmented q'/k' (head dim
d + H + W, zero-padded to a multiple of 8) with no mask and `scale=1` is exactly the same
attention, and every fused kernel (flash, memory-efficient, CPU flash) applies. v keeps
head dim d in the math, but the flash kernels (CUDA and CPU) need one head dim for q, k and
v (otherwise SDPA silently takes the N x N math path), so v is zero-padded to the q'/k'
width and the output sliced: always on CPU, on CUDA when the width fits flash (<= 256);
wider heads go unpadded to the memory-efficient kernel, which accepts a narrower v.

The patch swaps the class of each vision-attention module for a subclass with this
`forward`, so it survives PEFT (LoRA replaces `attn.qkv`, which the forward still calls;
bottleneck adapters wrap `attn` and call it), activation checkpointing (the layer calls
`attn` as before), `torch.compile`, deepcopy and state dicts (no parameter changes). It
also avoids transformers' per-call `F.interpolate` of an already right-sized table and the
host-side index tensor that forces a host/device copy on every call.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sam_medft.models.tiny_vit import MobileSamVisionLayer

_FAST_FLAG = "_sam_medft_fast_attention"
_FLASH_MAX_HEAD_DIM = 256
_SUBCLASSES: dict[type, type] = {}
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def vision_attention_classes() -> tuple[type[nn.Module], ...]:
    """The transformers vision-attention classes this module can speed up (SDPA subclasses
    included)."""
    from transformers.models.sam.modeling_sam import SamVisionAttention

    classes: list[type[nn.Module]] = [SamVisionAttention]
    try:
        from transformers.models.sam_hq.modeling_sam_hq import SamHQVisionAttention

        classes.append(SamHQVisionAttention)
    except ImportError:  # older transformers without SAM-HQ
        pass
    return tuple(classes)


def enable_fast_attention(model: nn.Module, pad_value: bool | None = None) -> int:
    """Patch every SAM / SAM-HQ vision attention in `model`; returns how many were patched.

    `pad_value`: pad v to the q'/k' head dim so a flash kernel applies (None: on CPU, and on
    CUDA when the padded dim fits flash). Idempotent; `disable_fast_attention` undoes it.
    """
    classes = vision_attention_classes()
    n = 0
    for module in model.modules():
        if not isinstance(module, classes):
            continue
        if not getattr(type(module), _FAST_FLAG, False):
            module.__class__ = _fast_subclass(type(module))
        module._fast_pad_value = pad_value
        n += 1
    return n


def disable_fast_attention(model: nn.Module) -> int:
    """Restore transformers' own attention forward; returns how many modules were restored."""
    n = 0
    for module in model.modules():
        if getattr(type(module), _FAST_FLAG, False):
            module.__class__ = type(module).__bases__[0]
            n += 1
    return n


def is_fast_attention(model: nn.Module) -> bool:
    """True when at least one vision attention of `model` runs the fast forward."""
    return any(getattr(type(m), _FAST_FLAG, False) for m in model.modules())


def enable_regional_compile(model: nn.Module, **compile_kwargs: Any) -> int:
    """`torch.compile` each vision-encoder layer in place (one small graph, reused by every
    layer, instead of one huge graph); returns the number of layers compiled.

    Compiling the repeated block keeps compile time near one layer's and leaves the rest of
    the model (decoder, losses, PEFT wrappers) eager.
    """
    from transformers.models.sam.modeling_sam import SamVisionLayer

    layer_classes: list[type[nn.Module]] = [SamVisionLayer, MobileSamVisionLayer]
    try:
        from transformers.models.sam_hq.modeling_sam_hq import SamHQVisionLayer

        layer_classes.append(SamHQVisionLayer)
    except ImportError:
        pass
    kwargs = {"dynamic": False, **compile_kwargs}
    n = 0
    for module in model.modules():
        if isinstance(module, tuple(layer_classes)):
            module.compile(**kwargs)
            n += 1
    return n


# ---- the forward ------------------------------------------------------------------------


def _fast_subclass(cls: type) -> type:
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        sub = type(
            f"Fast{cls.__name__}",
            (cls,),
            {"forward": _fast_forward, _FAST_FLAG: True, "__module__": __name__},
        )
        _SUBCLASSES[cls] = sub
    return sub


def _fast_forward(
    self, hidden_states: torch.Tensor, output_attentions: bool | None = None, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """(B, H, W, C) -> ((B, H, W, C), None); attention weights are never materialised."""
    if output_attentions:  # the weights are asked for: transformers' eager path has them
        eager = next(c for c in type(self).__mro__ if c in vision_attention_classes())
        return eager.forward(self, hidden_states, output_attentions, **kwargs)
    batch, height, width, _ = hidden_states.shape
    heads = self.num_attention_heads
    tokens = height * width
    qkv = self.qkv(hidden_states).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)  # (B, heads, N, d) strided views
    head_dim = query.shape[-1]
    dropout = self.dropout if self.training else 0.0
    if not self.use_rel_pos:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=self.scale)
    else:
        q_aug, k_aug = augmented_qk(
            query, key, self.rel_pos_h, self.rel_pos_w, (height, width), self.scale
        )
        pad_v = getattr(self, "_fast_pad_value", None)
        if pad_v is None:  # the flash kernels need one head dim for q, k and v
            pad_v = not query.is_cuda or q_aug.shape[-1] <= _FLASH_MAX_HEAD_DIM
        if pad_v:
            value = F.pad(value, (0, q_aug.shape[-1] - head_dim))
        out = F.scaled_dot_product_attention(q_aug, k_aug, value, dropout_p=dropout, scale=1.0)
        if pad_v:
            out = out[..., :head_dim]
    out = out.transpose(1, 2).reshape(batch, height, width, heads * head_dim)
    return self.proj(out), None


def augmented_qk(
    query: torch.Tensor,
    key: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q' = [scale*q, rel_h, rel_w, 0], k' = [k, onehot(kh), onehot(kw), 0] for (B, h, N, d)
    query/key over an H x W grid; q' . k' equals SAM's logits with the rel-pos bias."""
    height, width = size
    batch, heads, tokens, head_dim = query.shape
    table_h = _rel_pos_table(rel_pos_h, height, query.device).to(query.dtype)  # (H, H, d)
    table_w = _rel_pos_table(rel_pos_w, width, query.device).to(query.dtype)  # (W, W, d)
    grid = query.reshape(batch, heads, height, width, head_dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, table_h).reshape(batch, heads, tokens, height)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, table_w).reshape(batch, heads, tokens, width)
    dim = head_dim + height + width
    padded = 8 * math.ceil(dim / 8)
    parts = [query * scale, rel_h, rel_w]
    if padded > dim:
        parts.append(query.new_zeros(()).expand(batch, heads, tokens, padded - dim))
    q_aug = torch.cat(parts, dim=-1)
    onehots = _key_onehots(height, width, padded - head_dim, key.dtype, key.device)
    k_aug = torch.cat([key, onehots.expand(batch, heads, tokens, padded - head_dim)], dim=-1)
    return q_aug, k_aug


def _rel_pos_table(rel_pos: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """(size, size, d): rel_pos[qi - ki + size - 1], as transformers' `get_rel_pos` for equal
    query/key sizes (a table of another length is resized the same way it does)."""
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).transpose(1, 2), size=length, mode="linear"
        )
        rel_pos = rel_pos.reshape(-1, length).permute(1, 0)
    return rel_pos[_constant(("rel_index", size), device, lambda: _rel_index(size, device))]


def _rel_index(size: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, device=device)
    return coords[:, None] - coords[None, :] + (size - 1)


def _key_onehots(
    height: int, width: int, dim: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(N, dim): for token (kh, kw), ones at kh and at H + kw, zero padding after H + W."""

    def build() -> torch.Tensor:
        rows = torch.arange(height * width, device=device)
        out = torch.zeros(height * width, dim, dtype=dtype, device=device)
        out[rows, rows // width] = 1
        out[rows, height + rows % width] = 1
        return out

    return _constant(("onehot", height, width, dim, dtype), device, build)


def _constant(key: tuple, device: torch.device, build) -> torch.Tensor:
    """Small shape-only tensors, built once per device (inline while torch.compile traces)."""
    if torch.compiler.is_compiling():
        return build()
    full = (*key, str(device))
    value = _CONSTANTS.get(full)
    if value is None:
        with torch.inference_mode(False):  # usable later by autograd, even if built in inference
            value = _CONSTANTS[full] = build()
    return value
