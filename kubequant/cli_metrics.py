"""`kubequant metrics-docs [--check]`: docs/metrics.md from the code's metric registries.

Registered on the main group by kubequant/cli.py (``main.add_command(metrics_docs)``); until then
``python -m kubequant.metrics_docs`` does the same.
"""

from __future__ import annotations

import sys

import click

from kubequant import metrics_docs as docs


@click.command("metrics-docs")
@click.option("--check", is_flag=True, help="Fail (exit 1) when docs/metrics.md is stale.")
def metrics_docs(check: bool) -> None:
    """Write docs/metrics.md from the metrics the code registers."""
    sys.exit(docs.main(["--check"] if check else []))
