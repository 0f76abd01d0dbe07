"""The `sam-medft` command. It parses arguments and calls the library; it builds nothing.

User mistakes (`SamMedftError`) print as one plain-text `error:` line and exit with their
`exit_code` (2; 3 for a resumable interruption); Ctrl-C outside training prints
`interrupted` and exits 130; anything else is a bug and keeps its traceback (exit 1).
Every message goes through `sam_medft.console`, so user paths and values print verbatim.

Each command imports the library it calls inside its body (as `bench_cli` and `eval.cli`
do): torch, transformers and peft load when a command runs, never for `sam-medft --help`.
These are the only function-local imports of sam_medft modules (tests/test_layers.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from sam_medft.bench_cli import bench_command
from sam_medft.console import (
    EXIT_CTRL_C,
    configure_logging,
    print_error,
    print_info,
    print_interrupted,
    print_renderable,
    print_warning,
    stderr_console,
    stdout_console,
)
from sam_medft.errors import SamMedftError
from sam_medft.eval.cli import eval_command
from sam_medft.resources import (
    accelerate_config,
    accelerate_configs,
    accelerate_configs_dir,
    find_recipe,
    recipe_files,
    recipes_dir,
)


class CtrlC(Exception):
    """Ctrl-C inside a command, carried to `main` (typer would exit 130 without a word)."""


class _Commands(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise CtrlC() from None


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Fine-tune Segment Anything models on your own medical segmentation data.")
data_app = typer.Typer(no_args_is_help=True, help="Make and check data sets.")
app.add_typer(data_app, name="data")
console = stderr_console()
out = stdout_console()

RECIPES_DIR = recipes_dir()  # inside the installed package, or the checkout's recipes/

Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. train.max_steps=50")]


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe (see `sam-medft recipes`)")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete an existing run folder first")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the memory/compute plan and exit")] = False,
):
    """Fine-tune a SAM model as the recipe says; writes runs/<name>/."""
    from sam_medft.config import load_recipe

    r = load_recipe(find_recipe(recipe), overrides or [])
    if r.hub.push and not dry_run:
        from sam_medft.hub import check_push_target

        check_push_target(r.hub.repo_id)  # a bad id or a missing login fails before training
    if dry_run:
        from sam_medft.training.dry_run import plan_table

        print_renderable(plan_table(r), console=out)
        return
    from sam_medft.training.trainer import train as run_training

    result = run_training(r, resume=resume, overwrite=overwrite)
    from accelerate import PartialState

    if PartialState().is_main_process:
        if result.best_dice > 0:
            picked = (f"best validation foreground Dice {result.best_dice:.4f} (low-res grid) at "
                      f"step {result.best_step}")
        elif result.history:
            picked = (f"no validation segmented any foreground: the adapter (step "
                      f"{result.best_step}) segments nothing")
        else:
            picked = f"no validation split: the adapter of step {result.best_step}"
        print_info(("done", "bold green"), f": {result.steps} steps in {result.seconds:.1f} s; "
                   f"{picked}", console=out)
        print_info(f"adapter: {result.run_dir / 'adapter'}", console=out)
        if r.hub.push:
            from sam_medft.hub import push_recipe_run

            print_info(f"pushed to {push_recipe_run(result.run_dir, r.hub)}", console=out)


@app.command()
def pretrain(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe with a pretrain: section")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete an existing run folder first")] = False,
):
    """Self-supervised pretraining of the image encoder on unlabelled images (Setup 3);
    writes runs/<name>/encoder/ for `train ... model.encoder_weights=runs/<name>`."""
    from sam_medft.config import load_recipe
    from sam_medft.training.pretrain import pretrain as run_pretrain

    r = load_recipe(find_recipe(recipe), overrides or [])
    result = run_pretrain(r, resume=resume, overwrite=overwrite)
    from accelerate import PartialState

    if PartialState().is_main_process:
        best = (f"best validation masked-reconstruction L1 {-result.best_dice:.4f} at step "
                f"{result.best_step}" if result.history else "no validation split")
        print_info(("done", "bold green"), f": {result.steps} steps in {result.seconds:.1f} s; "
                   f"{best}", console=out)
        print_info(f"encoder: {result.run_dir / 'encoder'} (fine-tune with "
                   f"model.encoder_weights={result.run_dir})", console=out)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="run folder, adapter folder or Hub id")],
    inputs: Annotated[list[Path], typer.Argument(help="image files, folders or .txt/.csv lists")],
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("predictions"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    workers: Annotated[int, typer.Option(min=0, help="processes decoding and resizing the "
                                         "next images while the model runs")] = 0,
    probs: Annotated[bool, typer.Option(help="also save per-class probabilities (.npy)")] = False,
    overlays: Annotated[bool, typer.Option(help="also save colour overlays (prompted: with the boxes and points drawn)")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace predictions an earlier `predict` "
                                            "wrote there (never other files)")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision")] = None,
    prompts: Annotated[Path | None, typer.Option(help="prompts.json: boxes/points per image")] = None,
    box: Annotated[str | None, typer.Option(help="[LABEL:]x0,y0,x1,y1 for a single image")] = None,
    point: Annotated[list[str] | None, typer.Option(help="[LABEL:]x,y (repeatable), single image")] = None,
    values: Annotated[str, typer.Option(help="what the PNGs hold: class (class indices, palette), "
                                        "index (class indices, plain grey PNG) or raw (each "
                                        "class's raw mask value, as the training masks; see "
                                        "legend.json)")] = "class",
    foreground_value: Annotated[int | None, typer.Option(
        help="binary runs with --values raw: the foreground value written (default 255)")] = None,
    largest_component: Annotated[bool, typer.Option(
        "--largest-component", help="volumes: keep each class's largest 3-D connected "
        "component")] = False,
    fill_holes: Annotated[bool, typer.Option(
        "--fill-holes", help="volumes: fill the holes each class encloses")] = False,
):
    """Label maps (PNG, palette + legend.json) at each image's original size; volumes (NIfTI,
    DICOM series) give NIfTI label volumes in their source's geometry."""
    from sam_medft.data.lists import recipe_img_folder
    from sam_medft.infer.volume_files import has_volume_inputs, predict_volume_paths
    from sam_medft.runs import run_recipe_file

    # a list is read against the run's data.img_folder, as training and eval read it
    img_folder = recipe_img_folder(run_recipe_file(model)) if Path(model).is_dir() else None
    if has_volume_inputs(inputs, img_folder):
        if prompts or box or point or probs or overlays:
            raise SamMedftError("volumes are predicted in automatic mode into NIfTI label "
                                "volumes; leave out --prompts/--box/--point/--probs/--overlays")
        written = predict_volume_paths(model, inputs, out_dir, batch_size=batch_size,
                                       num_workers=workers, largest_component=largest_component,
                                       fill_holes=fill_holes, values=values,
                                       foreground=foreground_value, overwrite=overwrite,
                                       device=device, revision=revision,
                                       img_folder=img_folder)
        print_info(f"wrote {len(written)} label volume(s) to {out_dir} "
                   f"(legend: {out_dir / 'legend.json'})", console=out)
        return
    if largest_component or fill_holes:
        raise SamMedftError("--largest-component and --fill-holes post-process label volumes; "
                            "these inputs are 2-D images")
    from sam_medft.infer.predict import (
        FineTunedSam,
        check_out_location,
        check_output_folder,
        check_values,
        output_files,
        predict_paths,
        predict_paths_with_prompts,
    )

    if prompts or box or point:
        if probs:
            raise SamMedftError("--probs is for automatic-mode runs; prompted prediction writes "
                                "label maps (and --overlays, with the prompts drawn)")
        # --out and the prompts are checked against the images before the model is loaded
        check_out_location(inputs, out_dir)
        written = predict_paths_with_prompts(model, inputs, out_dir, prompts_file=prompts,
                                             box=box, points=point or [], overwrite=overwrite,
                                             device=device, revision=revision,
                                             batch_size=batch_size, num_workers=workers,
                                             overlays=overlays, values=values,
                                             foreground=foreground_value)
    else:
        # the --out folder is checked before the model loads (a mistake fails in a second)
        check_output_folder(inputs, output_files(inputs, out_dir, probs=probs, overlays=overlays,
                                                 img_folder=img_folder),
                            out_dir, overwrite=overwrite, claim=False, img_folder=img_folder)
        check_values(model, values, foreground_value, revision=revision)
        predictor = FineTunedSam.load(model, device=device, revision=revision)
        written = predict_paths(predictor, inputs, out_dir, batch_size=batch_size, save_probs=probs,
                                overlays=overlays, overwrite=overwrite, num_workers=workers,
                                values=values, foreground=foreground_value,
                                img_folder=img_folder)
    print_info(f"wrote {len(written)} label map(s) to {out_dir} "
               f"(legend: {out_dir / 'legend.json'})", console=out)


