"""The `streamgate` command: serve the webhook, check manifests offline, audit a cluster
(scan), explain one image's verdict, list node pools, issue local certs."""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from pathlib import Path
from typing import Any

from app.certs.keeper import ManagedCertSettings
from app.certs.tls import issue_self_signed
from app.cli.check import ManifestError, Result, check, read_manifests, to_json, to_table
from app.cli.explain import ExplainError, Explanation, explain
from app.cli.explain import to_json as explain_json
from app.cli.explain import to_text as explain_text
from app.cli.poolreport import inventory_from_file, pool_table
from app.cli.scan import (
    RENDERERS,
    KubeReader,
    Progress,
    Report,
    ScanError,
    ScanVerdicts,
    StaticModes,
    kube_api,
    read_cluster,
    scan,
    scan_registry_config,
)
from app.cli.version import version_line
from app.cluster.nodes import NodeWatcher
from app.core.nodes.placement import PlacementIndex
from app.core.policy import Mode, Policy, PolicyError
from app.core.verdicts import OfflineVerdicts, VerdictSource
from app.registry.source import RegistryVerdictSource
from app.telemetry.events import DEFAULT_INTERVAL
from app.telemetry.logs import FORMATS
from app.telemetry.logs import configure as configure_logging
from app.webhook import loops
from app.webhook.connections import HTTP_PROTOCOLS, ProtocolUnavailable, guarded_protocol
from app.webhook.reload import load_policy
from app.webhook.serve import ServeSettings, build_admission, run_webhook

EXIT_OK, EXIT_DENIED, EXIT_USAGE = 0, 1, 2


def _verdict_source(policy: Policy, *, offline: bool = False) -> VerdictSource:
    """The registry client for the policy's registry settings (or none, offline). Build it
    inside the running event loop: its HTTP clients belong to that loop."""
    if offline:
        return OfflineVerdicts()
    return RegistryVerdictSource(
        policy.registry, acr_hosts=policy.is_acr, aad_hosts=policy.may_get_aad
    )


async def _close(source: VerdictSource) -> None:
    if isinstance(source, RegistryVerdictSource):
        await source.aclose()


def _serve(args: argparse.Namespace) -> int:
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        cert=args.cert,
        key=args.key,
        self_signed_dir=args.self_signed,
        policy_path=args.policy,
        log_level=args.log_level,
        log_format=args.log_format,
        kube=args.kubeconfig,
        managed_certs=_managed_certs(args),
        metrics_host=args.metrics_host or args.host,
        metrics_port=args.metrics_port,
        policy_reload_interval=args.policy_reload_interval,
        events=args.events,
        event_interval=args.event_interval,
        http=args.http,
        loop=args.loop,
    )
    if settings.events and not settings.kube:
        print("streamgate serve: --events needs --kubeconfig", file=sys.stderr)
        return EXIT_USAGE
    try:  # a missing C extension is said before anything starts, with the way out
        guarded_protocol(settings.http)
        loops.loop_factory(settings.loop)
    except (ProtocolUnavailable, loops.LoopUnavailable) as err:
        print(f"streamgate serve: {err}", file=sys.stderr)
        return EXIT_USAGE
    load_policy(settings.policy_path)  # refuse a bad policy before anything starts
    loops.run(run_webhook(settings), settings.loop)
    return EXIT_OK


def _managed_certs(args: argparse.Namespace) -> ManagedCertSettings | None:
    if not args.manage_certs:
        return None
    if not args.cert_namespace:
        raise SystemExit("streamgate serve: --manage-certs needs --cert-namespace")
    return ManagedCertSettings(
        namespace=args.cert_namespace,
        secret_name=args.cert_secret,
        service_name=args.cert_service,
        webhook_names=tuple(args.webhook_config or [args.cert_service]),
        out_dir=args.cert_dir,
        check_interval=args.cert_check_interval,
    )


def _check(args: argparse.Namespace) -> int:
    settings = ServeSettings(policy_path=args.policy)
    policy = load_policy(args.policy)
    placement = None
    if args.nodes:
        inventory = inventory_from_file(args.nodes, pool_labels=policy.pools.pool_labels)
        placement = PlacementIndex(inventory, policy.pools)
    if args.mode:
        policy = policy.model_copy(update={"mode": Mode(args.mode)})
    docs = read_manifests(args.file)

    async def run() -> list[Result]:
        source = _verdict_source(policy, offline=args.offline)
        admission = build_admission(settings, verdicts=source, placement=placement, policy=policy)
        try:
            return await check(docs, admission, namespace=args.namespace)
        finally:
            await _close(source)

    results = asyncio.run(run())
    print(to_json(results) if args.output == "json" else to_table(results))
    return EXIT_DENIED if any(r.denied for r in results) else EXIT_OK


