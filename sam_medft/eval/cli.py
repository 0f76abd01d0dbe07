"""`sam-medft eval`: the command around `sam_medft.eval.evaluate.evaluate_run`, and with
`--pred DIR --ref LIST_OR_DIR` around `sam_medft.eval.score_folder.score_prediction_folder`.

Registered by the main CLI with `app.command("eval")(eval_command)`; it parses, calls the
runner and prints the tables, nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam_medft.console import message, print_info, print_renderable, stdout_console
from sam_medft.errors import SamMedftError


def eval_command(
    run: Annotated[
        str | None,
        typer.Argument(help="run folder (runs/<name>), adapter folder or Hub id (not with --pred)"),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="val or test (default: the recipe's eval.split)")
    ] = None,
    list_file: Annotated[
        Path | None,
        typer.Option("--list", help="study-style CSV/TSV list image,mask to evaluate instead"),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="dotted recipe override, repeatable: --data data.test_list=other.csv "
            "--data data.img_folder=/data/img --data eval.empty_policy=count",
        ),
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="also evaluate the base model without the adapter (zero-shot)")
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="output folder (default: <run>/eval)")
    ] = None,
    clicks: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="prompt runs: corrective clicks after 1 point (default: "
            "prompt.refine_clicks, else 3)"
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision")] = None,
    pred: Annotated[
        Path | None,
        typer.Option(help="score this folder of predictions made by anything (PNG/npy or "
                     "NIfTI) instead of a run; needs --ref"),
    ] = None,
    ref: Annotated[
        Path | None,
        typer.Option(help="with --pred: folder of reference label files, or an image,mask list"),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="with --pred: label values to score, e.g. 1=liver,2=tumour (default: "
                     "dataset.json, the predictions' legend.json, else the reference values)"),
    ] = None,
    spacing: Annotated[
        str | None,
        typer.Option(help="with --pred, 2-D maps: pixel size row,column in mm (default: pixels)"),
    ] = None,
    nsd_tolerance: Annotated[
        float | None,
        typer.Option(help="with --pred: NSD tolerance in mm (pixels without spacing); "
                     "default 1.0"),
    ] = None,
    empty_policy: Annotated[
        str | None,
        typer.Option(help="with --pred: exclude or count (both-empty cases); default exclude"),
    ] = None,
    overlays: Annotated[
        int | None,
        typer.Option(help="with --pred: worst and best cases drawn per class; default 2"),
    ] = None,
) -> None:
    """Dice, IoU, HD95 and NSD per image (or volume) and class at the original resolution;
    writes per_case.csv, summary.json, overlays and report.html into <run>/eval/ (with
    --pred: into --out, default <pred>_eval/)."""
    if pred is not None or ref is not None:
        from sam_medft.eval.score_folder import score_prediction_folder
        from sam_medft.eval.summary import format_table

        if pred is None or ref is None:
            raise SamMedftError("--pred and --ref go together: --pred DIR --ref LIST_OR_DIR")
        run_only = given_options({
            "RUN": run, "--split": split, "--list": list_file, "--data": data or None,
            "--baseline": baseline or None, "--clicks": clicks, "--device": device,
            "--revision": revision,
        })
        if run_only:
            raise SamMedftError(
                f"{run_only} {'is' if ',' not in run_only else 'are'} for evaluating a RUN, and "
                "--pred scores files already predicted (no model is loaded): give either a RUN "
                "(with --split/--list/--data/--baseline/--clicks/--device/--revision) or "
                f"--pred DIR --ref LIST_OR_DIR; drop {run_only}"
            )
        result = score_prediction_folder(
            pred, ref, out_dir=out_dir, classes=classes, spacing=spacing,
            nsd_tolerance=1.0 if nsd_tolerance is None else nsd_tolerance,
            empty_policy=empty_policy or "exclude", overlays=2 if overlays is None else overlays,
        )
        print_folder_result(result, format_table)
        return
    if run is None:
        raise SamMedftError(
            "sam-medft eval needs a RUN (run folder, adapter folder or Hub id), or --pred DIR "
            "--ref LIST_OR_DIR to score a folder of predictions"
        )
    pred_only = given_options({
        "--classes": classes, "--spacing": spacing, "--nsd-tolerance": nsd_tolerance,
        "--empty-policy": empty_policy, "--overlays": overlays,
    })
    if pred_only:
        raise SamMedftError(
            f"{pred_only} {'is' if ',' not in pred_only else 'are'} for --pred DIR --ref "
            "LIST_OR_DIR (scoring a folder of predictions); a RUN takes its classes and "
            "spacing from its recipe, and the rest from the recipe's eval section: drop "
            f"{pred_only}, or set e.g. --data eval.nsd_tolerance=2 --data eval.empty_policy=count "
            "--data eval.overlays=0"
        )
    from sam_medft.eval.evaluate import evaluate_run
    from sam_medft.eval.prompt_eval import format_prompt_table
    from sam_medft.eval.summary import format_comparison, format_table

    out = stdout_console()
    result = evaluate_run(
        run,
        split=split,
        list_file=list_file,
        data_overrides=data or [],
        baseline=baseline,
        out_dir=out_dir,
        clicks=clicks,
        device=device,
        revision=revision,
    )
    table = format_table(result.summary, volumes=result.slice_summary is not None)
    table.title = f"{table.title}: {result.mode}"
    print_renderable(table, console=out)
    if result.slice_summary is not None:
        per_slice = format_table(result.slice_summary)
        per_slice.title = (
            f"Per 2-D slice ({result.slice_summary['n_cases']} slices with a scored class in "
            "the reference or the prediction)"
        )
        print_renderable(per_slice, console=out)
    for name, summary in result.summary.get("per_dataset", {}).items():  # a Setup 2 mixture
        per = format_table(summary)
        per.title = f"data set {name}: {summary['n_cases']} cases, the classes it labels"
        print_renderable(per, console=out)
    if result.prompt_table is not None:
        print_renderable(format_prompt_table(result.prompt_table), console=out)
    if result.delta is not None:
        # a Text caption: the note names the base model, printed verbatim
        caption = message(result.baseline_note) if result.baseline_note else None
        print_renderable(format_comparison(result.delta, caption=caption), console=out)  # type: ignore[arg-type]
    print_info(
        f"wrote {result.eval_dir}/: per_case.csv"
        + (", per_slice.csv" if result.slice_summary is not None else "")
        + ", summary.json"
        + (", prompt_table.json" if result.prompt_table is not None else "")
        + (", baseline/summary.json, delta.json" if result.delta is not None else "")
        + f", {len(result.overlays)} overlays, report.html",
        console=out,
    )


def given_options(options: dict[str, object]) -> str:
    """The names of the options given (not None), comma-separated: what a refusal names."""
    return ", ".join(name for name, value in options.items() if value is not None)


def print_folder_result(result, format_table) -> None:
    """The tables of `eval --pred`: per case (3-D for volumes), then per slice."""
    out = stdout_console()
    table = format_table(result.summary, volumes=result.volumes)
    print_renderable(table, console=out)
    if result.slice_summary is not None:
        per_slice = format_table(result.slice_summary)
        per_slice.title = (
            f"Per 2-D slice ({result.slice_summary['n_cases']} slices with a scored class in "
            "the reference or the prediction)"
        )
        print_renderable(per_slice, console=out)
    print_info(
        f"wrote {result.eval_dir}/: per_case.csv"
        + (", per_slice.csv" if result.slice_summary is not None else "")
        + f", summary.json, {len(result.overlays)} overlays, report.html",
        console=out,
    )


__all__ = ["eval_command"]