@app.command("app")
def app_command(
    model: Annotated[str, typer.Argument(help="run folder, adapter folder or Hub id")],
    compare: Annotated[str | None, typer.Option(help="a second run shown side by side")] = None,
    host: Annotated[str, typer.Option(help="address to serve on (loopback: this machine only)")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(min=1, max=65535,
                                             help="port (default: the first free from 7860)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
):
    """A local web app: open a scan, click points or a box, see and correct the mask, save it."""
    try:
        from sam_medft.app.server import serve
    except ImportError as err:
        if err.name not in ("gradio", "nibabel", "pydicom"):
            raise
        raise SamMedftError(f"the app needs gradio ({err.name} is not installed): "
                            f"pip install 'sam_medft[app]'") from None
    serve([model] + ([compare] if compare else []), host=host, port=port, device=device)


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="a training run folder (with adapter/)")],
    repo_id: Annotated[str, typer.Argument(help="your-name/repo-name on the Hub")],
    private: Annotated[bool, typer.Option(help="create the repo private")] = False,
    revision: Annotated[str | None, typer.Option(help="branch to push to")] = None,
    message: Annotated[str | None, typer.Option(help="commit message")] = None,
):
    """Upload the adapter, recipe, eval summary and a model card to the Hub."""
    from sam_medft.hub import push_run

    url = push_run(run_dir, repo_id, private=private, revision=revision, commit_message=message)
    print_info(f"pushed {run_dir} to {url}", console=out)


