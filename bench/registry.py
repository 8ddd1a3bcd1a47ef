"""The local registry (olareg from hack/registries.sh): images for the benchmark, and what it
was asked (its own request log, read as tests/support/registries.py reads it)."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bench.common import ROOT, port_open
from tests.support.registries import ensure_registries, log_offset, read_requests, registry_env

OLAREG = "127.0.0.1:25000"


def _seeder() -> ModuleType:
    name = "streamgate_seed_registry"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "hack" / "seed_registry.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Olareg:
    host: str
    log_path: Path

    def offset(self) -> int:
        return log_offset(self.log_path)

    def requests_by_repo(self, since: int, prefix: str) -> dict[str, Counter[str]]:
        """repo -> Counter of "METHOD kind" for requests about repositories under `prefix`
        since `since` (the OCI API under /v2/, ACR's conversion status under /acr/v1/)."""
        out: dict[str, Counter[str]] = {}
        pattern = re.compile(
            rf"^/(?:v2|acr/v1)/({re.escape(prefix)}[^?]*?)/(manifests|referrers|blobs|_streaming)/"
        )
        for req in read_requests(self.log_path, since):
            m = pattern.match(req.path)
            if m:
                out.setdefault(m[1], Counter())[f"{req.method} {m[2]}"] += 1
        return out


def olareg(*, start: bool = True) -> Olareg | None:
    """The local olareg; started with hack/registries.sh when `start` and it is not up."""
    host, port = OLAREG.split(":")
    if not port_open(host, int(port)):
        if not start:
            return None
        ensure_registries()
    reg = registry_env().olareg
    return Olareg(reg.host, reg.log_path)


def seed_demo(host: str, namespace: str) -> list[str]:
    """The demo image set (hack/seed_registry.py) under `namespace`; returns the references."""
    s = _seeder()
    reg = s.Registry(host, plain_http=True)
    try:
        pushed = s.Seeder(reg, out=io.StringIO()).seed(namespace=namespace)
    finally:
        reg.close()
    return [p.ref for p in pushed]


COLD_KINDS = ("streamable", "plain", "multiarch")


def push_cold(host: str, prefix: str, count: int) -> list[tuple[str, str]]:
    """`count` never-seen images under `prefix` (repo:tag, kind), kinds in turn: single-arch
    with a streaming referrer, single-arch with none, and an amd64+arm64 index whose amd64
    manifest has the referrer."""
    s = _seeder()
    reg = s.Registry(host, plain_http=True)
    seeder = s.Seeder(reg, out=io.StringIO())
    out = []
    try:
        for i in range(count):
            kind = COLD_KINDS[i % len(COLD_KINDS)]
            repo = f"{prefix}/img{i:03d}"
            if kind == "multiarch":
                amd, arm = s.make_image(repo, "amd64"), s.make_image(repo, "arm64")
                seeder.push_manifest_tree(repo, s.make_index([amd, arm]), "v1")
                seeder.attach(repo, amd, [s.make_streaming_referrer(amd)])
            else:
                img = s.make_image(repo, "amd64")
                seeder.push_manifest_tree(repo, img, "v1")
                if kind == "streamable":
                    seeder.attach(repo, img, [s.make_streaming_referrer(img)])
            out.append((f"{repo}:v1", kind))
    finally:
        reg.close()
    return out
