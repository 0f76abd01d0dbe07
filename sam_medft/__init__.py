"""sam_medft: fine-tune Segment Anything models on your own medical segmentation data."""

__version__ = "0.1.0"

from sam_medft.errors import SamMedftError  # noqa: E402


def load(run_or_hub_id, *, device=None, revision=None, fast_attention=True):
    """Load a fine-tuned model (run folder, adapter folder or Hub id) for `.predict(image)`.
    `fast_attention=False` runs transformers' own vision attention (same results, slower)."""
    from sam_medft.infer.predict import FineTunedSam

    return FineTunedSam.load(run_or_hub_id, device=device, revision=revision,
                             fast_attention=fast_attention)


__all__ = ["SamMedftError", "__version__", "load"]