@app.command()
def recipes(
    params: Annotated[bool, typer.Option("--params", help="parameter counts and adapter sizes")] = False,
):
    """List the shipped recipes."""
    from sam_medft.recipes_index import list_recipes, params_table, recipes_table

    found = list_recipes(RECIPES_DIR)
    print_renderable(params_table(found) if params else recipes_table(found), console=out)


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="original segment-anything / MedSAM / encoder-only .pth")],
    out_dir: Annotated[Path, typer.Argument(help="transformers SamModel folder to write")],
    arch: Annotated[str | None, typer.Option(help="vit_b, vit_l, vit_h, mobilesam (inferred when omitted)")] = None,
    base_model: Annotated[str | None, typer.Option(help="fills the decoder of encoder-only weights")] = None,
    normalization: Annotated[str | None, typer.Option(help="sam or medsam")] = None,
    overwrite: bool = False,
):
    """Convert an original SAM checkpoint into a folder `from_pretrained` loads."""
    from sam_medft.models.convert import convert_checkpoint

    report = convert_checkpoint(src, out_dir, arch=arch, base_model=base_model,
                                overwrite=overwrite, normalization=normalization)
    print_info(str(report), console=out)


@app.command()
def configs(
    name: Annotated[str | None, typer.Argument(help="print only this config's path, e.g. cpu")] = None,
    recipes: Annotated[bool, typer.Option("--recipes", help="the shipped recipes instead")] = False,
):
    """Where the shipped accelerate configs (or recipes) are: the folder, then each file."""
    if name is not None:
        typer.echo(accelerate_config(name))
        return
    files = recipe_files() if recipes else accelerate_configs()
    typer.echo(recipes_dir() if recipes else accelerate_configs_dir())
    for path in files:
        typer.echo(path)


