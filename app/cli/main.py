"""The `streamgate` command: serve the webhook, check manifests offline, audit a cluster
(scan), explain one image's verdict, list node pools, issue local certs."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from app.certs.keeper import ManagedCertSettings
from app.certs.tls import issue_self_signed
from app.cli import completion
from app.cli.check import (
    ManifestError,
    Result,
    check,
    namespace_modes,
    read_manifests,
    to_json,
    to_table,
)
from app.cli.checkformats import to_junit, to_sarif, to_yaml
from app.cli.convert import (
    ConvertError,
    LiveDisplay,
    Summary,
    convert,
    read_check_file,
    uses_from_scan,
)
from app.cli.explain import ExplainError, Explanation, explain
from app.cli.explain import to_json as explain_json
from app.cli.explain import to_text as explain_text
from app.cli.poolreport import inventory_from_file, pool_table
from app.cli.scan import (
    RENDERERS,
    REPORT_OUTPUTS,
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
from app.cli.version import revision, version_line
from app.cluster.nodes import NodeWatcher
from app.cluster.webhookconfigs import RemovalError, remove_webhook_configurations
from app.core import messages
from app.core.conversions import select_images
from app.core.nodes.placement import PlacementIndex
from app.core.policy import Mode, Policy, PolicyError
from app.core.pools import UNKNOWN_PLACEMENT, Placement, PlacementSource
from app.core.reports import OPENREPORTS, WGPOLICY
from app.core.verdicts import OfflineVerdicts, VerdictSource
from app.registry.source import RegistryVerdictSource
from app.telemetry.events import DEFAULT_INTERVAL
from app.telemetry.logs import FORMATS
from app.telemetry.logs import configure as configure_logging
from app.webhook import loops
from app.webhook.connections import HTTP_PROTOCOLS, ProtocolUnavailable, guarded_protocol
from app.webhook.reload import load_policy
from app.webhook.serve import (
    ReportOptions,
    ServeSettings,
    build_admission,
    run_reporter,
    run_webhook,
)

EXIT_OK, EXIT_DENIED, EXIT_USAGE = 0, 1, 2
EXIT_AUTH = 4  # `convert`: the registry refused the credentials or the push right


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
        client_ca=args.client_ca,
        revision=revision(),
        reports=_report_options(args) if args.reports else None,
    )
    if settings.client_ca is not None and not settings.client_ca.is_file():
        print(f"streamgate serve: --client-ca {settings.client_ca}: no such file", file=sys.stderr)
        return EXIT_USAGE
    if settings.events and not settings.kube:
        print("streamgate serve: --events needs --kubeconfig", file=sys.stderr)
        return EXIT_USAGE
    if settings.reports and not settings.kube:
        print("streamgate serve: --reports needs --kubeconfig", file=sys.stderr)
        return EXIT_USAGE
    try:  # a missing C extension is said before anything starts, with the way out
        guarded_protocol(settings.http)
        loops.loop_factory(settings.loop)
    except (ProtocolUnavailable, loops.LoopUnavailable) as err:
        print(f"streamgate serve: {err}", file=sys.stderr)
        return EXIT_USAGE
    for what, path in (("--cert", settings.cert), ("--key", settings.key)):
        if path is not None and not Path(path).is_file():
            print(f"streamgate serve: {what} {path}: no such file", file=sys.stderr)
            return EXIT_USAGE
    load_policy(settings.policy_path)  # refuse a bad policy before anything starts
    loops.run(run_webhook(settings), settings.loop)
    return EXIT_OK


REPORT_APIS = {"policyreport": WGPOLICY, "openreports": OPENREPORTS}


def _report_options(args: argparse.Namespace) -> ReportOptions:
    options = ReportOptions(
        api=REPORT_APIS[args.reports_api],
        lease_namespace=args.lease_namespace or None,
        lease_name=args.lease_name,
        lease_seconds=args.lease_seconds,
        interval=args.report_interval,
        resync_seconds=args.resync,
        writes_per_second=args.writes_per_second,
        namespaces=tuple(_namespaces(args.report_namespace)),
        min_write_interval=args.min_write_interval,
    )
    if args.identity:
        options.identity = args.identity
    return options


def _report(args: argparse.Namespace) -> int:
    settings = ServeSettings(
        policy_path=args.policy,
        kube=args.kubeconfig,
        policy_reload_interval=args.policy_reload_interval,
    )
    options = _report_options(args)
    if (
        options.lease_seconds < 3
        or options.interval <= 0
        or options.writes_per_second <= 0
        or options.min_write_interval < 0
    ):
        print(
            "streamgate report: --lease-seconds must be at least 3, --report-interval and "
            "--writes-per-second above 0, --min-write-interval at least 0",
            file=sys.stderr,
        )
        return EXIT_USAGE
    load_policy(settings.policy_path)  # refuse a bad policy before anything starts
    kube_api(args.kubeconfig)  # a kubeconfig that does not load: one clear line, exit 2
    asyncio.run(run_reporter(settings, options))
    return EXIT_OK


def _add_report_options(p: Any) -> None:
    p.add_argument(
        "--reports-api",
        choices=list(REPORT_APIS),
        default="policyreport",
        help="wgpolicyk8s.io/v1alpha2 PolicyReports (default; what Policy Reporter reads) or "
        "openreports.io/v1alpha1 Reports",
    )
    p.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="elect one writer among replicas with a Lease in this namespace "
        "(default: no election, this process always writes)",
    )
    p.add_argument("--lease-name", default="streamgate-reporter", metavar="NAME")
    p.add_argument(
        "--identity", help="this candidate's name in the Lease (default: $POD_NAME or host, pid)"
    )
    p.add_argument(
        "--lease-seconds",
        type=int,
        default=15,
        metavar="N",
        help="how long a leader that stopped renewing keeps the Lease (default %(default)s)",
    )
    p.add_argument(
        "--report-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between rounds; changes within one are written together "
        "(default %(default)s)",
    )
    p.add_argument(
        "--resync",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="judge every namespace again this often (pools and registries change too; "
        "unchanged reports are not written) (default %(default)s)",
    )
    p.add_argument(
        "--writes-per-second",
        type=float,
        default=5.0,
        metavar="N",
        help="at most this many report writes a second (default %(default)s)",
    )
    p.add_argument(
        "--min-write-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="write one namespace's reports at most this often; changes meanwhile wait "
        "(default %(default)s)",
    )
    p.add_argument(
        "--report-namespace",
        action="append",
        metavar="NS",
        help="report only on these namespaces (repeatable, or comma-separated; default: all)",
    )


def _add_report(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="keep a PolicyReport per namespace up to date (the reporter without the webhook)",
    )
    rep.add_argument(
        "--kubeconfig",
        metavar="PATH|in-cluster",
        required=True,
        help="the cluster to watch and write reports to",
    )
    rep.add_argument("--policy", type=Path, help="policy YAML (default: built-in defaults)")
    rep.add_argument("--policy-reload-interval", type=float, default=5.0, metavar="SECONDS")
    rep.add_argument("--log-level", default="info")
    rep.add_argument("--log-format", choices=list(FORMATS), default="text")
    _add_report_options(rep)
    rep.set_defaults(func=_report)


def _uninstall_hook(args: argparse.Namespace) -> int:
    api = kube_api(args.kubeconfig, args.context)
    try:
        removed = remove_webhook_configurations(api, args.webhook_config, timeout=args.timeout)
    except RemovalError as err:
        return _fail(f"uninstall-hook: {err}")
    for item in removed:
        print(item.line())
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


class _NoRuntimeClasses:
    """Placement from a --nodes file that lists no RuntimeClass: a pod naming a runtime class
    can't be placed from it (the file says nothing of that class), so its pools are unknown
    rather than "stays Pending"."""

    def __init__(self, index: PlacementIndex) -> None:
        self._index = index

    def place(self, pod_spec: Mapping[str, Any]) -> Placement:
        if pod_spec.get("runtimeClassName"):
            return UNKNOWN_PLACEMENT
        return self._index.place(pod_spec)


def _terminal_safe(text: str) -> str:
    """Output without control characters but newlines and tabs: image names, reasons and
    labels come from other people's manifests and clusters, and an escape sequence in one
    must not drive the reader's terminal. (JSON, YAML, SARIF and JUnit escape them already.)"""
    return messages.printable(text, keep="\n\t")


