"""`streamgate serve --http/--loop` reach the server's settings and pick its event loop."""

from __future__ import annotations

import asyncio

import pytest

from app.cli import main as cli


@pytest.mark.parametrize(
    ("argv", "http", "loop"),
    [
        ([], "httptools", "uvloop"),
        (["--http", "h11", "--loop", "asyncio"], "h11", "asyncio"),
        (["--http", "h11"], "h11", "uvloop"),
    ],
)
def test_serve_passes_the_stack_and_runs_on_its_loop(monkeypatch, tmp_path, argv, http, loop):
    seen = {}

    async def fake_run_webhook(settings):
        seen["settings"] = settings
        seen["loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]

    monkeypatch.setattr(cli, "run_webhook", fake_run_webhook)
    assert cli.main(["serve", "--self-signed", str(tmp_path), *argv]) == 0
    assert (seen["settings"].http, seen["settings"].loop) == (http, loop)
    assert seen["loop"] == loop


def test_an_unknown_stack_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--http", "h2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --http: invalid choice: 'h2'" in err
    assert "httptools" in err and "h11" in err  # the choices (quoting varies by Python)


def test_report_and_serve_reports_options_reach_the_reporter(monkeypatch, tmp_path):
    seen = {}

    async def fake_run_reporter(settings, options):
        seen["settings"], seen["options"] = settings, options

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {}}]\n"
    )
    monkeypatch.setattr(cli, "run_reporter", fake_run_reporter)
    argv = ["report", "--kubeconfig", str(kubeconfig), "--reports-api", "openreports"]
    argv += ["--lease-namespace", "sg", "--identity", "me", "--report-namespace", "a,b"]
    argv += ["--min-write-interval", "3", "--writes-per-second", "2"]
    assert cli.main(argv) == 0
    options = seen["options"]
    assert options.api == "openreports.io/v1alpha1"
    assert (options.lease_namespace, options.identity, options.namespaces) == (
        "sg",
        "me",
        ("a", "b"),
    )
    assert (options.min_write_interval, options.writes_per_second) == (3.0, 2.0)
    assert seen["settings"].kube == str(kubeconfig)

    served = {}

    async def fake_run_webhook(settings):
        served["settings"] = settings

    monkeypatch.setattr(cli, "run_webhook", fake_run_webhook)
    assert (
        cli.main(
            [
                "serve",
                "--self-signed",
                str(tmp_path),
                "--kubeconfig",
                str(kubeconfig),
                "--reports",
                "--lease-namespace",
                "sg",
            ]
        )
        == 0
    )
    reports = served["settings"].reports
    assert (reports.api, reports.lease_namespace) == ("wgpolicyk8s.io/v1alpha2", "sg")
    assert cli.main(["serve", "--self-signed", str(tmp_path)]) == 0
    assert served["settings"].reports is None


def test_report_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["report", "--kubeconfig", str(tmp_path / "missing")]) == 2
    assert "cannot load a kubeconfig" in capsys.readouterr().err
    assert cli.main(["report", "--kubeconfig", "x", "--lease-seconds", "2"]) == 2
    assert "--lease-seconds must be at least 3" in capsys.readouterr().err
    assert cli.main(["serve", "--self-signed", str(tmp_path), "--reports"]) == 2
    assert "--reports needs --kubeconfig" in capsys.readouterr().err
