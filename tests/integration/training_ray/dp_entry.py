"""Entrypoint submitted with `ray job submit` to the loopback cluster: data-parallel LightGBM over two
workers, printing where they ran (the test reads the last line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from training_ray_specs import training_spec

from kubequant.workloads.training.dataset import load_dataset
from kubequant.workloads.training.distributed import DataParallelReport, fit_lightgbm_data_parallel
from kubequant.workloads.training.evaluate import evaluate
from kubequant.workloads.training.ray_runtime import put_dataset, ray_session


def main() -> None:
    spec = training_spec()
    with ray_session(spec, None) as session:  # RAY_ADDRESS, as `ray job submit` sets it
        dataset = load_dataset(spec)
        reports: list[DataParallelReport] = []
        model = fit_lightgbm_data_parallel(
            spec.model, {}, put_dataset(dataset), 2, 1, 0, storage_path=sys.argv[1], report=reports
        )
        metrics = evaluate(model, dataset)
        out = {
            "cluster_nodes": sorted(session.node_ids),
            "local": session.local,
            "worker_nodes": sorted(w["node_id"] for w in reports[0].workers),
            "rows": [w["rows"] for w in reports[0].workers],
            "train_rows": reports[0].train_rows,
            "ic": metrics.ic,
        }
    print("dp-result: " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