def _check(args: argparse.Namespace) -> int:
    settings = ServeSettings(policy_path=args.policy)
    policy = load_policy(args.policy)
    placement: PlacementSource | None = None
    notes = []
    if args.nodes:
        inventory = inventory_from_file(args.nodes, pool_labels=policy.pools.pool_labels)
        if not inventory.nodes:
            notes.append(f"{args.nodes} lists no Node: pools not judged")
        else:
            index = PlacementIndex(inventory, policy.pools)
            placement = index if inventory.runtime_classes else _NoRuntimeClasses(index)
    else:
        notes.append(
            "node pools not judged (give --nodes with the output of "
            "`kubectl get nodes,runtimeclasses -o yaml`)"
        )
    if args.offline:
        notes.append("offline: ACR images not looked up (unknown)")
    if args.mode:
        policy = policy.model_copy(update={"mode": Mode(args.mode)})
    docs = read_manifests(args.file)
    modes = namespace_modes(docs)

    async def run() -> list[Result]:
        source = _verdict_source(policy, offline=args.offline)
        admission = build_admission(
            settings,
            verdicts=source,
            placement=placement,
            namespaces=StaticModes(modes),
            policy=policy,
        )
        try:
            return await check(docs, admission, namespace=args.namespace)
        finally:
            await _close(source)

    results = asyncio.run(run())
    for note in notes:
        print(f"streamgate check: {note}", file=sys.stderr)
    print(_terminal_safe(CHECK_FORMATS[args.output](results)))
    if any(r.denied for r in results):
        return EXIT_DENIED
    if args.fail_on == "warn" and any(r.decision and r.decision.warnings for r in results):
        return EXIT_DENIED
    return EXIT_OK