def _namespaces(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or ():
        out.extend(n.strip() for n in value.split(",") if n.strip())
    return list(dict.fromkeys(out))


def _scan(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    progress = Progress(enabled=not args.quiet)
    reader = KubeReader(kube_api(args.kubeconfig))
    snapshot = read_cluster(
        reader, policy, namespaces=_namespaces(args.namespace), progress=progress
    )

    async def run() -> Report:
        source = RegistryVerdictSource(
            scan_registry_config(policy.registry),
            acr_hosts=policy.is_acr,
            aad_hosts=policy.may_get_aad,
        )
        verdicts = ScanVerdicts(
            source,
            concurrency=args.concurrency,
            on_wait=lambda registry, seconds: progress.note(
                f"{registry} is rate-limiting or failing: waiting {seconds:.0f}s"
            ),
        )
        admission = build_admission(
            ServeSettings(policy_path=args.policy),
            verdicts=verdicts,
            placement=snapshot.placement,
            namespaces=StaticModes(snapshot.modes),
            policy=policy,
        )
        admission.lookup_deadline = 3600.0  # every image is looked up before judging
        try:
            return await scan(snapshot, admission, verdicts, progress=progress)
        finally:
            await source.aclose()

    report = asyncio.run(run())
    print(RENDERERS[args.output](report))
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    placement = None
    mode = None
    if args.kubeconfig:
        reader = KubeReader(kube_api(args.kubeconfig))
        snapshot = read_cluster(reader, policy, namespaces=[args.namespace])
        for note in snapshot.notes:
            print(f"streamgate: {note}", file=sys.stderr)
        placement = snapshot.placement
        mode = snapshot.modes.get(args.namespace)
    mode = mode or policy.namespace_modes.get(args.namespace) or policy.mode

    async def run() -> Explanation:
        return await explain(args.image, policy, placement=placement, mode=mode)

    try:
        out = asyncio.run(run())
    except ExplainError as err:
        print(f"streamgate explain: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(explain_json(out) if args.output == "json" else explain_text(out))
    return EXIT_OK


def _pools(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.nodes:
        inventory = inventory_from_file(args.nodes, pool_labels=policy.pools.pool_labels)
        print(pool_table(PlacementIndex(inventory, policy.pools)))
        return EXIT_OK
    watcher = NodeWatcher.from_config(args.kubeconfig, rules=policy.pools)
    watcher.start()
    try:
        if not watcher.wait_ready(args.timeout):
            print(
                f"streamgate: no node list within {args.timeout}s: {watcher.last_error}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        print(pool_table(watcher.index))
    finally:
        watcher.stop()
    return EXIT_OK


def _certs(args: argparse.Namespace) -> int:
    files = issue_self_signed(args.dir, args.host)
    print(f"ca: {files.ca}\ncert: {files.cert}\nkey: {files.key}")
    print("caBundle: " + base64.b64encode(files.ca.read_bytes()).decode())
    return EXIT_OK


def _add_scan(sub: Any) -> None:
    a = sub.add_parser(
        "scan",
        help="audit the workloads in a cluster: which can stream, which can't, and why",
    )
    a.add_argument(
        "--kubeconfig",
        metavar="PATH|in-cluster",
        help="default: $KUBECONFIG or ~/.kube/config",
    )
    a.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NS",
        help="only these namespaces (repeatable, or comma-separated; default: all)",
    )
    a.add_argument("--policy", type=Path, help="policy YAML (default: built-in defaults)")
    a.add_argument("-o", "--output", choices=list(RENDERERS), default="table")
    a.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="registry look-ups at once, per registry (default %(default)s)",
    )
    a.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    a.set_defaults(func=_scan)


def _add_explain(sub: Any) -> None:
    e = sub.add_parser("explain", help="show every step of one image's streaming verdict")
    e.add_argument("image", help="an image reference, as written in a pod spec")
    e.add_argument("--policy", type=Path, help="policy YAML (default: built-in defaults)")
    e.add_argument(
        "--kubeconfig",
        metavar="PATH|in-cluster",
        help="also judge the cluster's node pools and the namespace's mode",
    )
    e.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="namespace whose mode applies (default: default)",
    )
    e.add_argument("-o", "--output", choices=["text", "json"], default="text")
    e.set_defaults(func=_explain)


class _VersionAction(argparse.Action):
    """Like argparse's "version" action, but works the revision out only when asked."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(version_line())
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamgate", description=__doc__)
    p.add_argument("--version", action=_VersionAction, help="show the version and revision")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the admission webhook over HTTPS")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8443)
    s.add_argument("--cert", type=Path, help="serving certificate (PEM); reloaded when it changes")
    s.add_argument("--key", type=Path, help="serving key (PEM)")
    s.add_argument(
        "--self-signed",
        type=Path,
        metavar="DIR",
        help="generate a CA and serving pair for 127.0.0.1 in DIR (local runs)",
    )
    s.add_argument("--policy", type=Path, help="policy YAML (default: built-in defaults)")
    s.add_argument("--log-level", default="info")
    s.add_argument("--log-format", choices=list(FORMATS), default="text")
    s.add_argument(
        "--metrics-port", type=int, default=0, help="serve /metrics on this port (0: off)"
    )
    s.add_argument("--metrics-host", help="default: --host")
    s.add_argument(
        "--policy-reload-interval",
        type=float,
        default=5.0,
        help="seconds between checks of the policy file for changes",
    )
    s.add_argument(
        "--events",
        action="store_true",
        help="post a Kubernetes Event on objects streamgate warns about or denies "
        "(needs --kubeconfig and RBAC to create/patch events)",
    )
    s.add_argument(
        "--event-interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="at most one Event per object and reason this often (default %(default)s)",
    )
    s.add_argument(
        "--http",
        choices=HTTP_PROTOCOLS,
        default=HTTP_PROTOCOLS[0],
        help="HTTP/1.1 parser: httptools (C, default) or h11 (pure Python, for platforms "
        "without the C extension)",
    )
    s.add_argument(
        "--loop",
        choices=loops.EVENT_LOOPS,
        default=loops.EVENT_LOOPS[0],
        help="event loop: uvloop (C, default) or asyncio (the standard library's)",
    )
    m = s.add_argument_group("self-managed certificates (in a cluster)")
    m.add_argument(
        "--manage-certs",
        action="store_true",
        help="keep a CA and serving pair in a Secret, publish the caBundle, renew",
    )
    m.add_argument("--cert-dir", type=Path, default=Path("/tmp/certs"))
    m.add_argument("--cert-namespace", help="namespace of the Secret and the Service")
    m.add_argument("--cert-secret", default="streamgate-tls")
    m.add_argument("--cert-service", default="streamgate")
    m.add_argument(
        "--webhook-config",
        action="append",
        help="webhook configuration whose caBundle to set (repeatable; default: the service)",
    )
    m.add_argument("--cert-check-interval", type=float, default=3600.0)
    s.add_argument(
        "--kubeconfig",
        metavar="PATH|in-cluster",
        help="watch node pools and namespace labels through this kubeconfig, or "
        "'in-cluster' for the pod's service account (default: no cluster)",
    )
    s.set_defaults(func=_serve)

    c = sub.add_parser("check", help="judge manifests offline, as the webhook would")
    c.add_argument(
        "-f",
        "--file",
        type=Path,
        action="append",
        required=True,
        help="manifest file or directory (repeatable)",
    )
    c.add_argument("--policy", type=Path)
    c.add_argument("--namespace", default="default", help="for objects without one")
    c.add_argument("--mode", choices=[m.value for m in Mode], help="override the policy mode")
    c.add_argument("--offline", action="store_true", help="do not ask registries")
    c.add_argument(
        "--nodes",
        type=Path,
        metavar="FILE",
        help="judge placement against `kubectl get nodes,runtimeclasses -o yaml` output",
    )
    c.add_argument("-o", "--output", choices=["table", "json"], default="table")
    c.set_defaults(func=_check)

    _add_scan(sub)
    _add_explain(sub)

    n = sub.add_parser("pools", help="list node pools and whether each can stream")
    n.add_argument("--kubeconfig", help="default: ~/.kube/config or $KUBECONFIG")
    n.add_argument(
        "--nodes",
        type=Path,
        metavar="FILE",
        help="read `kubectl get nodes,runtimeclasses -o yaml` output instead",
    )
    n.add_argument("--policy", type=Path)
    n.add_argument("--timeout", type=float, default=20.0)
    n.set_defaults(func=_pools)

    t = sub.add_parser("certs", help="write a self-signed CA and serving pair")
    t.add_argument("dir", type=Path)
    t.add_argument("--host", action="append", default=None)
    t.set_defaults(func=_certs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "host", None) is None and args.command == "certs":
        args.host = ["127.0.0.1", "localhost"]
    configure_logging(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
    try:
        code: int = args.func(args)
    except (PolicyError, ManifestError, ScanError) as err:
        print(f"streamgate: {err}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
