"""`sam-medft eval`: the command around `sam_medft.eval.evaluate.evaluate_run`.

Registered by the main CLI with `app.command("eval")(eval_command)`; it parses, calls the
runner and prints the tables, nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam_medft.console import message, print_info, print_renderable, stdout_console


def eval_command(
    run: Annotated[str, typer.Argument(help="run folder (runs/<name>), adapter folder or Hub id")],
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
) -> None:
    """Dice, IoU, HD95 and NSD per image and class at the original resolution; writes
    per_case.csv, summary.json, overlays and report.html into <run>/eval/."""
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
    table = format_table(result.summary)
    table.title = f"{table.title}: {result.mode}"
    print_renderable(table, console=out)
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
        f"wrote {result.eval_dir}/: per_case.csv, summary.json"
        + (", prompt_table.json" if result.prompt_table is not None else "")
        + (", baseline/summary.json, delta.json" if result.delta is not None else "")
        + f", {len(result.overlays)} overlays, report.html",
        console=out,
    )


__all__ = ["eval_command"]
