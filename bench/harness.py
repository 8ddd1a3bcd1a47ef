"""streamgate assembled as `streamgate serve` assembles it (app.webhook.serve.run_webhook: policy,
metrics observer, registry client, decision logs, TLS server), with state the benchmark
controls: the registry caches filled with N verdicts, a synthetic node inventory, and the
listening socket given from outside (a shared one, or SO_REUSEPORT).

    python -m bench.harness --port P --cert C --key K --policy F [--fill-verdicts 100000]
        [--nodes 5000 --pools 100] [--fd N | --reuse-port]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from pathlib import Path

from app.core.nodes.model import Inventory, Node, Taint, build_inventory
from app.core.nodes.placement import PlacementIndex
from app.registry.manifests import ManifestInfo
from app.registry.referrers import ReferrerSearch, StreamingArtifact
from app.registry.source import RegistryVerdictSource
from app.telemetry.logs import configure
from app.telemetry.metrics import Metrics
from app.webhook.reload import load_policy
from app.webhook.serve import ServeSettings, build_admission, build_server

AKS = "kubernetes.azure.com/"


def inventory(nodes: int, pools: int) -> Inventory:
    """AKS-shaped pools: a tenth arm64, a fifth without the streaming label, some tainted."""
    out = []
    per_pool = max(1, nodes // pools)
    for p in range(pools):
        pool = f"pool{p:03d}"
        arch = "arm64" if p % 10 == 9 else "amd64"
        for i in range(per_pool):
            name = f"aks-{pool}-{10000000 + p}-vmss{i:06x}"
            labels = {
                "kubernetes.io/arch": arch,
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                AKS + "agentpool": pool,
                "agentpool": pool,
                AKS + "os-sku": "Ubuntu",
                AKS + "node-image-version": "AKSUbuntu-2204gen2containerd-202410.27.0",
                AKS + "mode": "system" if p == 0 else "user",
                "node.kubernetes.io/instance-type": "Standard_D4s_v5",
                "topology.kubernetes.io/region": "eastus",
                "topology.kubernetes.io/zone": f"eastus-{i % 3 + 1}",
                "team": f"team{p % 7}",
            }
            if p % 5 != 4:
                labels[AKS + "artifactstreaming-enabled"] = "true"
            taints = (Taint("dedicated", f"team{p % 7}", "NoSchedule"),) if p % 4 == 3 else ()
            out.append(
                Node(
                    name,
                    labels,
                    taints=taints,
                    kubelet_version="v1.34.4",
                    architecture=arch,
                    operating_system="linux",
                )
            )
    return build_inventory(out)


def fill(source: RegistryVerdictSource, registry: str, count: int) -> None:
    """`count` image verdicts in the caches, each as a real look-up leaves it: tag -> digest,
    digest -> manifest, digest -> referrer search (with the artifact for most)."""
    lookup = source._lookup
    day = 86400.0
    for i in range(count):
        repo = f"fill/team{i % 97}/app{i}"
        digest = f"sha256:{i:064x}"
        lookup.tags.put((registry, repo, "v1"), digest, day)
        lookup.manifests.put(
            (registry, repo, digest),
            ManifestInfo(digest, "application/vnd.oci.image.manifest.v1+json"),
            day,
        )
        artifact = None
        if i % 4:
            artifact = StreamingArtifact(
                f"sha256:{i + 10**9:064x}",
                digest,
                {
                    "streaming.format": "overlaybd",
                    "streaming.version": "v1",
                    "streaming.platform.os": "linux",
                    "streaming.platform.arch": "amd64",
                },
            )
        lookup.artifacts.put((registry, repo, digest), ReferrerSearch(digest, artifact), day)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--policy", type=Path, required=True)
    p.add_argument("--fill-verdicts", type=int, default=0)
    p.add_argument("--fill-registry", default="127.0.0.1:25000")
    p.add_argument("--nodes", type=int, default=0)
    p.add_argument("--pools", type=int, default=100)
    p.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    p.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    args = p.parse_args()
    configure("info", "text")
    settings = ServeSettings(
        host="127.0.0.1", port=args.port, cert=args.cert, key=args.key, policy_path=args.policy
    )

    async def serve() -> None:
        started = time.monotonic()
        policy = load_policy(args.policy)
        metrics = Metrics()
        source = RegistryVerdictSource(policy.registry, acr_hosts=policy.is_acr, observer=metrics)
        fill(source, args.fill_registry, args.fill_verdicts)
        placement = None
        if args.nodes:
            placement = PlacementIndex(inventory(args.nodes, args.pools), policy.pools)
        admission = build_admission(
            settings, verdicts=source, placement=placement, policy=policy, observer=metrics
        )
        running = build_server(
            settings,
            admission,
            on_bad_request=lambda e, c: metrics.on_bad_request(endpoint=e, code=c),
        )
        print(f"harness: state ready in {time.monotonic() - started:.2f}s", flush=True)
        sockets = None
        if args.fd is not None:
            sockets = [socket.socket(fileno=args.fd)]
        elif args.reuse_port:
            # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY on accepted connections only
            # when the listening socket says TCP; with proto 0 every answer waits ~40 ms for
            # Nagle and the client's delayed ACK.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", args.port))
            sockets = [sock]

        async def announce() -> None:
            while not running.server.started:  # noqa: ASYNC110 (uvicorn sets a bool, no event)
                await asyncio.sleep(0.02)
            print("harness: listening", flush=True)

        announcing = asyncio.create_task(announce())
        try:
            await running.server.serve(sockets=sockets)
        finally:
            announcing.cancel()
            await source.aclose()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
