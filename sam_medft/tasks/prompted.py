"""Prompt modes (points, boxes, hybrid): one binary mask per prompt.

Every object of every class gets its own prompt set on the `point_batch` axis, so one image
trains several objects at once and never merges them. With multimask output the loss takes
the best of SAM's 3 masks per prompt (as SAM was trained), and the IoU head learns the real
IoU of every mask, which also keeps it in the graph for DDP. At inference the mask with the
highest predicted IoU is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sam_medft.config import LossConfig, PromptConfig
from sam_medft.data.prompts import PROMPT_KEYS, PromptSettings
from sam_medft.data.transforms import IGNORE_INDEX
from sam_medft.errors import SamMedftError
from sam_medft.models.forward import embedding_kwargs, image_embeddings
from sam_medft.tasks.base import Outputs, Task, dice_from_counts

#: SAM's multimask outputs: prompt modes keep the 3 pretrained mask tokens
PROMPT_MASK_OUTPUTS = 3


class PromptedTask(Task):
    prompted = True

    def mask_outputs(self, num_classes: int) -> int:
        return PROMPT_MASK_OUTPUTS

    def forward(self, model, batch, *, frozen_encoder, embeddings=None) -> Outputs:
        logits, iou = prompted_forward(model, batch, multimask=self.prompt.multimask,
                                       frozen_encoder=frozen_encoder)
        return Outputs(logits, iou)

    def loss(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        return prompt_loss(outputs.logits, outputs.iou, batch["targets"], batch["prompt_valid"],
                           self.loss_cfg)["loss"]

    def score(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        counts = prompt_counts(outputs.logits, outputs.iou, batch["targets"], batch["prompt_valid"])
        # one row per image: pad prompts so gather_for_metrics sees the batch dimension
        return _per_image(counts, batch["prompt_valid"], self.prompt.max_objects_per_image)

    def summarize(self, counts: torch.Tensor) -> dict:
        rows = counts.flatten(0, 1)
        rows = rows[rows[:, 0] >= 0]  # drop padding rows
        return dice_from_counts(rows[:, None]) | {"n_images": int(counts.shape[0])}

    def prompt_settings(self, *, jitter: bool = True) -> PromptSettings:
        return prompt_settings(self.prompt, jitter=jitter)

    def plan_notes(self) -> list[str]:
        return ["prompt mode: traced without prompts (the decoder part grows with objects per "
                "image; the encoder dominates)"]

    def check_prediction(self, has_prompts: bool) -> None:
        if not has_prompts:
            raise SamMedftError(
                f"this model was fine-tuned with prompt.mode={self.mode}: it segments one "
                "object per prompt and has no class outputs; pass prompts "
                "(predict(image, prompts=[{'label': 1, 'box': [x0, y0, x1, y1]}]) or "
                "`sam-medft predict --prompts prompts.json` / --box / --point)")


def prompt_settings(cfg: PromptConfig, *, jitter: bool = True) -> PromptSettings:
    return PromptSettings(mode=cfg.mode, n_points=cfg.n_points, n_negative=cfg.n_negative,
                          interior_fraction=cfg.interior_fraction,
                          box_jitter=cfg.box_jitter if jitter else 0.0,
                          max_objects_per_image=cfg.max_objects_per_image)


def prompted_forward(model, batch: dict, *, multimask: bool, frozen_encoder: bool,
                     input_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> logits (B,P,K,M,M) and IoU predictions (B,P,K); K = 3 with multimask else 1."""
    prompts = {k: batch[k] for k in PROMPT_KEYS if k in batch}
    if "input_boxes" in prompts:
        prompts["input_boxes"] = prompts["input_boxes"].float()
    if input_masks is not None:
        prompts["input_masks"] = input_masks
    if frozen_encoder:
        out = model(**embedding_kwargs(image_embeddings(model, batch["pixel_values"])),
                    multimask_output=multimask, **prompts)
    else:
        out = model(pixel_values=batch["pixel_values"], multimask_output=multimask, **prompts)
    return out.pred_masks, out.iou_scores


def prompt_loss(logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor,
                valid: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Binary CE + soft Dice per mask, best of K per prompt, IoU-head MSE; padded prompts
    and padded pixels excluded. logits (B,P,K,M,M), targets (B,P,M,M), valid (B,P)."""
    logits = logits.float()
    pix = (targets != IGNORE_INDEX)[:, :, None]  # (B,P,1,M,M)
    t = targets.clamp(min=0)[:, :, None].float().expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    n_pix = pix.flatten(3).sum(-1).clamp(min=1)
    bce = (bce * pix).flatten(3).sum(-1) / n_pix  # (B,P,K)
    p = logits.sigmoid() * pix
    inter = (p * t).flatten(3).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(3).sum(-1) + (t * pix).flatten(3).sum(-1) + 1)
    per_mask = cfg.ce_weight * bce + cfg.dice_weight * dice  # (B,P,K)
    best = per_mask.argmin(dim=2, keepdim=True)
    chosen = per_mask.gather(2, best).squeeze(2)  # (B,P)
    w = valid.float()
    n_valid = w.sum().clamp(min=1)
    seg = (chosen * w).sum() / n_valid
    with torch.no_grad():
        hard = (logits > 0) & pix
        tb = t.bool() & pix
        inter_h = (hard & tb).flatten(3).sum(-1).float()
        union_h = (hard | tb).flatten(3).sum(-1).float()
        real_iou = torch.where(union_h > 0, inter_h / union_h.clamp(min=1), torch.ones_like(union_h))
    iou_l = (((iou_pred.float() - real_iou) ** 2).mean(-1) * w).sum() / n_valid
    # a batch with no object at all still touches every output (zero loss, real graph)
    total = seg + cfg.iou_weight * iou_l + 0.0 * logits.sum()
    return {"loss": total, "seg": seg.detach(), "iou": iou_l.detach()}


def select_masks(logits: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
    """At inference: the mask with the highest predicted IoU per prompt -> (B,P,M,M)."""
    idx = iou_pred.argmax(-1)[..., None, None, None].expand(*logits.shape[:2], 1, *logits.shape[-2:])
    return logits.gather(2, idx).squeeze(2)


def prompt_counts(logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """(N_valid_prompts, 3) tp/fp/fn of the selected mask per real prompt (for validation)."""
    pred = select_masks(logits, iou_pred) > 0
    pix = targets != IGNORE_INDEX
    t = (targets == 1) & pix
    p = pred & pix
    counts = torch.stack([(p & t).flatten(2).sum(-1), (p & ~t).flatten(2).sum(-1),
                          (~p & t).flatten(2).sum(-1)], dim=-1)
    return counts[valid]


def _per_image(counts: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """(N_valid,3) -> (B, width, 3) with -1 rows for padded prompts (same shape on every rank)."""
    out = torch.full((valid.shape[0], width, 3), -1, dtype=counts.dtype, device=counts.device)
    out[:, : valid.shape[1]][valid] = counts
    return out
