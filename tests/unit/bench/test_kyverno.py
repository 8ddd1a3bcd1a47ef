"""The Kyverno section's pure parts: what it registers on the shared cluster, how it finds
Kyverno's webhooks to remove, its statistics and its report. (Running it is `make bench`.)"""

from __future__ import annotations

import json
import subprocess

from bench import kyverno
from bench.report import _kyverno, _kyverno_targets, _summary


def test_the_config_map_limits_kyvernos_webhooks_to_the_runs_labelled_namespaces():
    cm = kyverno.config_map("sgbench-kyverno-abc", "abc")
    assert cm["metadata"] == {"name": "kyverno", "namespace": "sgbench-kyverno-abc"}
    webhooks = json.loads(cm["data"]["webhooks"])
    assert webhooks == {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": kyverno.KYVERNO_LABEL, "operator": "In", "values": ["abc"]}
            ]
        }
    }


def test_the_cluster_policy_audits_the_image_registry_and_annotates_pods():
    policy = kyverno.cluster_policy("127.0.0.1:25000")
    spec = policy["spec"]
    assert policy["kind"] == "ClusterPolicy" and spec["failurePolicy"] == "Ignore"
    validate, mutate = spec["rules"]
    for rule in (validate, mutate):
        assert rule["match"]["any"][0]["resources"]["kinds"] == ["Pod"]
    assert validate["validate"]["failureAction"] == "Audit"
    assert validate["validate"]["pattern"]["spec"]["containers"] == [{"image": "127.0.0.1:25000/*"}]
    annotations = mutate["mutate"]["patchStrategicMerge"]["metadata"]["annotations"]
    assert annotations == {f"+({kyverno.KYVERNO_ANNOTATION})": "seen"}


def test_kyverno_runs_out_of_cluster_on_the_loopback_with_failure_policy_ignore():
    args = kyverno.kyverno_args("/bin/kyverno", "/kc", "ns-x", 29443, 29444)
    assert args[0] == "/bin/kyverno"
    assert "--serverIP=127.0.0.1:29443" in args and "--webhookServerPort=29443" in args
    assert "--webhookServerHost=127.0.0.1" in args and "--metricsHost=127.0.0.1" in args
    assert "--forceFailurePolicyIgnore=true" in args
    assert "--controllerRuntimeMetricsAddress=0" in args  # no listener on :8080
    assert "--caSecretName=kyverno-svc.ns-x.svc.kyverno-tls-ca" in args
    assert kyverno.kyverno_env("ns-x")["KYVERNO_NAMESPACE"] == "ns-x"


def test_only_kyvernos_webhook_configurations_are_picked_for_removal():
    names = [
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/kyverno-resource-mutating-webhook-cfg",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/sgbench-abc-streamgate",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/kyverno-policy-validating-webhook-cfg",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/my-kyverno-lookalike",
    ]
    assert kyverno.kyverno_webhooks(names) == [names[0], names[2]]


def _latencies(shift: float) -> list[float]:
    return [5.0 + shift + i / 100 for i in range(100)]


def _run(kyverno_shift: float, kyverno_cpu: float) -> dict[str, object]:
    lat = {
        "off": _latencies(0.0),
        "echo": _latencies(1.0),
        "on": _latencies(2.0),
        "one": _latencies(1.5),
        "kyverno": _latencies(kyverno_shift),
    }
    cpu = {"echo": 0.2, "on": 1.0, "one": 0.8, "kyverno": kyverno_cpu}
    sides = kyverno.side_figures(lat, cpu)
    return {"sides": sides, "ratios": {o: kyverno.ratios(sides, o) for o in ("on", "one")}}


def test_added_latency_and_ratios_against_kyverno():
    run = _run(10.0, 8.0)
    sides = run["sides"]
    assert "added_p50_ms" not in sides["off"]
    assert 1.9 <= sides["on"]["added_p50_ms"]["value"] <= 2.1
    assert 9.9 <= sides["kyverno"]["added_p50_ms"]["value"] <= 10.1
    assert sides["kyverno"]["cpu_ms_per_create"] == 8.0 and sides["off"]["creates"] == 100
    on = run["ratios"]["on"]
    assert 0.19 <= on["added_p50"] <= 0.21 and on["cpu"] == 0.125


