"""The ``kubequant`` command line: the only place that prints for humans.

Bad input exits 2 with one line naming the field or file and the fix; failures exit 1;
tracebacks only with ``--debug``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from kubequant.errors import KubequantError

log = logging.getLogger("kubequant")


class _Context:
    debug: bool = False


def _fail(err: BaseException, debug: bool) -> None:
    if debug:
        raise err
    if isinstance(err, KubequantError):
        click.echo(f"error: {err.one_line()}", err=True)
        sys.exit(err.exit_code)
    click.echo(f"error: {type(err).__name__}: {err}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """A group whose commands turn KubequantError into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SystemExit:
            raise
        except Exception as err:  # noqa: BLE001 - the one place errors become exit codes
            root = ctx.find_root()
            _fail(err, bool(root.params.get("debug")))


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="kubequant")
def main(debug: bool) -> None:
    """kubequant: quantitative research and trading on Kubernetes."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- crds ---------------------------------------------------------------------------------


@main.group(cls=_Group)
def crds() -> None:
    """CustomResourceDefinitions generated from the API models."""


@crds.command("generate")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("crds"), show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 and name the file when the files on disk drift.")
def crds_generate(out_dir: Path, check: bool) -> None:
    """Write crds/<plural>.kubequant.io.yaml from the pydantic models."""
    from kubequant.crdgen import check_crds, write_crds

    if check:
        drifted = check_crds(out_dir)
        if drifted:
            for name in drifted:
                click.echo(f"drift: {name} differs from the API models; run `kubequant crds generate`", err=True)
            sys.exit(1)
        click.echo(f"crds in {out_dir} match the API models")
        return
    for path in write_crds(out_dir):
        click.echo(f"wrote {path}")


# --- validate -------------------------------------------------------------------------------


@main.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, help="Manifest file(s); '-' for stdin.")
def validate(files: tuple[str, ...]) -> None:
    """Check manifests against the API models and cross-field rules (exit 2 if invalid)."""
    from kubequant.manifests import load_documents, validate_documents

    problems = 0
    for name in files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
        for doc_name, errors in validate_documents(load_documents(text, source=name)):
            if errors:
                problems += len(errors)
                for err in errors:
                    click.echo(f"{doc_name}: {err.one_line()}", err=True)
            else:
                click.echo(f"{doc_name}: valid")
    if problems:
        sys.exit(2)


# --- data -----------------------------------------------------------------------------------


@main.group(cls=_Group)
def data() -> None:
    """Market data bundles in qlib's binary layout."""


@data.command("sample")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--instruments", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--years", type=click.IntRange(min=1), default=None, help="Years from 2020-01-01 (default: through 2022-12-31).")
@click.option("--seed", type=int, default=42, show_default=True)
def data_sample(out_dir: Path, instruments: int, years: int | None, seed: int) -> None:
    """Generate the deterministic synthetic market (the demo data)."""
    from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

    summary = write_sample_bundle(out_dir, SampleSpec.from_cli(instruments=instruments, years=years, seed=seed))
    click.echo(summary.describe())


@data.command("import")
@click.option("--from", "source", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def data_import(source: Path, out_dir: Path) -> None:
    """Import OHLCV CSV/Parquet (a file per instrument, or one long table) into a qlib bundle."""
    from kubequant.workloads.data.importer import import_bundle

    summary = import_bundle(source, out_dir)
    click.echo(summary.describe())
