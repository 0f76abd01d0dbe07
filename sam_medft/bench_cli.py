"""`sam-medft bench`: the command-line face of `sam_medft.bench` (parses, calls, prints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sam_medft.console import print_renderable
from sam_medft.errors import SamMedftError
from sam_medft.resources import find_recipe


def bench_command(
    recipe: Annotated[
        Path | None,
        typer.Argument(
            help="recipe whose model, method and scope are measured (path or shipped name, e.g. "
            "sam-vit-base/lora_encdec); default: sam-vit-base LoRA encoder+decoder"
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch", help="images per step (default: the recipe's train.batch_size, else 4)"
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            help="input size in pixels, a multiple of 16 (default: the model's, "
            "1024 for SAM); small sizes make CPU runs quick",
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="timed steps")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed warm-up steps before them")] = 5,
    mode: Annotated[
        str,
        typer.Option(
            help="train | predict | decoder-cached (decoder-only scopes, embeddings from the "
            "cache) | epoch (train, then fed by the real data pipeline: the end-to-end ratio)",
        ),
    ] = "train",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON record")] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="architecture: tiny, sam-vit-base, sam-vit-large, sam-vit-huge, medsam, "
            "slimsam-50/77, sam-hq-vit-base/huge (default: the recipe's)",
        ),
    ] = None,
    fast: Annotated[
        bool | None,
        typer.Option(
            "--fast/--plain",
            help="fast vision attention or transformers' own (default: the "
            "recipe's train.fast_attention, else fast)",
        ),
    ] = None,
    compile_: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile each vision layer (default: the recipe's train.compile, else off)",
        ),
    ] = None,
    classes: Annotated[int, typer.Option(help="classes incl. background")] = 2,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp32")
    ] = "auto",
    activation_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--activation-checkpointing/--no-activation-checkpointing",
            help="recompute vision layers in backward (default: the recipe's)",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if available)")
    ] = None,
    pad_value: Annotated[
        str,
        typer.Option(help="fast attention: pad v to the q/k width so flash applies: auto, on, off"),
    ] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="--mode epoch: data-loader workers (default: the recipe's, else 0)"),
    ] = None,
    transform_device: Annotated[
        str | None,
        typer.Option(
            help="--mode epoch: where batches are normalised and augmented: auto, "
            "accelerator, loader (default: the recipe's, else auto)"
        ),
    ] = None,
) -> None:
    """Measure images/s and peak memory of a recipe's training or prediction step
    (random weights, synthetic data, nothing downloaded). torch and the library load here,
    when the command runs, not when `sam-medft --help` imports this module."""
    import torch

    from sam_medft.bench import BenchSettings, result_table, run_bench
    from sam_medft.config import load_recipe

    pads = {"auto": None, "on": True, "off": False}
    if pad_value not in pads:
        raise SamMedftError(f"bench --pad-value {pad_value!r}: use auto, on or off")
    if threads is not None and threads < 1:
        raise SamMedftError(f"bench --threads {threads} is too small; use 1 or more")
    if threads is not None:
        torch.set_num_threads(threads)
    r = load_recipe(find_recipe(recipe)) if recipe is not None else None
    # a flag left out is None: the recipe's value, else the schema's default; 0 and "" are
    # given values, so --batch 0 reaches BenchSettings.check instead of becoming the default
    settings = BenchSettings.from_recipe(
        r, model=model, batch=batch, image_size=image_size, steps=steps, warmup=warmup,
        mode=mode, fast=fast, compile=compile_, num_classes=classes, precision=precision,
        activation_checkpointing=activation_checkpointing, device=device,
        pad_value=pads[pad_value], num_workers=workers, transform_device=transform_device,
    )
    result = run_bench(settings)
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
    else:
        print_renderable(result_table(result))
