"""``richrep data``: datasets as image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from richrep.cli.common import guard, say
from richrep.cli.helptext import HelpGroup
from richrep.cli.progress import progress_bar

data_app = typer.Typer(
    cls=HelpGroup, no_args_is_help=True, help="Datasets: export them as image folders."
)


@data_app.command("export")
def data_export(
    dataset: Annotated[str, typer.Argument(help="A registered image dataset (fashion_mnist).")],
    directory: Annotated[Path, typer.Argument(help="The image folder to write.")],
    size: Annotated[
        int | None, typer.Option(min=4, help="Resize to N × N pixels.", metavar="N")
    ] = None,
    channels: Annotated[
        int | None, typer.Option(help="1 (grey) or 3 (RGB).", metavar="1|3")
    ] = None,
    limit_per_class: Annotated[
        int | None, typer.Option(min=1, help="At most N images per class and split.", metavar="N")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace DIRECTORY if it holds an earlier export of richrep's.")
    ] = False,
) -> None:
    """Write DATASET as PNGs in DIRECTORY/train/<class>/ and DIRECTORY/test/<class>/ (read
    back with the image_folder dataset); atomic: written beside, then renamed. DIRECTORY must
    be new or empty, or (--force) an earlier export; richrep never replaces the current, home
    or root folder, a file, a symbolic link or a folder of yours."""
    from richrep.data.image_folder import export_image_folder
    from richrep.errors import ConfigError

    with guard():
        if channels not in (None, 1, 3):
            raise ConfigError(f"--channels must be 1 or 3, got {channels}")
        with progress_bar() as ticker:

            def progress(done: int, total: int) -> None:
                if ticker.bar is not None:  # a bar on a terminal; the summary line otherwise
                    ticker(f"export {dataset}", done, total)

            counts = export_image_folder(
                dataset,
                {},
                directory,
                size=size,
                channels=channels,  # type: ignore[arg-type]
                limit_per_class=limit_per_class,
                force=force,
                progress=progress,
            )
    say(
        f"wrote {counts.get('train', 0)} train and {counts.get('test', 0)} test images to {directory}"
    )