app.command("bench")(bench_command)
app.command("eval")(eval_command)


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Argument(help="folder to write images/, masks/ and lists")],
    n_train: Annotated[int | None, typer.Option(help="[default: 48; volumes: 8]")] = None,
    n_val: Annotated[int | None, typer.Option(help="[default: 12; volumes: none, "
                                              "data.val_fraction splits train]")] = None,
    n_test: Annotated[int | None, typer.Option(help="[default: 12; volumes: 2]")] = None,
    size: Annotated[int | None, typer.Option(help="[default: 128; volumes: 64]")] = None,
    seed: int = 0,
    overwrite: Annotated[bool, typer.Option(help="replace the files an earlier `data synth` "
                                            "wrote in the folder (never other files)")] = False,
    volumes: Annotated[bool, typer.Option(
        "--volumes", help="CT-like NIfTI volumes in the nnU-Net raw layout instead (default "
        "8 train + 2 test cases of 64x64x20 voxels; --n-train/--n-test/--size change it)")] = False,
):
    """Write the built-in synthetic MRI/CT-like demo data set (into a new or empty folder)."""
    from sam_medft.data.synthetic import write_synthetic

    if volumes:
        from sam_medft.data.synthetic_volumes import describe, write_synthetic_volumes

        if n_val is not None:
            raise SamMedftError("--n-val is for 2-D slices; volumes are split into train and "
                                "validation cases at training time (data.val_fraction)")
        root = write_synthetic_volumes(out_dir, n_train=8 if n_train is None else n_train,
                                       n_test=2 if n_test is None else n_test,
                                       size=64 if size is None else size, seed=seed,
                                       overwrite=overwrite)
        print_info(describe(root), console=out)
        return
    n_train = 48 if n_train is None else n_train
    n_val = 12 if n_val is None else n_val
    n_test = 12 if n_test is None else n_test
    size = 128 if size is None else size

    notes: list[str] = []
    info = write_synthetic(out_dir, n_train=n_train, n_val=n_val, n_test=n_test, size=size,
                           seed=seed, overwrite=overwrite, notes=notes)
    for note in notes:
        print_warning(note, console=console)
    counts = info.get("counts", {})
    print_info(f"wrote {sum(counts.values())} synthetic slices to {out_dir} "
               f"({', '.join(f'{n} {k}' for k, n in counts.items())}); classes "
               f"{', '.join(info.get('classes', []))}; lists train.csv, val.csv, test.csv",
               console=out)


@data_app.command("check")
def data_check(recipe: Path, overrides: Overrides = None):
    """Validate a recipe's data set before training (files, sizes, labels, empties)."""
    from sam_medft.config import load_recipe
    from sam_medft.data.check import check_dataset

    r = load_recipe(find_recipe(recipe), overrides or [])
    if r.data.source == "mixture":  # Setup 2: one table per data set, with its own labels
        from sam_medft.data.mixture import check_data, check_entries

        entries = check_entries(r.data)
        for entry, entry_report in entries:
            table = entry_report.table()
            table.title = f"data check: data set {entry.name} (weight {entry.weight:g})"
            print_renderable(table, console=out)
        report = check_data(r.data, entries=entries)
    else:
        from sam_medft.data.volume_check import check_volumes

        volumes = check_volumes(r.data)  # None: 2-D data
        if volumes is not None:
            print_renderable(volumes.table(), console=out)
            volumes.raise_for_errors()
        report = check_dataset(r.data)
        print_renderable(report.table(), console=out)
    for w in report.warnings:
        print_warning(w, console=out)  # stdout, beside the table they explain
    report.raise_for_errors()
    print_info(("data set OK", "green"), console=out)


@data_app.command("slice")
def data_slice(
    recipe: Path,
    out_dir: Annotated[Path, typer.Argument(help="folder for images/, masks/ and the lists")],
    overrides: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export there")] = False,
):
    """Export a volume recipe's splits as 2-D PNG slices + CSV lists (the study's layout)."""
    from sam_medft.config import load_recipe
    from sam_medft.data.slice_export import export_slices

    r = load_recipe(find_recipe(recipe), overrides or [])
    counts = export_slices(r.data, out_dir, overwrite=overwrite)
    print_info(f"wrote {sum(counts.values())} slices to {out_dir} "
               f"({', '.join(f'{n} {k}' for k, n in counts.items())}); lists "
               f"{', '.join(f'{k}.csv' for k in counts)}", console=out)


def main() -> None:
    """The `sam-medft` entry point: exit 0, 1 (a bug: traceback), 2 (a user mistake),
    3 (interrupted, resumable) or 130 (Ctrl-C outside training)."""
    try:
        configure_logging()
        app()
    except SamMedftError as e:
        print_error(e, console=console)
        sys.exit(e.exit_code)
    except (CtrlC, KeyboardInterrupt):
        print_interrupted(console=console)
        sys.exit(EXIT_CTRL_C)
