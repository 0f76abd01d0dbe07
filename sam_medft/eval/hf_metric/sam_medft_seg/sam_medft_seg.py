"""`evaluate` metric module: sam_medft's per-class Dice, IoU, HD95 and NSD.

Load it offline with ``evaluate.load(sam_medft.eval.metrics.hf_metric_path())``. It is a
thin wrapper: the numbers come from ``sam_medft.eval.metrics`` and
``sam_medft.eval.summary.summarize``, so they equal what ``sam-medft eval`` reports.
"""

import datasets
import evaluate
import numpy as np

from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import dataset_metrics
from sam_medft.eval.summary import summarize

_DESCRIPTION = """\
Per-image, per-foreground-class segmentation metrics at the original resolution (Dice,
IoU, 95th-percentile Hausdorff distance and normalised surface Dice, via MONAI), averaged
per class and over foreground classes with an explicit policy for slices where a class is
absent from both the reference and the prediction. HD95 is the larger of the two directed
95th percentiles; NSD weights each surface element by its length (DeepMind's surface-distance
definition, MONAI use_subvoxels=True).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D int arrays): predicted label maps (H, W), class ids.
    references (`list` of 2-D int arrays): reference label maps, same shapes.
    num_labels (`int`): number of labels including background 0; classes 1..num_labels-1
        are scored.
    spacing (`tuple[float, float]`, default (1.0, 1.0)): (row, column) pixel size, or one
        pair per image. HD95 is reported in these units.
    nsd_tolerance (`float`, default 1.0): NSD tolerance in the units of spacing.
    empty_policy (`str`, default "exclude"): "exclude" leaves both-empty rows out of the
        means, "count" scores them 1. False positives and misses always score 0.
    class_names (`dict[int, str]`, optional): names of the scored classes.
    case_ids (`list[str]`, optional): one id per image for the per-case rows.
    return_per_case (`bool`, default False): also return the per-case rows.
Returns:
    The `summarize` dict (`per_class`, `foreground_mean`, `empty_policy`, ...) plus
    `mean_dice`, `mean_iou`, `mean_hd95`, `mean_nsd` (foreground means, None if undefined).
Examples:
    >>> import evaluate, numpy as np
    >>> from sam_medft.eval.metrics import hf_metric_path
    >>> metric = evaluate.load(hf_metric_path())
    >>> gt = np.zeros((8, 8), int); gt[2:6, 2:6] = 1
    >>> metric.compute(predictions=[gt], references=[gt], num_labels=2)["mean_dice"]
    1.0
"""

_CITATION = """\
@article{isensee2021nnunet,
  title={nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation},
  author={Isensee, Fabian and Jaeger, Paul F and Kohl, Simon AA and Petersen, Jens and Maier-Hein, Klaus H},
  journal={Nature Methods}, volume={18}, pages={203--211}, year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SamMedftSeg(evaluate.Metric):
    """Per-class Dice, IoU, HD95 and NSD with an explicit empty-case policy."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
            reference_urls=["https://docs.monai.io/en/stable/metrics.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels,
        spacing=(1.0, 1.0),
        nsd_tolerance=1.0,
        empty_policy="exclude",
        class_names=None,
        case_ids=None,
        return_per_case=False,
    ):
        if int(num_labels) < 2:
            raise SamMedftError(
                f"num_labels={num_labels!r} must count background plus at least one class: "
                "pass e.g. num_labels=2 for a binary mask."
            )
        class_ids = list(range(1, int(num_labels)))
        names = {c: str(c) for c in class_ids}
        if class_names:
            names.update({int(k): str(v) for k, v in dict(class_names).items()})
        rows = dataset_metrics(
            [np.asarray(p, dtype=np.int64) for p in predictions],
            [np.asarray(r, dtype=np.int64) for r in references],
            class_ids,
            spacing,
            nsd_tolerance,
            case_ids=case_ids,
            class_names=names,
        )
        result = summarize(rows, names, empty_policy=empty_policy)
        fg = result["foreground_mean"]
        for metric in ("dice", "iou", "hd95", "nsd"):
            result[f"mean_{metric}"] = fg[metric]["mean"]
        if return_per_case:
            result["per_case"] = rows
        return result
