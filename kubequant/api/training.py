"""The TrainingJob kind: a qlib model trained on a Ray cluster (KubeRay), optionally tuned with Ray Tune."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from kubequant.api.backtest import ExecutionEngine, Output, Segments, Universe
from kubequant.api.base import AGE, ApiModel, CrdFacts, PrinterColumn, Rule
from kubequant.api.common import ClassReference, DataSource, JobOptions, PodOptions, ResourceRequirements
from kubequant.api.resource import Resource, WorkloadStatus
from kubequant.api.results import DataQuality
from kubequant.version import RAY_VERSION


class Dataset(ApiModel):
    """Features, label and periods the model learns from."""

    handler: ClassReference = Field(
        default_factory=lambda: ClassReference(class_name="Alpha158"),
        description="Feature/label handler; default Alpha158 from qlib.contrib.data.handler.",
    )
    segments: Segments = Field(description="Train/valid/test periods.")
    engine: ExecutionEngine = Field(
        ExecutionEngine.AUTO,
        description=(
            "auto: qlib's Alpha158, Alpha158vwap, Alpha360 or Alpha360vwap (handler without a module) is "
            "computed by kubequant's compiled handler (kubequant.workloads.features: qlib's values, "
            "columns and processors, a fraction of the time); any other handler runs as named. "
            "qlib: always qlib's own handler (the reference)."
        ),
    )


class RayWorkers(ApiModel):
    """The Ray worker group."""

    replicas: int = Field(2, ge=1, le=256, description="Number of Ray worker pods.")
    resources: ResourceRequirements | None = Field(None, description="Resources of each worker pod.")
    gpus_per_worker: int = Field(
        0, ge=0, le=16, description="GPUs per worker; >0 places workers on the GPU pool."
    )


class RayCluster(ApiModel):
    """The Ray cluster (a KubeRay RayCluster) the training runs on."""

    ray_version: Annotated[str, StringConstraints(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")] = Field(
        RAY_VERSION,
        description=f"Ray version of the cluster: the Ray in the kubequant image, {RAY_VERSION}; no other "
        "value is accepted (the driver and every node must run the same Ray).",
    )
    head_resources: ResourceRequirements | None = Field(None, description="Resources of the head pod.")
    workers: RayWorkers = Field(default_factory=RayWorkers, description="The worker group.")

    # One Ray per release: the image carries ray==RAY_VERSION, and Ray refuses a driver or node of
    # another version at connect time, long after the pods were scheduled.
    __rules__ = (
        Rule(
            cel=f"self.rayVersion == '{RAY_VERSION}'",
            message=f"rayVersion must be {RAY_VERSION}, the Ray in the kubequant image; remove rayVersion "
            f"or set it to {RAY_VERSION}",
            field="rayVersion",
            check=lambda r: r.ray_version == RAY_VERSION,
        ),
    )


class ParamDistribution(StrEnum):
    UNIFORM = "uniform"
    LOGUNIFORM = "loguniform"
    RANDINT = "randint"
    CHOICE = "choice"


class ParamSpace(ApiModel):
    """The search range of one hyperparameter."""

    distribution: ParamDistribution = Field(description="uniform, loguniform, randint or choice.")
    low: float | None = Field(None, description="Lower bound (uniform, loguniform, randint).")
    high: float | None = Field(None, description="Upper bound, exclusive for randint.")
    values: list[float] | None = Field(None, max_length=64, description="Numeric candidates for choice.")
    categories: list[Annotated[str, StringConstraints(max_length=256)]] | None = Field(
        None, max_length=64, description="String candidates for choice (e.g. boosting types)."
    )

    # The API server types CEL variables from the schema, so numbers and strings live in two typed lists.
    __rules__ = (
        Rule(
            cel="self.distribution != 'choice' || has(self.values) != has(self.categories)",
            message="choice needs candidates; set values (numbers) or categories (strings), not both",
            field="values",
            check=lambda p: (
                p.distribution != ParamDistribution.CHOICE or ((p.values is None) != (p.categories is None))
            ),
        ),
        Rule(
            cel="self.distribution == 'choice' || (has(self.low) && has(self.high) && self.low < self.high)",
            message="uniform, loguniform and randint need low < high; set both, with high above low",
            field="high",
            check=lambda p: (
                p.distribution == ParamDistribution.CHOICE
                or (p.low is not None and p.high is not None and p.low < p.high)
            ),
        ),
        Rule(
            cel="self.distribution != 'loguniform' || (has(self.low) && self.low > 0.0)",
            message="loguniform needs low > 0; set low to a positive number",
            field="low",
            check=lambda p: (
                p.distribution != ParamDistribution.LOGUNIFORM or (p.low is not None and p.low > 0)
            ),
        ),
    )


class TuneMode(StrEnum):
    MAX = "max"
    MIN = "min"


class Tune(ApiModel):
    """A hyperparameter search with Ray Tune."""

    num_samples: int = Field(8, ge=1, le=10000, description="Trials to run.")
    max_concurrent_trials: int = Field(2, ge=1, le=1000, description="Trials running at once.")
    metric: str = Field(
        "valid_ic", pattern=r"^(valid_ic|valid_rank_ic|valid_loss)$", description="Metric to optimise."
    )
    mode: TuneMode = Field(TuneMode.MAX, description="max or min.")
    search_space: dict[str, ParamSpace] = Field(
        max_length=64,
        description="Model kwargs to search, by name, e.g. {learning_rate: {distribution: loguniform, …}}.",
    )

    __rules__ = (
        Rule(
            cel="self.metric != 'valid_loss' || self.mode == 'min'",
            message="valid_loss is minimised; set mode: min",
            field="mode",
            check=lambda t: t.metric != "valid_loss" or t.mode == TuneMode.MIN,
        ),
        Rule(
            cel="self.maxConcurrentTrials <= self.numSamples",
            message="maxConcurrentTrials must not exceed numSamples; lower it",
            field="maxConcurrentTrials",
            check=lambda t: t.max_concurrent_trials <= t.num_samples,
        ),
    )


class TrainingJobOptions(JobOptions):
    """Knobs of the KubeRay RayJob that runs the training (cluster only)."""

    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Wall-clock limit of the whole run, cluster start-up included; the run fails with "
        "DeadlineExceeded after it (the RayJob's activeDeadlineSeconds).",
    )
    backoff_limit: int = Field(
        0,
        ge=0,
        le=100,
        description="Retries of the whole run, each on a new Ray cluster, before it fails (the RayJob's "
        "backoffLimit).",
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        description="Seconds the finished run's Ray cluster is kept (to read its logs) before it is "
        "deleted; default 0. The TrainingJob, its results and its artifacts stay.",
    )
    pre_running_deadline_seconds: int | None = Field(
        600,
        ge=1,
        description="Limit on the time from creation until the training runs (pods scheduled and "
        "pulled, Ray started, job submitted); the run fails with PreRunningDeadlineExceeded after it "
        "instead of waiting in Initializing forever. Unset: no limit.",
    )
    submitter_backoff_limit: int = Field(
        2,
        ge=0,
        le=20,
        description="Retries of the submitter pod (it submits the training to the Ray cluster and "
        "reports its results) before the run fails with SubmissionFailed.",
    )
    queue_name: (
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)] | None
    ) = Field(
        None,
        description="Kueue LocalQueue that admits the run: set as the RayJob's kueue.x-k8s.io/queue-name "
        "label, and the RayJob is created suspended for Kueue to start.",
    )


class TrainingJobSpec(ApiModel):
    """What to train and where."""

    data: DataSource = Field(default_factory=DataSource, description="The qlib data bundle.")
    universe: Universe = Field(default_factory=Universe, description="Instruments in the dataset.")
    dataset: Dataset = Field(description="Features, label and periods.")
    model: ClassReference = Field(
        default_factory=lambda: ClassReference(class_name="LGBModel"),
        description="qlib model class; default LGBModel (LightGBM) from qlib.contrib.model.gbdt.",
    )
    ray: RayCluster = Field(default_factory=RayCluster, description="The Ray cluster the training runs on.")
    tune: Tune | None = Field(None, description="Optional hyperparameter search.")
    output: Output = Field(default_factory=Output, description="Where the model artifact and metrics go.")
    pod: PodOptions = Field(
        default_factory=PodOptions,
        description="Image, pull secrets, ServiceAccount and placement of every pod of the run (Ray head, "
        "workers and submitter; cluster only); resources are the submitter's.",
    )
    job: TrainingJobOptions = Field(
        default_factory=TrainingJobOptions, description="Limits of the run (cluster only)."
    )
    suspend: bool = Field(
        False,
        description="Create the run suspended; the only field that may change later (resuming starts a "
        "new Ray cluster).",
    )


class TrainingMetrics(ApiModel):
    """Validation and test metrics of the trained model."""

    ic: float | None = Field(None, description="Mean daily Pearson IC on the test segment.")
    icir: float | None = Field(None, description="IC mean over its standard deviation.")
    rank_ic: float | None = Field(None, description="Mean daily Spearman IC on the test segment.")
    rank_icir: float | None = Field(None, description="Rank IC mean over its standard deviation.")
    valid_ic: float | None = Field(None, description="Mean daily IC on the valid segment.")
    loss: float | None = Field(None, description="Final validation loss.")


class TrainingResult(ApiModel):
    """What a finished training run reports: the object `kubequant run -o json` prints for a TrainingJob,
    and the JSON the Ray job's submitter leaves in its termination message for the operator (at most
    4 KiB: bestParams is dropped first when it does not fit; model.json always has everything)."""

    model_uri: str | None = Field(None, max_length=2048, description="Where the model artifact was written.")
    best_metric: float | None = Field(None, description="Best value of the optimised metric.")
    best_params: dict[str, object] | None = Field(
        None,
        description="Hyperparameters of the best trial.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    trials: int | None = Field(None, ge=0, description="Trials completed.")
    metrics: TrainingMetrics | None = Field(None, description="Metrics of the best model.")
    data_quality: DataQuality | None = Field(
        None,
        description="Data quality of what the run read: the handler's fields for the universe's members "
        "from the train segment's start to the test segment's end.",
    )


class TrainingPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def is_terminal(self) -> bool:
        """Whether the run is over."""
        return self in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)


class TrainingJobStatus(WorkloadStatus):
    """Observed state of a TrainingJob."""

    phase: TrainingPhase | None = Field(None, description="Summary for humans; conditions are authoritative.")
    job_name: str | None = Field(
        None, max_length=253, description="Name of the submitter Job (it submits the training to Ray)."
    )
    ray_job_name: str | None = Field(None, max_length=253, description="Name of the KubeRay RayJob.")
    ray_cluster_name: str | None = Field(None, max_length=253, description="Name of the RayCluster.")
    ray_job_id: str | None = Field(None, max_length=253, description="The Ray job submission id.")
    dashboard_url: str | None = Field(
        None, max_length=2048, description="The Ray dashboard's address inside the cluster."
    )
    start_time: dt.datetime | None = Field(None, description="When training started.")
    completion_time: dt.datetime | None = Field(None, description="When training finished.")
    best_metric: float | None = Field(None, description="Best value of the optimised metric.")
    best_params: dict[str, object] | None = Field(
        None,
        description="Hyperparameters of the best trial.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    trials: int | None = Field(None, ge=0, description="Trials completed.")
    metrics: TrainingMetrics | None = Field(None, description="Metrics of the best model.")
    data_quality: DataQuality | None = Field(
        None,
        description="Data quality of what the run read (the handler's fields, the universe's members, "
        "train start to test end); served as kubequant_run_data_missing_ratio.",
    )
    model_uri: str | None = Field(None, max_length=2048, description="Where the model artifact was written.")


class TrainingJob(Resource):
    """A model training run on Ray."""

    spec: TrainingJobSpec = Field(description="What to train and where.")
    status: TrainingJobStatus | None = Field(None, description="Observed state, written by the operator.")

    __crd__ = CrdFacts(
        kind="TrainingJob",
        plural="trainingjobs",
        singular="trainingjob",
        short_names=("tj",),
        description="Trains a qlib model (LightGBM first) on a Ray cluster, optionally with a Ray Tune search.",
        columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Best metric", ".status.bestMetric", "number"),
            AGE,
        ),
        mutable_spec_fields=("suspend",),
    )