CHECK_FORMATS = {
    "table": to_table,
    "json": to_json,
    "yaml": to_yaml,
    "sarif": to_sarif,
    "junit": to_junit,
}


def _namespaces(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or ():
        out.extend(n.strip() for n in value.split(",") if n.strip())
    return list(dict.fromkeys(out))


def _scan_report(args: argparse.Namespace, policy: Policy, *, quiet: bool) -> Report:
    """Read the cluster the kubeconfig points at and judge it, as `streamgate scan` does
    (`--kubeconfig`, `--context`, `-n`): `scan` prints it, `convert --from-scan` converts
    from it."""
    progress = Progress(enabled=not quiet)
    reader = KubeReader(kube_api(args.kubeconfig, args.context))
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

    return asyncio.run(run())


def _scan(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    report = _scan_report(args, policy, quiet=args.quiet)
    text = RENDERERS[args.output](report)
    if args.output in REPORT_OUTPUTS:
        # Objects for `kubectl apply -f -`: what they can't say goes to stderr.
        for note in report.notes:
            print(f"streamgate scan: note: {note}", file=sys.stderr)
        if not text:
            print("streamgate scan: no workloads found: no reports to write", file=sys.stderr)
            return EXIT_OK
        sys.stdout.write(text)
        return EXIT_OK
    print(_terminal_safe(text))
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    placement = None
    mode = None
    if args.kubeconfig or args.context:
        reader = KubeReader(kube_api(args.kubeconfig, args.context))
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
    print(_terminal_safe(explain_json(out) if args.output == "json" else explain_text(out)))
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    """Exit 0 all done (or nothing to do), 1 something failed, 2 bad input, 4 the registry
    refused the credentials or the push right (docs/cli.md#convert)."""
    if not (args.image or args.from_check or args.from_scan):
        print(
            "streamgate convert: nothing to convert: give IMAGE arguments, --from-check FILE "
            "or --from-scan",
            file=sys.stderr,
        )
        return EXIT_USAGE
    scan_only = [
        flag
        for flag, given in (
            ("--kubeconfig", args.kubeconfig),
            ("--context", args.context),
            ("--namespace", args.namespace),
        )
        if given
    ]
    if scan_only and not args.from_scan:
        print(
            f"streamgate convert: {', '.join(scan_only)} only apply with --from-scan",
            file=sys.stderr,
        )
        return EXIT_USAGE
    policy = load_policy(args.policy)
    selection = None
    try:
        uses = read_check_file(args.from_check) if args.from_check else []
    except ConvertError as err:
        print(f"streamgate convert: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.from_scan:
        uses += uses_from_scan(_scan_report(args, policy, quiet=args.quiet))
    if args.from_check or args.from_scan:
        selection = select_images(uses)
    live = LiveDisplay(sys.stdout) if sys.stdout.isatty() and not args.dry_run else None

    def line(text: str) -> None:
        text = _terminal_safe(text)
        if live is not None:
            live.line(text)
        else:
            print(text, flush=True)

    async def run() -> Summary:
        return await convert(
            args.image,
            policy,
            out=line,
            dry_run=args.dry_run,
            wait=args.wait,
            follow_seconds=args.timeout,
            selection=selection,
            auto_repos=args.auto_convert_repos,
            live=live,
        )

    try:
        summary = asyncio.run(run())
    except ConvertError as err:
        print(f"streamgate convert: {err}", file=sys.stderr)
        return EXIT_USAGE
    line(summary.line(dry_run=args.dry_run))
    if summary.auth:
        return EXIT_AUTH
    return EXIT_OK if summary.ok else EXIT_DENIED


def _pools(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.nodes:
        inventory = inventory_from_file(args.nodes, pool_labels=policy.pools.pool_labels)
        print(pool_table(PlacementIndex(inventory, policy.pools)))
        return EXIT_OK
    watcher = NodeWatcher(kube_api(args.kubeconfig, args.context), rules=policy.pools)
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


def _completion(args: argparse.Namespace) -> int:
    print(completion.script(parser(), args.shell), end="")
    return EXIT_OK


def _certs(args: argparse.Namespace) -> int:
    files = issue_self_signed(args.dir, args.host)
    print(f"ca: {files.ca}\ncert: {files.cert}\nkey: {files.key}")
    print("caBundle: " + base64.b64encode(files.ca.read_bytes()).decode())
    return EXIT_OK


def _add_check(sub: Any) -> None:
    c = sub.add_parser("check", help="judge manifests offline, as the webhook would")
    c.add_argument(
        "-f",
        "--file",
        type=Path,
        action="append",
        required=True,
        help="manifest file or directory, or - for standard input (repeatable)",
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
    c.add_argument("-o", "--output", choices=list(CHECK_FORMATS), default="table")
    c.add_argument(
        "--fail-on",
        choices=["deny", "warn"],
        default="deny",
        help="exit 1 when something would be denied (default), or also when warned",
    )
    c.set_defaults(func=_check)


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
    a.add_argument("--context", help="the kubeconfig context to use (as kubectl --context)")
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
    e.add_argument("--context", help="the kubeconfig context to use (as kubectl --context)")
    e.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="namespace whose mode applies (default: default)",
    )
    e.add_argument("-o", "--output", choices=["text", "json"], default="text")
    e.set_defaults(func=_explain)


def _add_convert(sub: Any) -> None:
    c = sub.add_parser(
        "convert",
        help="ask ACR to convert images that can't stream yet, and follow the conversions",
    )
    c.add_argument("image", nargs="*", help="image references, as written in pod specs")
    c.add_argument(
        "--from-check",
        metavar="FILE",
        help="also the images `streamgate check -o json` wrote to FILE (- for standard input) "
        "reports not streamable for want of a streaming artifact",
    )
    c.add_argument(
        "--from-scan",
        action="store_true",
        help="also the images a scan of the cluster (as `streamgate scan`) reports not "
        "streamable for want of a streaming artifact",
    )
    c.add_argument(
        "--kubeconfig",
        metavar="PATH|in-cluster",
        help="with --from-scan: default $KUBECONFIG or ~/.kube/config",
    )
    c.add_argument("--context", help="with --from-scan: the kubeconfig context to use")
    c.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NS",
        help="with --from-scan: only these namespaces (repeatable, or comma-separated)",
    )
    c.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="with --from-scan: registry look-ups at once, per registry (default %(default)s)",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="no scan progress on stderr")
    c.add_argument(
        "--auto-convert-repos",
        action="store_true",
        help="also turn on ACR's conversion of pushed images for the repositories involved "
        "(left alone where on already)",
    )
    c.add_argument("--policy", type=Path, help="policy YAML (default: built-in defaults)")
    c.add_argument(
        "--dry-run",
        action="store_true",
        help="print what it would do, one line per image and repository; change nothing",
    )
    c.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow each conversion to its end (default); --no-wait only starts them",
    )
    c.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="stop following after this long (default %(default)g); exit 1 if any still runs",
    )
    c.set_defaults(func=_convert)


