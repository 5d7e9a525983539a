"""The Grafana dashboards of the chart (dashboards/*.json), written from this one description.

Run `python manifests/monitoring/tools/dashboards.py` after a change; `--check` fails when the JSON is
stale (tests/unit/monitoring runs it). Every expression selects `job` and the `namespace`/`session`
variables, so each dashboard narrows to one namespace or session.
"""

import json
import pathlib
import sys

out = pathlib.Path(__file__).resolve().parent.parent / "dashboards"
TRADING = 'job="kubequant-trading", namespace=~"$namespace", session=~"$session"'
OPERATOR = 'job="kubequant-operator", namespace=~"$namespace"'


def var(name, query, label):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": "All", "value": "$__all"},
    }


def dash(uid, title, panels, session_metric):
    ds = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"text": "Prometheus", "value": "prometheus"},
    }
    templating = [
        ds,
        var("namespace", f"label_values({session_metric}, namespace)", "Namespace"),
        var("session", f'label_values({session_metric}{{namespace=~"$namespace"}}, session)', "Session"),
    ]
    laid = []
    for i, p in enumerate(panels):
        title_, kind, exprs, unit = p
        laid.append(
            {
                "id": i + 1,
                "title": title_,
                "type": kind,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [
                    {"refId": chr(65 + j), "expr": e, "legendFormat": lg} for j, (e, lg) in enumerate(exprs)
                ],
            }
        )
    return {
        "uid": uid,
        "title": title,
        "tags": ["kubequant"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": templating},
        "panels": laid,
    }


platform = dash(
    "kubequant-platform",
    "kubequant / Platform overview",
    [
        (
            "Operator up",
            "stat",
            [('sum by (namespace) (up{job="kubequant-operator"})', "{{namespace}}")],
            "none",
        ),
        (
            "Reconciles by outcome",
            "timeseries",
            [
                (
                    f"sum by (kind, outcome) (rate(kubequant_reconciles_total{{{OPERATOR}}}[$__rate_interval]))",
                    "{{kind}} {{outcome}}",
                )
            ],
            "ops",
        ),
        (
            "Reconcile duration p50 / p99",
            "timeseries",
            [
                (
                    f"histogram_quantile(0.5, sum by (kind, le) (rate(kubequant_reconcile_duration_seconds_bucket{{{OPERATOR}}}[$__rate_interval])))",
                    "p50 {{kind}}",
                ),
                (
                    f"histogram_quantile(0.99, sum by (kind, le) (rate(kubequant_reconcile_duration_seconds_bucket{{{OPERATOR}}}[$__rate_interval])))",
                    "p99 {{kind}}",
                ),
            ],
            "s",
        ),
        (
            "Objects by kind and phase (all namespaces)",
            "timeseries",
            [('sum by (kind, phase) (kubequant_objects{job="kubequant-operator"})', "{{kind}} {{phase}}")],
            "none",
        ),
        (
            "Recent failures",
            "table",
            [
                (
                    'kubequant_object_phase{job="kubequant-operator", namespace=~"$namespace", phase="Failed"} == 1',
                    "{{kind}} {{namespace}}/{{name}}",
                )
            ],
            "none",
        ),
        (
            "Pod restarts (kube-state-metrics)",
            "timeseries",
            [
                (
                    'sum by (namespace, pod) (increase(kube_pod_container_status_restarts_total{namespace=~"$namespace", pod=~".*kubequant.*|.*-trading-.*"}[1h]))',
                    "{{namespace}}/{{pod}}",
                )
            ],
            "none",
        ),
        (
            "CPU of kubequant pods (cAdvisor)",
            "timeseries",
            [
                (
                    'sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{namespace=~"$namespace", container!="", pod=~".*kubequant.*|.*-trading-.*"}[$__rate_interval]))',
                    "{{namespace}}/{{pod}}",
                )
            ],
            "cores",
        ),
        (
            "Memory of kubequant pods (cAdvisor)",
            "timeseries",
            [
                (
                    'sum by (namespace, pod) (container_memory_working_set_bytes{namespace=~"$namespace", container!="", pod=~".*kubequant.*|.*-trading-.*"})',
                    "{{namespace}}/{{pod}}",
                )
            ],
            "bytes",
        ),
        (
            "Firing alerts",
            "table",
            [('ALERTS{alertname=~"Kubequant.*", alertstate="firing"}', "{{alertname}}")],
            "none",
        ),
    ],
    "kubequant_trading_state",
)

research = dash(
    "kubequant-research",
    "kubequant / Research",
    [
        (
            "Backtest IC and rank IC",
            "timeseries",
            [
                (
                    'kubequant_backtest_ic{job="kubequant-operator", namespace=~"$namespace"}',
                    "IC {{namespace}}/{{name}}",
                ),
                (
                    'kubequant_backtest_rank_ic{job="kubequant-operator", namespace=~"$namespace"}',
                    "rank IC {{namespace}}/{{name}}",
                ),
            ],
            "none",
        ),
        (
            "Backtest ICIR",
            "timeseries",
            [
                (
                    'kubequant_backtest_icir{job="kubequant-operator", namespace=~"$namespace"}',
                    "{{namespace}}/{{name}}",
                )
            ],
            "none",
        ),
        (
            "Backtest Sharpe",
            "timeseries",
            [
                (
                    'kubequant_backtest_sharpe{job="kubequant-operator", namespace=~"$namespace"}',
                    "{{namespace}}/{{name}}",
                )
            ],
            "none",
        ),
        (
            "Backtest annualised return and max drawdown",
            "timeseries",
            [
                (
                    'kubequant_backtest_annualized_return_ratio{job="kubequant-operator", namespace=~"$namespace"}',
                    "return {{namespace}}/{{name}}",
                ),
                (
                    'kubequant_backtest_max_drawdown_ratio{job="kubequant-operator", namespace=~"$namespace"}',
                    "max DD {{namespace}}/{{name}}",
                ),
            ],
            "percentunit",
        ),
        (
            "TrainingJob test IC, rank IC, ICIR",
            "timeseries",
            [
                (
                    'kubequant_trainingjob_ic{job="kubequant-operator", namespace=~"$namespace"}',
                    "IC {{namespace}}/{{name}}",
                ),
                (
                    'kubequant_trainingjob_rank_ic{job="kubequant-operator", namespace=~"$namespace"}',
                    "rank IC {{namespace}}/{{name}}",
                ),
                (
                    'kubequant_trainingjob_icir{job="kubequant-operator", namespace=~"$namespace"}',
                    "ICIR {{namespace}}/{{name}}",
                ),
            ],
            "none",
        ),
        (
            "IC decay: valid IC vs test IC",
            "timeseries",
            [
                (
                    'kubequant_trainingjob_valid_ic{job="kubequant-operator", namespace=~"$namespace"} - on (namespace, name) kubequant_trainingjob_ic{job="kubequant-operator", namespace=~"$namespace"}',
                    "{{namespace}}/{{name}}",
                )
            ],
            "none",
        ),
        (
            "Live rolling rank IC",
            "timeseries",
            [(f"kubequant_live_rolling_rank_ic{{{TRADING}}}", "{{namespace}}/{{session}}")],
            "none",
        ),
        (
            "Runs by phase",
            "timeseries",
            [
                (
                    'sum by (kind, phase) (kubequant_object_phase{job="kubequant-operator", namespace=~"$namespace", kind=~"Backtest|TrainingJob"})',
                    "{{kind}} {{phase}}",
                )
            ],
            "none",
        ),
    ],
    "kubequant_trading_state",
)

trading = dash(
    "kubequant-trading",
    "kubequant / Trading",
    [
        (
            "Equity",
            "timeseries",
            [(f"kubequant_equity{{{TRADING}}}", "{{namespace}}/{{session}}")],
            "currencyUSD",
        ),
        (
            "Daily PnL",
            "timeseries",
            [(f"kubequant_daily_pnl{{{TRADING}}}", "{{namespace}}/{{session}}")],
            "currencyUSD",
        ),
        (
            "Drawdown vs breaker",
            "timeseries",
            [
                (f"kubequant_drawdown_ratio{{{TRADING}}}", "drawdown {{session}}"),
                (
                    f'kubequant_breaker_limit_ratio{{{TRADING}, breaker="max_drawdown"}}',
                    "breaker {{session}}",
                ),
                (f"kubequant_daily_loss_ratio{{{TRADING}}}", "daily loss {{session}}"),
                (
                    f'kubequant_breaker_limit_ratio{{{TRADING}, breaker="max_daily_loss"}}',
                    "daily breaker {{session}}",
                ),
            ],
            "percentunit",
        ),
        (
            "Trading state",
            "state-timeline",
            [
                (
                    f"max by (namespace, session, state) (kubequant_trading_state{{{TRADING}}}) == 1",
                    "{{session}} {{state}}",
                )
            ],
            "none",
        ),
        (
            "Risk conditions and kill switch",
            "timeseries",
            [
                (f"kubequant_risk_condition{{{TRADING}}}", "{{session}} {{condition}}"),
                (f"kubequant_kill_switch_engaged{{{TRADING}}}", "{{session}} kill switch"),
                (
                    f"sum by (namespace, session, condition) (increase(kubequant_breaker_trips_total{{{TRADING}}}[1d]))",
                    "{{session}} trips {{condition}}",
                ),
            ],
            "none",
        ),
        (
            "Orders by state",
            "timeseries",
            [
                (
                    f"sum by (namespace, session, status) (rate(kubequant_order_transitions_total{{{TRADING}}}[$__rate_interval]))",
                    "{{session}} {{status}}",
                )
            ],
            "ops",
        ),
        (
            "Risk rejections by reason",
            "timeseries",
            [
                (
                    f"sum by (namespace, session, reason) (rate(kubequant_risk_rejections_total{{{TRADING}}}[$__rate_interval]))",
                    "{{session}} {{reason}}",
                )
            ],
            "ops",
        ),
        (
            "Order success rate",
            "timeseries",
            [
                (
                    f'sum by (namespace, session) (rate(kubequant_order_transitions_total{{{TRADING}, status="filled"}}[1h])) / (sum by (namespace, session) (rate(kubequant_order_transitions_total{{{TRADING}, status=~"submitted"}}[1h])) + sum by (namespace, session) (rate(kubequant_risk_rejections_total{{{TRADING}}}[1h])))',
                    "{{session}}",
                )
            ],
            "percentunit",
        ),
        (
            "Exposure: gross and largest position (of equity)",
            "timeseries",
            [
                (f"kubequant_gross_exposure_ratio{{{TRADING}}}", "gross {{session}}"),
                (f"kubequant_largest_concentration_ratio{{{TRADING}}}", "largest {{session}}"),
                (f"kubequant_book_unpriced_positions{{{TRADING}}}", "unpriced positions {{session}}"),
            ],
            "percentunit",
        ),
        (
            "Fill shortfall vs arrival price (bps, + is cost)",
            "timeseries",
            [
                (
                    f"histogram_quantile({q}, sum by (namespace, session, le) (rate(kubequant_fill_shortfall_bps_bucket{{{TRADING}}}[$__rate_interval])))",
                    f"p{int(q * 100)} {{{{session}}}}",
                )
                for q in (0.5, 0.9)
            ],
            "none",
        ),
        (
            "Fills per order (mean)",
            "timeseries",
            [
                (
                    f"sum by (namespace, session) (rate(kubequant_fills_per_order_sum{{{TRADING}}}[$__rate_interval])) / sum by (namespace, session) (rate(kubequant_fills_per_order_count{{{TRADING}}}[$__rate_interval]))",
                    "{{session}}",
                )
            ],
            "none",
        ),
        (
            "Signal to submit latency",
            "timeseries",
            [
                (
                    f"histogram_quantile({q}, sum by (namespace, session, le) (rate(kubequant_signal_to_submit_seconds_bucket{{{TRADING}}}[$__rate_interval])))",
                    f"p{int(q * 100)} {{{{session}}}}",
                )
                for q in (0.5, 0.9, 0.99)
            ],
            "s",
        ),
        (
            "Signal API answers by status",
            "timeseries",
            [
                (
                    f"sum by (namespace, session, route, code) (rate(kubequant_signal_api_answers_total{{{TRADING}}}[$__rate_interval]))",
                    "{{session}} {{route}} {{code}}",
                )
            ],
            "reqps",
        ),
        (
            "Broker connection",
            "timeseries",
            [
                (f"kubequant_broker_connected{{{TRADING}}}", "{{session}} connected"),
                (
                    f"increase(kubequant_broker_reconnects_total{{{TRADING}}}[1h])",
                    "{{session}} reconnects / h",
                ),
            ],
            "none",
        ),
        (
            "Journal fsync latency p99",
            "timeseries",
            [
                (
                    f"histogram_quantile(0.99, sum by (namespace, session, le) (rate(kubequant_journal_write_seconds_bucket{{{TRADING}}}[$__rate_interval])))",
                    "{{session}}",
                )
            ],
            "s",
        ),
        (
            "Journal volume used",
            "timeseries",
            [
                (
                    'kubelet_volume_stats_used_bytes{namespace=~"$namespace", persistentvolumeclaim=~"journal-.*"} / kubelet_volume_stats_capacity_bytes{namespace=~"$namespace", persistentvolumeclaim=~"journal-.*"}',
                    "{{namespace}}/{{persistentvolumeclaim}}",
                )
            ],
            "percentunit",
        ),
        (
            "Reconciliation anomalies",
            "timeseries",
            [(f"increase(kubequant_reconciliation_anomalies_total{{{TRADING}}}[1h])", "{{session}}")],
            "none",
        ),
    ],
    "kubequant_trading_state",
)

quality = dash(
    "kubequant-data-quality",
    "kubequant / Data quality",
    [
        (
            "Age of the last bar",
            "timeseries",
            [(f"time() - kubequant_last_bar_timestamp_seconds{{{TRADING}}}", "{{namespace}}/{{session}}")],
            "s",
        ),
        (
            "Trading window open",
            "state-timeline",
            [(f"kubequant_trading_window_open{{{TRADING}}}", "{{session}}")],
            "none",
        ),
        (
            "Missing-value ratio by field",
            "timeseries",
            [(f"kubequant_data_missing_ratio{{{TRADING}}}", "{{session}} {{field}}")],
            "percentunit",
        ),
        (
            "Instruments without data",
            "timeseries",
            [(f"kubequant_data_instruments_missing{{{TRADING}}}", "{{session}}")],
            "none",
        ),
        (
            "Finished runs: missing-value ratio by field",
            "timeseries",
            [
                (
                    f"kubequant_run_data_missing_ratio{{{OPERATOR}}}",
                    "{{kind}} {{namespace}}/{{name}} {{field}}",
                )
            ],
            "percentunit",
        ),
        (
            "Finished runs: universe members without data",
            "timeseries",
            [(f"kubequant_run_instruments_missing{{{OPERATOR}}}", "{{kind}} {{namespace}}/{{name}}")],
            "none",
        ),
        (
            "Risk policy reloads",
            "timeseries",
            [
                (
                    f"sum by (namespace, session, result) (increase(kubequant_risk_policy_reloads_total{{{TRADING}}}[1h]))",
                    "{{session}} {{result}}",
                )
            ],
            "none",
        ),
    ],
    "kubequant_trading_state",
)

stale = []
for name, d in (
    ("platform", platform),
    ("research", research),
    ("trading", trading),
    ("data-quality", quality),
):
    path, text = out / f"{name}.json", json.dumps(d, indent=2) + "\n"
    if "--check" in sys.argv[1:]:
        if not path.exists() or path.read_text() != text:
            stale.append(str(path))
    else:
        path.write_text(text)
if stale:
    sys.exit(f"stale dashboards (run python {__file__}): {', '.join(stale)}")
