"""The Python class allow-list: a manifest's classes come only from allowed module prefixes, checked by
`kubequant validate`/`run`, by the workload pod on the manifest it reads, and while qlib imports."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_validate_manifests import BAD_DIR, assert_no_traceback, error_lines, kubequant

from kubequant.api.modules import (
    DEFAULT_ALLOWED_MODULES,
    BadModulePrefix,
    module_allow_list,
    module_allowed,
    nested_class_modules,
)
from kubequant.manifests import InvalidManifest, parse_resource

pytestmark = pytest.mark.unit

SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2021-06-30"},
    "valid": {"start": "2021-07-01", "end": "2021-12-31"},
    "test": {"start": "2022-01-01", "end": "2022-12-29"},
}
BASE: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "modules"},
    "spec": {
        "period": {"start": "2022-01-04", "end": "2022-06-30"},
        "signal": {"model": {"segments": SEGMENTS}},
    },
}


def with_model(model: dict[str, Any], handler: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"]["signal"]["model"]["model"] = model
    if handler is not None:
        doc["spec"]["signal"]["model"]["handler"] = handler
    return doc


def refusal(doc: dict[str, Any], allowed: tuple[str, ...] = DEFAULT_ALLOWED_MODULES) -> tuple[str, str]:
    with pytest.raises(InvalidManifest) as raised:
        parse_resource(doc, allowed)
    (error,) = raised.value.errors
    return error.where or "", error.one_line()


# --------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("qlib", True),
        ("qlib.contrib.model.gbdt", True),
        ("kubequant.workloads.backtest.slicing", True),
        ("lightgbm.sklearn", True),
        ("qlibevil", False),
        ("qlib_evil.x", False),
        ("kubequantx.y", False),
        ("subprocess", False),
        ("os", False),
        (".qlib", False),
        ("..qlib", False),
        ("qlib..contrib", False),
        ("qlib.", False),
        ("qlib/contrib", False),
        ("/tmp/qlib.py", False),
        ("qlib.contrib.py/../x", False),
        ("", False),
    ],
)
def test_prefixes_match_whole_dotted_names(module: str, allowed: bool) -> None:
    assert module_allowed(module, DEFAULT_ALLOWED_MODULES) is allowed


def test_the_built_in_prefixes_and_extra_ones() -> None:
    assert DEFAULT_ALLOWED_MODULES == ("qlib", "kubequant", "lightgbm")
    assert module_allow_list(["acme.research", "qlib"]) == ("qlib", "kubequant", "lightgbm", "acme.research")
    assert module_allowed("acme.research.models", module_allow_list(["acme.research"]))
    assert not module_allowed("acme.researchx", module_allow_list(["acme.research"]))
    for bad in ("acme.", ".acme", "acme/x", "../acme", "/tmp/acme.py", "a b", ""):
        with pytest.raises(BadModulePrefix):
            module_allow_list([bad])


def test_nested_class_configs_are_found_with_their_paths() -> None:
    kwargs = {
        "learn_processors": [{"class": "DropnaLabel"}, {"class": "Popen", "module_path": "subprocess"}],
        "inner": {"deep": {"class": "os.system"}},
        "func_cfg": {"func": "builtins.eval"},
        "plain": "subprocess.Popen",  # a plain string: the import guard's job
    }
    assert sorted(nested_class_modules(kwargs)) == [
        ("kwargs.func_cfg.func", "builtins"),
        ("kwargs.inner.deep.class", "os"),
        ("kwargs.learn_processors[1].module_path", "subprocess"),
    ]


# --------------------------------------------------------------------------- validation


def test_a_class_with_no_module_uses_qlib_s_defaults() -> None:
    parse_resource(with_model({"class": "LGBModel"}, {"class": "Alpha158"}))


def test_module_outside_the_allow_list_names_the_field_and_the_fix() -> None:
    where, line = refusal(with_model({"class": "Popen", "module": "subprocess", "kwargs": {"args": ["id"]}}))
    assert where == "spec.signal.model.model.module"
    assert "module subprocess is not allowed" in line and "--allow-module" in line
    assert "workloadPolicy.allowedModules" in line


def test_every_class_reference_is_checked() -> None:
    handler = with_model({"class": "LGBModel"}, {"class": "Loader", "module": "pickle"})
    assert refusal(handler)[0] == "spec.signal.model.handler.module"
    doc = copy.deepcopy(BASE)
    doc["spec"]["signal"] = {"file": {"path": "/s.csv"}}
    doc["spec"]["strategy"] = {"custom": {"class": "X", "module": "os"}}
    assert refusal(doc)[0] == "spec.strategy.custom.module"
    doc["spec"]["strategy"] = {}
    doc["spec"]["executor"] = {
        "levels": [{"frequency": "1min", "strategy": {"custom": {"class": "X", "module": "os"}}}]
    }
    assert refusal(doc)[0] == "spec.executor.levels[0].strategy.custom.module"
    training = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "t"},
        "spec": {"dataset": {"segments": SEGMENTS, "handler": {"class": "X", "module": "shutil"}}},
    }
    assert refusal(training)[0] == "spec.dataset.handler.module"


def test_class_configs_inside_kwargs_are_checked() -> None:
    handler = {
        "class": "Alpha158",
        "kwargs": {
            "learn_processors": [{"class": "Popen", "module_path": "subprocess", "kwargs": {"args": ["id"]}}]
        },
    }
    where, _ = refusal(with_model({"class": "LGBModel"}, handler))
    assert where == "spec.signal.model.handler.kwargs.learn_processors[0].module_path"
    dotted = {"class": "Alpha158", "kwargs": {"infer_processors": [{"class": "subprocess.Popen"}]}}
    assert refusal(with_model({"class": "LGBModel"}, dotted))[0] == (
        "spec.signal.model.handler.kwargs.infer_processors[0].class"
    )
    a_file = {"class": "Alpha158", "kwargs": {"x": {"class": "Evil", "module_path": "/tmp/evil.py"}}}
    assert "module /tmp/evil.py is not allowed" in refusal(with_model({"class": "LGBModel"}, a_file))[1]


def test_an_admin_s_prefix_allows_its_modules() -> None:
    doc = with_model({"class": "Ridge", "module": "acme.research.models"})
    assert refusal(doc)[0] == "spec.signal.model.model.module"
    parse_resource(doc, module_allow_list(["acme.research"]))
    assert refusal(doc, module_allow_list(["acme.researchers"]))[0] == "spec.signal.model.model.module"


# --------------------------------------------------------------------------- the command line


def test_validate_refuses_and_allow_module_allows() -> None:
    path = BAD_DIR / "backtest-module-not-allowed.yaml"
    run = kubequant("validate", "-f", str(path))
    assert run.returncode == 2 and "module subprocess is not allowed" in run.stderr
    run = kubequant("validate", "--allow-module", "subprocess", "-f", str(path))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(": valid")


def test_allow_module_must_be_a_module_prefix() -> None:
    run = kubequant(
        "validate", "--allow-module", "../evil", "-f", str(BAD_DIR / "backtest-module-not-allowed.yaml")
    )
    assert run.returncode == 2
    assert_no_traceback(run)
    assert error_lines(run) and "--allow-module: '../evil' is not a module prefix" in run.stderr


def test_run_refuses_before_running_anything(tmp_path: Path) -> None:
    run = kubequant(
        "run", "-f", str(BAD_DIR / "backtest-module-not-allowed.yaml"), "--report-dir", str(tmp_path / "r")
    )
    assert run.returncode == 2
    assert_no_traceback(run)
    assert "spec.signal.model.model.module: module subprocess is not allowed" in run.stderr
    assert not (tmp_path / "r").exists()


def test_the_workload_checks_the_manifest_it_reads(tmp_path: Path) -> None:
    """A ConfigMap edited by hand (after the operator checked the object) is refused in the pod."""
    manifest = yaml.safe_load((BAD_DIR / "backtest-module-not-allowed.yaml").read_text())
    config = tmp_path / "backtest.yaml"
    config.write_text(yaml.safe_dump(manifest))
    log = tmp_path / "termination-log"
    run = kubequant(
        "workload",
        "backtest",
        "--config",
        str(config),
        "--report-dir",
        str(tmp_path / "r"),
        "--termination-log",
        str(log),
    )
    assert run.returncode == 2
    assert_no_traceback(run)
    error = json.loads(log.read_text())["error"]
    assert "spec.signal.model.model.module: module subprocess is not allowed" in error


# --------------------------------------------------------------------------- the import guard


def test_the_import_guard_refuses_what_qlib_would_resolve_from_names() -> None:
    from qlib.utils import init_instance_by_config

    from kubequant.workloads.backtest.import_guard import ForbiddenClass, guarded_imports

    refused = [
        {"class": "Popen", "module_path": "subprocess", "kwargs": {"args": ["true"]}},
        "subprocess.Popen",  # a plain string deep in kwargs, which validation does not read as a class
        {"class": "subprocess.Popen", "kwargs": {"args": ["true"]}},
        {"func": "init", "module_path": "qlib"},  # a function of an allowed module: not a class
        {"class": "X", "module_path": "/tmp/evil.py"},  # qlib would exec a file
    ]
    with guarded_imports(DEFAULT_ALLOWED_MODULES):
        for config in refused:
            with pytest.raises(ForbiddenClass):
                init_instance_by_config(config)
        twap = init_instance_by_config(
            {"class": "TWAPStrategy", "module_path": "qlib.contrib.strategy.rule_strategy"}
        )
        assert type(twap).__name__ == "TWAPStrategy"
    with guarded_imports(module_allow_list(["subprocess"])):
        with pytest.raises(ForbiddenClass, match="not a class"):
            init_instance_by_config(
                {"func": "getoutput", "module_path": "subprocess", "kwargs": {"cmd": "true"}}
            )


def test_the_import_guard_covers_modules_that_imported_qlib_s_functions_by_name() -> None:
    import qlib.contrib.data.handler as handler_module

    from kubequant.workloads.backtest.import_guard import ForbiddenClass, guarded_imports

    with guarded_imports(DEFAULT_ALLOWED_MODULES), pytest.raises(ForbiddenClass):
        handler_module.get_callable_kwargs({"class": "Popen", "module_path": "subprocess"})
