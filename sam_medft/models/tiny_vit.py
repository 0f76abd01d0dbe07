"""MobileSAM's TinyViT image encoder, computing exactly what `mobile_sam`'s
`modeling/tiny_vit_sam.py` computes, with SAM-style module names for the rest of the package.

Why our own copy: timm's `tiny_vit` (and `mobile_sam` itself) import torchvision, which does
not import beside the pinned torch, and both build an ImageNet classifier head MobileSAM never
uses. The computation is the official one, step by step (tests/models/test_official_equality.py
checks it against `mobile_sam` on the same random weights); the layout differs in two ways so
that adapters, LoRA targets, block selection, device maps and memory plans treat MobileSAM
like any SAM encoder:

- the attention blocks of stages 1..n-1 are one flat list `layers.N` (each with `attn` and
  `mlp`), the patch mergings between those stages are `merges.K`, the convolutional stage 0
  is `conv_stage`; `sam_medft.models.convert_mobile` maps the original names both ways;
- the MLP's linears are `lin1`/`lin2` (SAM's names; TinyViT's are `fc1`/`fc2`).

Two differences that change no value: the attention bias is gathered on every call (the
official model caches it at `.eval()` time, so weights loaded after `.eval()` leave a stale
cache), and attention runs through `scaled_dot_product_attention` with that bias as its mask.
The official code hard-codes a 64x64 output grid (1024-pixel inputs); here the grid follows
`image_size` (image_size / 16), so small test models are possible.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.sam.modeling_sam import SamVisionEncoderOutput


class Conv2dBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, named `c` and `bn` as in the original checkpoint."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)


class PatchEmbed(nn.Module):
    """Two stride-2 convolutions: the image at 1/4 resolution."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        n = embed_dim
        self.seq = nn.Sequential(Conv2dBN(in_chans, n // 2, 3, 2, 1), nn.GELU(),
                                 Conv2dBN(n // 2, n, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted-residual block of the convolutional stage."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, ks=1)
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, ks=1, bn_weight_init=0.0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.conv1(x))
        out = self.act(self.conv2(out))
        return self.act(self.conv3(out) + x)


class PatchMerging(nn.Module):
    """1x1 -> depthwise 3x3 (stride 2, or 1 before the last stage) -> 1x1; tokens out."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2dBN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1, 1, 0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens (B, H*W, C) -> (B, C, H, W)
            h, w = self.resolution
            x = x.view(len(x), h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks, then the first patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, merge: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class TinyViTMlp(nn.Module):
    """Pre-norm MLP (the norm is inside, as in TinyViT)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(self.norm(x))))


def bias_index(window: int) -> torch.Tensor:
    """(N, N) index of each token pair's |dy|,|dx| offset in TinyViT's bias table."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    return torch.tensor(idxs, dtype=torch.long).view(len(points), len(points))


class TinyViTAttention(nn.Module):
    """Pre-norm windowed attention with a learned bias per head and token offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", bias_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class MobileSamVisionLayer(GradientCheckpointingLayer):
    """A TinyViT block: windowed attention, depthwise conv, MLP (each with a residual)."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int,
                 mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = TinyViTAttention(dim, num_heads, window)
        self.mlp = TinyViTMlp(dim, int(dim * mlp_ratio))
        pad = local_conv_size // 2
        self.local_conv = Conv2dBN(dim, dim, ks=local_conv_size, stride=1, pad=pad, groups=dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        (h, w), ws = self.resolution, self.window
        b, length, c = x.shape
        if h == ws and w == ws:
            attn = self.attn(x)
        else:  # zero-pad to whole windows (padded tokens are normed and attended, as upstream)
            grid = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            out = self.attn(windows)
            out = out.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            attn = out[:, :h, :w].contiguous().view(b, length, c)
        x = x + attn
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class LayerNorm2d(nn.Module):
    """Channel LayerNorm of (B, C, H, W) maps, as SAM's neck computes it."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def stage_resolutions(image_size: int, n_stages: int) -> list[int]:
    """Token grid side of each stage: 1/4 of the image, halved per stage, except that the
    last merging keeps the grid (MobileSAM's output is 1/16 of the image, SAM's grid)."""
    base = image_size // 4
    return [base // 2 ** min(i, n_stages - 2) for i in range(n_stages)]


class TinyViTEncoder(nn.Module):
    """Image (B, 3, S, S) -> embeddings (B, output_channels, S/16, S/16)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        dims, depths = list(config.embed_dims), list(config.depths)
        heads, windows = list(config.stage_num_heads), list(config.window_sizes)
        n = len(depths)
        res = stage_resolutions(config.image_size, n)
        self.grid = res[-1]
        self.patch_embed = PatchEmbed(config.num_channels, dims[0])

        def merge(i: int) -> PatchMerging:  # after stage i; the last one keeps the grid
            stride = 1 if i == n - 2 else 2
            return PatchMerging((res[i], res[i]), dims[i], dims[i + 1], stride)

        self.conv_stage = ConvStage(dims[0], depths[0], config.mbconv_expand_ratio, merge(0))
        self.layers = nn.ModuleList()
        self.stage_of: list[int] = []
        for i in range(1, n):
            for _ in range(depths[i]):
                self.layers.append(MobileSamVisionLayer(
                    dims[i], (res[i], res[i]), heads[i], windows[i], config.mlp_ratio,
                    config.local_conv_size))
                self.stage_of.append(i)
        self.merges = nn.ModuleList(merge(i) for i in range(1, n - 1))
        out = config.output_channels
        self.neck = nn.Sequential(nn.Conv2d(dims[-1], out, kernel_size=1, bias=False),
                                  LayerNorm2d(out),
                                  nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
                                  LayerNorm2d(out))

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    def forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> SamVisionEncoderOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        x = self.conv_stage(self.patch_embed(pixel_values))
        for i, layer in enumerate(self.layers):
            x = layer(x)
            last_of_stage = i + 1 == len(self.layers) or self.stage_of[i + 1] != self.stage_of[i]
            if last_of_stage and self.stage_of[i] - 1 < len(self.merges):
                x = self.merges[self.stage_of[i] - 1](x)
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
        return SamVisionEncoderOutput(last_hidden_state=self.neck(x))