class _VersionAction(argparse.Action):
    """Like argparse's "version" action, but works the revision out only when asked."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(version_line())
        parser.exit()


def _add_uninstall_hook(sub: Any) -> None:
    u = sub.add_parser(
        "uninstall-hook",
        help="delete the webhook configurations before the rest of a release "
        "(the chart's pre-delete hook)",
    )
    u.add_argument(
        "--webhook-config",
        action="append",
        required=True,
        metavar="NAME",
        help="name of a validating and mutating webhook configuration pair (repeatable)",
    )
    u.add_argument(
        "--kubeconfig",
        metavar="PATH|in-cluster",
        help="'in-cluster' for the pod's service account (default: $KUBECONFIG or "
        "~/.kube/config, as kubectl)",
    )
    u.add_argument("--context", help="the kubeconfig context to use (as kubectl --context)")
    u.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the apiserver to report them gone (default %(default)s)",
    )
    u.set_defaults(func=_uninstall_hook)


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
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="require a client certificate signed by this CA (PEM) on /validate and /mutate "
        "(the apiserver's admission kubeconfig; not available on AKS); probes need none",
    )
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
    r = s.add_argument_group("policy reports (see `streamgate report`)")
    r.add_argument(
        "--reports",
        action="store_true",
        help="keep a PolicyReport per namespace up to date (needs --kubeconfig and RBAC)",
    )
    _add_report_options(r)
    s.set_defaults(func=_serve)

    _add_report(sub)

    _add_check(sub)
    _add_scan(sub)
    _add_explain(sub)
    _add_convert(sub)

    n = sub.add_parser("pools", help="list node pools and whether each can stream")
    n.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config, as kubectl")
    n.add_argument("--context", help="the kubeconfig context to use (as kubectl --context)")
    n.add_argument(
        "--nodes",
        type=Path,
        metavar="FILE",
        help="read `kubectl get nodes,runtimeclasses -o yaml` output instead",
    )
    n.add_argument("--policy", type=Path)
    n.add_argument("--timeout", type=float, default=20.0)
    n.set_defaults(func=_pools)

    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=list(completion.SHELLS))
    comp.set_defaults(func=_completion)

    _add_uninstall_hook(sub)

    _add_certs(sub)
    return p


def _add_certs(sub: Any) -> None:
    t = sub.add_parser("certs", help="write a self-signed CA and serving pair")
    t.add_argument("dir", type=Path)
    t.add_argument("--host", action="append", default=None)
    t.set_defaults(func=_certs)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok; 1 `check` found what --fail-on names (a denial, or a warning), or
    `convert` had a conversion fail (or still running at --timeout);
    4 `convert`: the registry refused the credentials or the push right;
    2 bad input (usage, files, YAML, policy, kubeconfig, cluster unreachable; one line on
    stderr); 3 an internal error (one line; a bug to report); 130 interrupted."""
    args = parser().parse_args(argv)
    if getattr(args, "host", None) is None and args.command == "certs":
        args.host = ["127.0.0.1", "localhost"]
    # The commands other than serve speak for themselves: library warnings (retries of a
    # watch, ...) would bury the one line that says what went wrong.
    configure_logging(getattr(args, "log_level", "error"), getattr(args, "log_format", "text"))
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except (PolicyError, ManifestError, ScanError) as err:
        return _fail(str(err))
    except BrokenPipeError:
        # The reader of our output went away (`streamgate check ... | head`): say nothing
        # more on stdout (Python would complain again at exit), one line on stderr.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _fail("output closed before it was all written")
    except KeyboardInterrupt:
        return 130
    except yaml.YAMLError as err:
        return _fail(f"not valid YAML: {' '.join(str(err).split())}")
    except UnicodeDecodeError as err:
        return _fail(f"not UTF-8 text: {err.reason}")
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        return _fail(f"{where}{err.strerror or err}")
    except Exception as err:  # a bug: one line, not a traceback (the log has the detail)
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        return _fail(
            f"internal error ({type(err).__name__}: {' '.join(str(err).split())[:200]})", 3
        )
    return code


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"streamgate: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
