"""Where a workload's qlib bundle is on this machine: one rule for Backtests, TrainingJobs and sessions."""

from __future__ import annotations

from pathlib import Path

from kubequant.api.common import DataSource, SampleData
from kubequant.errors import ConfigError
from kubequant.workloads.data.sample import SampleSpec, ensure_sample_bundle


def sample_spec(sample: SampleData) -> SampleSpec:
    """The generator's SampleSpec for the API's ``spec.data.sample`` (equal settings, the same cached bundle)."""
    return SampleSpec(
        instruments=sample.instruments,
        start=str(sample.start),
        end=str(sample.end),
        seed=sample.seed,
        freqs=("day", "1min") if sample.minute_bars else ("day",),
        minute_instruments=sample.minute_instruments,
        minute_days=sample.minute_days,
    )


def resolve_bundle(
    data: DataSource, override: Path | None = None, *, override_flag: str = "--data-path"
) -> Path:
    """The local folder of the bundle: ``override`` (a mounted volume), ``spec.data.path``, or the
    cached sample (generated on first use). A volume cannot be read outside the cluster: the error
    names the field and the two ways out (``override_flag`` is the command's option for a local copy)."""
    if override is not None:
        return Path(override)
    if data.path is not None:
        return Path(data.path)
    sample = data.resolved_sample()
    if sample is not None:
        return ensure_sample_bundle(sample_spec(sample))
    raise ConfigError(
        "a PersistentVolumeClaim cannot be read outside the cluster",
        where="spec.data.volume",
        fix=f"copy the bundle to this machine and set spec.data.path (or pass {override_flag} PATH)",
    )
