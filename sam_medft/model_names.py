"""Short model names -> Hub ids and the defaults that go with them.

A recipe says `model.name: sam-vit-base`; everything that depends on the checkpoint
(normalisation preset, model family) is looked up here so a user cannot pair MedSAM with
the wrong normalisation by accident. Any other Hub id or local folder works too; its
defaults are then read from its config. Torch-free, below the Hub code (a model card names
the base model's Hub id); the architectures themselves are in `sam_medft.models.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hub_id: str | None  # None: built from a config (`models.registry.TINY_CONFIG`), no weights
    normalization: str = "sam"
    family: str = "sam"  # sam | sam_hq | mobile_sam
    description: str = ""
    # no transformers checkpoint on the Hub: where the original weights are, for
    # `sam-medft convert` (hub_id None and no convert_from: a built-in random test model)
    convert_from: str | None = None

    @property
    def is_tiny(self) -> bool:
        return self.hub_id is None and self.convert_from is None


MOBILESAM_WEIGHTS = ("mobile_sam.pt from https://github.com/ChaoningZhang/MobileSAM "
                     "(weights/mobile_sam.pt)")

REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("sam-vit-base", "facebook/sam-vit-base", description="SAM ViT-B, 94M"),
        ModelEntry("sam-vit-large", "facebook/sam-vit-large", description="SAM ViT-L, 312M"),
        ModelEntry("sam-vit-huge", "facebook/sam-vit-huge", description="SAM ViT-H, 641M"),
        ModelEntry("medsam", "wanglab/medsam-vit-base", normalization="medsam",
                   description="MedSAM ViT-B (trained on [0,1] min-max images)"),
        ModelEntry("slimsam-50", "nielsr/slimsam-50-uniform", description="SlimSAM-50, 28M"),
        ModelEntry("slimsam-77", "nielsr/slimsam-77-uniform", description="SlimSAM-77, 9.7M"),
        ModelEntry("sam-hq-vit-base", "syscv-community/sam-hq-vit-base", family="sam_hq",
                   description="SAM-HQ ViT-B"),
        ModelEntry("sam-hq-vit-huge", "syscv-community/sam-hq-vit-huge", family="sam_hq",
                   description="SAM-HQ ViT-H"),
        ModelEntry("mobilesam", None, family="mobile_sam", convert_from=MOBILESAM_WEIGHTS,
                   description="MobileSAM (TinyViT encoder, the study's vit_t), 9.7M"),
        ModelEntry("tiny", None,
                   description="random ~5M-parameter SamModel from a config (tests, offline demo)"),
        ModelEntry("tiny-mobilesam", None, family="mobile_sam",
                   description="random ~5M-parameter MobileSAM from a config (tests)"),
    ]
}


def lookup(name: str) -> ModelEntry | None:
    return REGISTRY.get(name)


__all__ = ["REGISTRY", "ModelEntry", "lookup"]
