"""One forward pass of a (PEFT-wrapped) SAM model in automatic, prompt-free mode.

Automatic mode feeds no prompt: the prompt encoder contributes only its no-mask embedding
and the decoder's `num_classes` mask tokens give one logit map per class (softmax over
classes, class 0 = background). With a frozen encoder the image embeddings are computed
under no_grad (no encoder activations are kept) or taken from a cache.
"""

from __future__ import annotations

import torch

from sam_medft.models.loading import unwrap


def image_embeddings(model: torch.nn.Module, pixel_values: torch.Tensor):
    """(B,256,E,E) embeddings without autograd (frozen-encoder scopes and caching).

    SAM-HQ returns (embeddings, intermediate ViT embeddings); both go back to its decoder.
    """
    with torch.no_grad():
        return unwrap(model).get_image_embeddings(pixel_values)


def embedding_kwargs(embeddings) -> dict:
    """Model kwargs for precomputed embeddings (SAM: a tensor; SAM-HQ: a tuple)."""
    if isinstance(embeddings, tuple):
        return {"image_embeddings": embeddings[0], "intermediate_embeddings": embeddings[1]}
    return {"image_embeddings": embeddings}


def automatic_forward(model: torch.nn.Module, pixel_values: torch.Tensor | None = None, *,
                      embeddings: torch.Tensor | None = None,
                      frozen_encoder: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """-> logits (B,C,M,M) and IoU predictions (B,C)."""
    if embeddings is None and frozen_encoder:
        embeddings = image_embeddings(model, pixel_values)
    if embeddings is not None:
        out = model(**embedding_kwargs(embeddings), multimask_output=True)
    else:
        out = model(pixel_values=pixel_values, multimask_output=True)
    return out.pred_masks[:, 0], out.iou_scores[:, 0]
