"""sam_medft: fine-tune Segment Anything models on your own medical segmentation data."""

from sam_medft.errors import SamMedftError
from sam_medft.version import __version__


def load(run_or_hub_id, *, device=None, revision=None, fast_attention=True):
    """Load a fine-tuned model (run folder, adapter folder or Hub id) for `.predict(image)`.
    `fast_attention=False` runs transformers' own vision attention (same results, slower)."""
    from sam_medft.infer.predict import FineTunedSam

    return FineTunedSam.load(run_or_hub_id, device=device, revision=revision,
                             fast_attention=fast_attention)


def train(recipe="demo", train_data=None, val_data=None, **kwargs):
    """Fine-tune from Python: a recipe (path, shipped name or `Recipe`), optional data in
    memory (`datasets.Dataset`, torch `Dataset`, list of (image, mask)) and overrides
    (`train__max_steps=50`). See `sam_medft.training.api.train`."""
    from sam_medft.training.api import train as _train

    return _train(recipe, train_data, val_data, **kwargs)


__all__ = ["SamMedftError", "__version__", "load", "train"]
