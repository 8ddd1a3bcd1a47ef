"""What every section of the benchmark shares: settings, the work directory, certificates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.certs.tls import CertFiles, issue_self_signed
from bench.common import HOST, PYTHON, ROOT, Proc
from bench.registry import Olareg


@dataclass
class Settings:
    quick: bool = False  # one short iteration (make test)
    runs: int = 5  # repeats of each headline figure
    seconds: float = 4.0  # one wrk run
    sweep_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    sweep_runs: int = 2
    connections: int = 8
    cold_admissions: int = 50  # N concurrent admissions
    cold_images: int = 30  # M never-seen images
    cold_runs: int = 3
    cold_delay_ms: float = 50.0
    api_pods: int = 1000  # per namespace, with and without the webhook, 50 at a time
    api_concurrency: int = 50
    api_sequential_pods: int = 1200  # per namespace, one at a time: the added latency itself
    api_rounds: int = 8  # each of the four namespaces goes first twice
    scale_verdicts: int = 100_000
    scale_nodes: int = 5000
    scale_pools: int = 100
    worker_trials: int = 14
    replicas: int = 3  # streamgate processes behind one round-robin address
    replicas_runs: int = 2
    kyverno_pods: int = 600  # per side and run, one at a time
    kyverno_runs: int = 2
    report_workloads: int = 2000  # Deployments in the policy-report namespace
    app_root: Path | None = None  # another checkout's `app` for the servers (before/after)

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            quick=True,
            runs=1,
            seconds=1.0,
            sweep_fractions=(0.5,),
            sweep_runs=1,
            cold_admissions=4,
            cold_images=3,
            cold_runs=1,
            api_pods=20,
            api_concurrency=10,
            api_sequential_pods=4,
            api_rounds=1,
            scale_verdicts=1000,
            scale_nodes=50,
            scale_pools=5,
            worker_trials=2,
            replicas_runs=1,
            kyverno_pods=5,
            kyverno_runs=1,
            report_workloads=20,
        )


@dataclass
class Ctx:
    settings: Settings
    work: Path
    olareg: Olareg | None
    kubeconfig: str | None
    results: dict[str, Any] = field(default_factory=dict)
    _certs: CertFiles | None = None

    @property
    def certs(self) -> CertFiles:
        if self._certs is None:
            self._certs = issue_self_signed(self.work / "certs", [HOST, "localhost"])
        return self._certs

    def streamgate(
        self,
        name: str,
        port: int,
        policy: Path,
        *,
        metrics_port: int = 0,
        kubeconfig: str | None = None,
        extra: tuple[str, ...] = (),
        python: str = PYTHON,
    ) -> Proc:
        """`streamgate serve` as the chart runs it: TLS, decision logs at info, metrics."""
        args = [python, "-m", "app", "serve", "--host", HOST, "--port", str(port)]
        args += ["--cert", str(self.certs.cert), "--key", str(self.certs.key)]
        args += ["--policy", str(policy), "--log-level", "info", "--log-format", "text"]
        if metrics_port:
            args += ["--metrics-port", str(metrics_port)]
        if kubeconfig:
            args += ["--kubeconfig", kubeconfig]
        return Proc(
            name,
            [*args, *extra],
            self.work / "logs" / f"{name}.log",
            env=self.app_env(),
            cwd=self.settings.app_root or ROOT,
        )

    def app_env(self) -> dict[str, str]:
        """PYTHONPATH for a server: `--app-root`'s `app` first, then this checkout (bench)."""
        root = self.settings.app_root
        return {"PYTHONPATH": f"{root}:{ROOT}"} if root else {}

    def baseline(
        self, name: str, port: int, *, http: str = "httptools", loop: str = "uvloop"
    ) -> Proc:
        """The bare echo app (bench/baseline.py), by default on the fast stack."""
        args = [PYTHON, "-m", "bench.baseline", "--host", HOST, "--port", str(port)]
        args += ["--cert", str(self.certs.cert), "--key", str(self.certs.key)]
        args += ["--http", http, "--loop", loop]
        return Proc(name, args, self.work / "logs" / f"{name}.log")


def policy_yaml(registries: list[str], *, max_entries: int | None = None) -> str:
    """The benchmark's policy: warn mode, the given plain-HTTP registries treated as ACR."""
    if not registries:
        return "mode: warn\n"
    lines = ["mode: warn", f"acrRegistries: {registries!r}".replace("'", '"'), "registry:"]
    if max_entries:
        lines += ["  cache:", f"    maxEntries: {max_entries}"]
    lines.append("  registries:")
    for reg in registries:
        lines += [f'    "{reg}":', "      insecure: true"]
    return "\n".join(lines) + "\n"