def test_a_target_is_met_only_if_every_run_meets_it():
    good, bad = _run(10.0, 12.0), _run(5.0, 12.0)  # 2 ms of 5 ms added is 0.4x
    both = kyverno.judge([good, bad], "on")
    assert both["p50_met"] is False and both["added_p50_ratio"] > 0.25
    assert both["cpu_met"] is True and both["cpu_ratio"] <= 0.1
    assert kyverno.judge([good], "on")["p50_met"] is True
    # No Kyverno figure (it added nothing measurable): no ratio, the target is not judged.
    none = kyverno.judge([_run(0.0, 0.0)], "on")
    assert none["added_p50_ratio"] is None and none["p50_met"] is None


def test_the_report_has_every_side_each_run_and_the_targets():
    runs = [_run(10.0, 8.0), _run(5.0, 12.0)]
    for r in runs:
        for side in r["sides"].values():  # type: ignore[attr-defined]
            side.update({"cluster_cpu_ms_per_create": 3.0, "marked": 0})
    runs[0]["sides"]["kyverno"].update({"rss_mib": 195.5, "whole_run_cpu_ms_per_create": 9.1})  # type: ignore[index]
    section = {
        "apiserver_version": "v1.34.4",
        "kyverno_version": "v1.19.1",
        "creates_per_side_and_run": 100,
        "rounds": 5,
        "runs": runs,
        "reports": 240,
        "targets": {o: kyverno.judge(runs, o) for o in ("on", "one")},
        "cleanup_problems": [],
    }
    text = "\n".join(_kyverno(section))
    assert text.count("| Kyverno | ") == 2 and text.count("| no webhook | ") == 2, text
    assert "| 8 | 9.1 | 3 | 195.5 |" in text, text
    assert "Kyverno v1.19.1" in text and "240 admission reports" in text
    rows = "\n".join(_kyverno_targets(section))
    # run 1: CPU 1 of 8 ms is 0.125x; run 2: 2 of 5 ms added is 0.4x, 1.5 of 5 ms 0.3x
    assert rows.count("**not met**") == 3 and rows.count("| met |") == 1, rows
    assert "Kyverno: streamgate's added p50 ≤ 0.25× Kyverno's, two-call mode" in rows  # noqa: RUF001 (the report's own sign)
    assert rows in "\n".join(_summary({"kyverno": section}))
    assert _kyverno({"error": "RuntimeError: boom"})[2].startswith("Not measured")


def test_the_build_script_names_the_pinned_version_and_writes_nothing_for_it():
    out = subprocess.run(
        ["bash", str(kyverno.KYVERNO_SH), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().startswith("v1.")
    bad = subprocess.run(
        ["bash", str(kyverno.KYVERNO_SH), "--nope"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "unknown argument: --nope" in bad.stderr


def test_a_side_that_stopped_judging_voids_the_targets():
    marked = {"off": 0, "echo": 0, "on": 100, "one": 100, "kyverno": 40}
    assert kyverno.unjudged(marked, 100) == ["Kyverno marked 40 of 100 creates"]
    assert kyverno.unjudged({**marked, "kyverno": 100}, 100) == []
    run = _run(10.0, 8.0)
    run["unjudged"] = kyverno.unjudged(marked, 100)
    assert kyverno.judge([run], "one")["p50_met"] is None
    section = {
        "apiserver_version": "v1",
        "kyverno_version": "v1.19.1",
        "creates_per_side_and_run": 100,
        "rounds": 5,
        "runs": [run],
        "targets": {"one": kyverno.judge([run], "one")},
    }
    assert "**Not judged**: Kyverno marked 40 of 100 creates." in "\n".join(_kyverno(section))
    assert "| n/a (worst of 1 runs) | n/a |" in "\n".join(_kyverno_targets(section))
