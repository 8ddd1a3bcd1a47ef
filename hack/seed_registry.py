#!/usr/bin/env python3
"""Push test images and ACR-style streaming artifacts to a registry over the OCI distribution API.

No Docker needed: blobs and manifests are made here (small but valid images with deterministic
content) and pushed with httpx.

    seed_registry.py --registry 127.0.0.1:25000 --plain-http seed
    seed_registry.py --registry 127.0.0.1:25002 --plain-http --user sg-user --password sg-pass seed
    seed_registry.py --registry 127.0.0.1:25443 --ca-cert CA.crt --aad-token T seed
    seed_registry.py --registry 127.0.0.1:25000 --plain-http add-referrer demo/late:v1
    seed_registry.py --registry 127.0.0.1:25000 --plain-http remove-referrers demo/late:v1

A streaming referrer is made as ACR makes it: an OCI image manifest with
``artifactType: application/vnd.azure.artifact.streaming.v1``, the OCI empty config, one layer,
``subject`` = the image manifest's descriptor and the ``streaming.*`` annotations. One image
(``config-form``) gets the older shape instead: no ``artifactType``, the type given as the
config's media type; OCI 1.1 says registries and clients then take the config media type as the
artifact type.

Referrers are pushed by digest. When the registry does not say it handled ``subject``
(no ``OCI-Subject`` header on the manifest PUT, as with docker-registry 2.8, whose referrers API
answers 404), the OCI 1.1 fallback tag ``sha256-<hex>`` is kept up to date as well: an OCI image
index listing the referrer descriptors with their ``artifactType`` and annotations.

``seed`` is idempotent: content is deterministic, so a re-run pushes the same digests and adds
nothing to a referrers list or fallback index; it also takes the referrers off ``demo/late:v1``
again, so ``add-referrer`` has something to add.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import ssl
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
STREAMING_TYPE = "application/vnd.azure.artifact.streaming.v1"
SBOM_TYPE = "application/spdx+json"
ACCEPT_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
EMPTY_JSON = b"{}"
NULL_GUID = "00000000-0000-0000-0000-000000000000"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    d.update({k: v for k, v in extra.items() if v is not None})
    return d


EMPTY_DESCRIPTOR = {
    "mediaType": OCI_EMPTY,
    "digest": sha256(EMPTY_JSON),
    "size": 2,
    "data": base64.b64encode(EMPTY_JSON).decode(),
}


def fallback_tag(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}"


# --------------------------------------------------------------------------- content


def deterministic_layer(text: str) -> tuple[bytes, bytes]:
    """(gzipped tar, uncompressed tar) holding one small file; same input, same bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in (("etc/", None), ("etc/streamgate-demo", text.encode())):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if body is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=6, mtime=0), tar_bytes


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return descriptor(self.media_type, self.data, **extra)


@dataclass
class Manifest:
    media_type: str
    data: bytes
    blobs: list[Blob] = field(default_factory=list)
    children: list[Manifest] = field(default_factory=list)  # for an index
    platform: dict[str, str] | None = None

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return descriptor(self.media_type, self.data, **extra)

    @property
    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.data)
        return body


def make_image(name: str, arch: str = "amd64", *, docker: bool = False) -> Manifest:
    """A single-platform linux image: config + one layer + manifest (OCI, or Docker v2)."""
    gz, tar_bytes = deterministic_layer(f"streamgate demo image {name} linux/{arch}\n")
    layer = Blob(DOCKER_LAYER if docker else OCI_LAYER_GZIP, gz)
    config_obj = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
        "history": [{"created_by": f"hack/seed_registry.py {name}"}],
    }
    config = Blob(DOCKER_CONFIG if docker else OCI_CONFIG, canonical(config_obj))
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    return Manifest(
        media_type,
        canonical(body),
        blobs=[config, layer],
        platform={"architecture": arch, "os": "linux"},
    )


def make_index(children: list[Manifest], annotations: dict[str, str] | None = None) -> Manifest:
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [c.descriptor(platform=c.platform) for c in children],
    }
    if annotations:
        body["annotations"] = annotations
    return Manifest(OCI_INDEX, canonical(body), children=children)


def streaming_annotations(arch: str) -> dict[str, str]:
    return {
        "streaming.format": "overlaybd",
        "streaming.version": "v1",
        "streaming.platform.os": "linux",
        "streaming.platform.arch": arch,
    }


def make_streaming_referrer(
    subject: Manifest, arch: str = "amd64", *, config_form: bool = False
) -> Manifest:
    """ACR's streaming artifact for `subject` (deterministic: one per subject and arch)."""
    layer = Blob(OCI_LAYER_TAR, f"fake overlaybd blob for {subject.digest} linux/{arch}\n".encode())
    body: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if config_form:
        # pre-1.1 shape: the artifact type is the config's media type
        body["config"] = {"mediaType": STREAMING_TYPE, "digest": sha256(EMPTY_JSON), "size": 2}
    else:
        body["artifactType"] = STREAMING_TYPE
        body["config"] = EMPTY_DESCRIPTOR
    body["layers"] = [layer.descriptor()]
    body["subject"] = subject.descriptor()
    body["annotations"] = streaming_annotations(arch)
    return Manifest(OCI_MANIFEST, canonical(body), blobs=[Blob(OCI_EMPTY, EMPTY_JSON), layer])


def make_sbom_referrer(subject: Manifest, n: int = 0) -> Manifest:
    doc = {
        "spdxVersion": "SPDX-2.3",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"sbom-{n}-{subject.digest[7:19]}",
        "dataLicense": "CC0-1.0",
        "packages": [],
    }
    layer = Blob(SBOM_TYPE, canonical(doc))
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": EMPTY_DESCRIPTOR,
        "layers": [layer.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {
            "org.opencontainers.image.title": f"sbom-{n}.spdx.json",
            "streamgate.test/n": str(n),
        },
    }
    return Manifest(OCI_MANIFEST, canonical(body), blobs=[Blob(OCI_EMPTY, EMPTY_JSON), layer])


def artifact_type_of(manifest: Manifest) -> str | None:
    body = manifest.json
    return body.get("artifactType") or (body.get("config") or {}).get("mediaType")


def referrer_descriptor(manifest: Manifest) -> dict[str, Any]:
    body = manifest.json
    return manifest.descriptor(
        artifactType=artifact_type_of(manifest), annotations=body.get("annotations")
    )


# --------------------------------------------------------------------------- registry client


class RegistryError(RuntimeError):
    pass


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            end = rest.find('"', i + 1)
            end = len(rest) if end < 0 else end
            params[key] = rest[i + 1 : end]
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


class Registry:
    """Just enough of an OCI distribution client to push, with basic, Docker-token and ACR auth."""

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool = False,
        verify: bool | str = True,
        user: str | None = None,
        password: str | None = None,
        aad_token: str | None = None,
        tenant: str | None = None,
        token_front: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.base = f"{'http' if plain_http else 'https'}://{host}"
        self.user, self.password = user, password
        self.aad_token, self.tenant = aad_token, tenant
        self.token_front = token_front.rstrip("/") if token_front else None
        tls: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self.client = httpx.Client(verify=tls, timeout=timeout, follow_redirects=False)
        self._basic = user is not None and password is not None
        self._tokens: dict[str, str] = {}  # repo -> bearer token
        self._refresh_token: str | None = None
        self.requests = 0
        self.token_requests = 0

    def close(self) -> None:
        self.client.close()

    # ---------------------------------------------------------------- auth

    def _auth_headers(self, repo: str | None) -> dict[str, str]:
        if repo is not None and repo in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[repo]}"}
        if self._basic:
            raw = f"{self.user}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _authenticate(self, repo: str | None, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self._basic:
                raise RegistryError(f"{self.host} wants basic auth: give --user and --password")
            return
        if scheme != "bearer":
            raise RegistryError(f"unsupported auth challenge {challenge!r}")
        realm, service = params.get("realm", ""), params.get("service", "")
        scope = f"repository:{repo}:pull,push,delete" if repo else params.get("scope", "")
        self.token_requests += 1
        if self.aad_token:
            token = self._acr_token(realm, service, scope)
        else:
            auth = (self.user, self.password) if self._basic else None
            resp = self.client.get(realm, params={"service": service, "scope": scope}, auth=auth)  # type: ignore[arg-type]
            if resp.status_code != 200:
                raise RegistryError(
                    f"token request to {realm} failed: {resp.status_code} {resp.text[:200]}"
                )
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        self._tokens[repo or ""] = token

    def _acr_token(self, realm: str, service: str, scope: str) -> str:
        """ACR: AAD token -> /oauth2/exchange -> refresh token -> /oauth2/token -> access token."""
        front = self.token_front or realm.rsplit("/oauth2/", 1)[0]
        for attempt in range(2):
            if self._refresh_token is None:
                self._refresh_token = self._acr_exchange(front, service)
            resp = self.client.post(
                realm,
                data={
                    "grant_type": "refresh_token",
                    "service": service,
                    "scope": scope,
                    "refresh_token": self._refresh_token,
                },
            )
            if resp.status_code == 401 and attempt == 0:
                self._refresh_token = None  # expired or revoked: exchange again
                continue
            if resp.status_code != 200:
                raise RegistryError(
                    f"ACR token request failed: {resp.status_code} {resp.text[:200]}"
                )
            return str(resp.json()["access_token"])
        raise RegistryError("ACR token request failed")

    def _acr_exchange(self, front: str, service: str) -> str:
        form = {
            "grant_type": "access_token",
            "service": service,
            "access_token": self.aad_token or "",
        }
        if self.tenant:
            form["tenant"] = self.tenant
        resp = self.client.post(f"{front}/oauth2/exchange", data=form)
        if resp.status_code != 200:
            raise RegistryError(f"ACR token exchange failed: {resp.status_code} {resp.text[:200]}")
        return str(resp.json()["refresh_token"])

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        repo: str | None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        url = (
            path_or_url
            if path_or_url.startswith(("http://", "https://"))
            else self.base + path_or_url
        )
        for attempt in range(2):
            h = dict(headers or {})
            h.update(self._auth_headers(repo))
            self.requests += 1
            resp = self.client.request(method, url, headers=h, content=content, params=params)
            if resp.status_code == 401 and attempt == 0 and "www-authenticate" in resp.headers:
                self._tokens.pop(repo or "", None)
                self._authenticate(repo, resp.headers["www-authenticate"])
                continue
            return resp
        return resp

    # ---------------------------------------------------------------- API

    def ping(self) -> httpx.Response:
        return self.request("GET", "/v2/", repo=None)

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo).status_code == 200

    def push_blob(self, repo: str, blob: Blob) -> None:
        if self.blob_exists(repo, blob.digest):
            return
        resp = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/", repo=repo, headers={"Content-Length": "0"}
        )
        if resp.status_code != 202 or "location" not in resp.headers:
            raise RegistryError(
                f"blob upload start for {repo} failed: {resp.status_code} {resp.text[:200]}"
            )
        location = urljoin(self.base + f"/v2/{repo}/blobs/uploads/", resp.headers["location"])
        sep = "&" if "?" in location else "?"
        resp = self.request(
            "PUT",
            f"{location}{sep}digest={blob.digest}",
            repo=repo,
            headers={"Content-Type": "application/octet-stream"},
            content=blob.data,
        )
        if resp.status_code != 201:
            raise RegistryError(
                f"blob upload {blob.digest} to {repo} failed: {resp.status_code} {resp.text[:200]}"
            )

    def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> httpx.Response:
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            repo=repo,
            headers={"Content-Type": manifest.media_type},
            content=manifest.data,
        )
        if resp.status_code != 201:
            raise RegistryError(
                f"manifest PUT {repo}:{ref} failed: {resp.status_code} {resp.text[:300]}"
            )
        got = resp.headers.get("docker-content-digest")
        if got and got != manifest.digest:
            raise RegistryError(
                f"{repo}:{ref}: registry says digest {got}, expected {manifest.digest}"
            )
        return resp

    def get_manifest(self, repo: str, ref: str) -> Manifest | None:
        resp = self.request(
            "GET", f"/v2/{repo}/manifests/{ref}", repo=repo, headers={"Accept": ACCEPT_MANIFESTS}
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise RegistryError(
                f"manifest GET {repo}:{ref} failed: {resp.status_code} {resp.text[:200]}"
            )
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        return Manifest(
            media_type or json.loads(resp.content).get("mediaType", OCI_MANIFEST), resp.content
        )

    def delete_manifest(self, repo: str, digest: str) -> bool:
        resp = self.request("DELETE", f"/v2/{repo}/manifests/{digest}", repo=repo)
        if resp.status_code in (202, 200, 204):
            return True
        if resp.status_code == 404:
            return False
        raise RegistryError(
            f"manifest DELETE {repo}@{digest} failed: {resp.status_code} {resp.text[:200]}"
        )

    def referrers(self, repo: str, digest: str) -> list[dict[str, Any]] | None:
        """Referrer descriptors from the referrers API (all pages), or None where it is absent."""
        url: str | None = f"/v2/{repo}/referrers/{digest}"
        out: list[dict[str, Any]] = []
        while url:
            resp = self.request("GET", url, repo=repo, headers={"Accept": OCI_INDEX})
            if resp.status_code == 404 and not out:
                # No API (distribution 2.8: "404 page not found"); an API answers 200 even if
                # there are no referrers.
                return None
            if resp.status_code != 200:
                raise RegistryError(
                    f"referrers {repo}@{digest}: {resp.status_code} {resp.text[:200]}"
                )
            out.extend(resp.json().get("manifests") or [])
            url = next_link(resp)
            if url and not url.startswith("http"):
                url = urljoin(self.base + "/", url)
        return out

    def fallback_referrers(self, repo: str, digest: str) -> list[dict[str, Any]]:
        index = self.get_manifest(repo, fallback_tag(digest))
        return [] if index is None else list(index.json.get("manifests") or [])


def next_link(resp: httpx.Response) -> str | None:
    link = str(resp.headers.get("link") or "")
    if not link:
        return None
    for part in link.split(","):
        target, _, rest = part.partition(";")
        if 'rel="next"' in rest.replace(" ", "") or "rel=next" in rest.replace(" ", ""):
            return target.strip().strip("<>")
    return None


# --------------------------------------------------------------------------- seeding


@dataclass
class Pushed:
    ref: str  # repo:tag
    repo: str
    tag: str
    digest: str
    media_type: str
    platforms: dict[str, str] = field(default_factory=dict)  # "linux/amd64" -> digest
    referrers: list[dict[str, Any]] = field(default_factory=list)  # {digest, artifactType, subject}
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "repo": self.repo,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "platforms": self.platforms,
            "referrers": self.referrers,
            "note": self.note,
        }


class Seeder:
    def __init__(self, registry: Registry, *, out: Any = sys.stdout) -> None:
        self.reg = registry
        self.out = out
        self.referrers_api: bool | None = None  # learnt from the first referrer push
        self.subject_header: bool | None = None

    def log(self, msg: str) -> None:
        print(msg, file=self.out)

    def push_manifest_tree(self, repo: str, manifest: Manifest, ref: str | None) -> None:
        for blob in manifest.blobs:
            self.reg.push_blob(repo, blob)
        for child in manifest.children:
            self.push_manifest_tree(repo, child, None)
        self.reg.put_manifest(repo, ref or manifest.digest, manifest)

    def attach(
        self, repo: str, subject: Manifest | dict[str, Any], referrers: list[Manifest]
    ) -> None:
        """Push referrers by digest; maintain the fallback tag where the registry needs it."""
        subject_digest = subject.digest if isinstance(subject, Manifest) else subject["digest"]
        need_fallback = False
        for ref in referrers:
            for blob in ref.blobs:
                self.reg.push_blob(repo, blob)
            resp = self.reg.put_manifest(repo, ref.digest, ref)
            handled = resp.headers.get("oci-subject") == subject_digest
            if self.subject_header is None:
                self.subject_header = handled
            if not handled:
                need_fallback = True
        if self.referrers_api is None:
            self.referrers_api = self.reg.referrers(repo, subject_digest) is not None
        if need_fallback:
            self.update_fallback(
                repo, subject_digest, add=[referrer_descriptor(r) for r in referrers]
            )

    def update_fallback(
        self,
        repo: str,
        subject_digest: str,
        *,
        add: Iterable[dict[str, Any]] = (),
        remove: Iterable[str] = (),
    ) -> None:
        tag = fallback_tag(subject_digest)
        current = self.reg.get_manifest(repo, tag)
        entries = list(current.json.get("manifests") or []) if current else []
        drop = set(remove)
        new = [e for e in entries if e["digest"] not in drop]
        known = {e["digest"] for e in new}
        for d in add:
            if d["digest"] not in known:
                new.append(d)
                known.add(d["digest"])
        if current is not None and new == entries:
            return
        index = Manifest(
            OCI_INDEX, canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": new})
        )
        self.reg.put_manifest(repo, tag, index)

    def current_referrers(self, repo: str, subject_digest: str) -> list[dict[str, Any]]:
        found = self.reg.referrers(repo, subject_digest)
        if found is None:
            found = self.reg.fallback_referrers(repo, subject_digest)
        return found

    def remove_referrers(
        self, repo: str, subject_digest: str, artifact_type: str | None = None
    ) -> list[str]:
        removed = []
        for d in self.current_referrers(repo, subject_digest):
            if artifact_type and d.get("artifactType") != artifact_type:
                continue
            self.reg.delete_manifest(repo, d["digest"])
            removed.append(d["digest"])
        # keep the fallback index (if any) in step
        if self.reg.get_manifest(repo, fallback_tag(subject_digest)) is not None:
            self.update_fallback(repo, subject_digest, remove=removed)
        return removed

    @staticmethod
    def _ref_summary(ref: Manifest, subject: Manifest | dict[str, Any]) -> dict[str, Any]:
        return {
            "digest": ref.digest,
            "artifactType": artifact_type_of(ref),
            "subject": subject.digest if isinstance(subject, Manifest) else subject["digest"],
            "annotations": ref.json.get("annotations", {}),
        }

    # ---------------------------------------------------------------- the demo set

    def seed(self, namespace: str = "demo", tag: str = "v1") -> list[Pushed]:
        pushed: list[Pushed] = []

        def name(short: str) -> str:
            return f"{namespace}/{short}"

        def single(
            short: str, *, docker: bool = False, note: str = ""
        ) -> tuple[str, Manifest, Pushed]:
            repo = name(short)
            img = make_image(repo, "amd64", docker=docker)
            self.push_manifest_tree(repo, img, tag)
            p = Pushed(
                f"{repo}:{tag}",
                repo,
                tag,
                img.digest,
                img.media_type,
                {"linux/amd64": img.digest},
                note=note,
            )
            pushed.append(p)
            return repo, img, p

        # demo/streamable: single-arch with a streaming referrer
        repo, img, p = single("streamable", note="streaming referrer")
        ref = make_streaming_referrer(img)
        self.attach(repo, img, [ref])
        p.referrers.append(self._ref_summary(ref, img))

        # demo/plain: nothing attached
        single("plain", note="no referrer")

        # demo/multiarch: index amd64+arm64, streaming referrer on the amd64 manifest
        repo = name("multiarch")
        amd, arm = make_image(repo, "amd64"), make_image(repo, "arm64")
        idx = make_index([amd, arm])
        self.push_manifest_tree(repo, idx, tag)
        ref = make_streaming_referrer(amd, "amd64")
        self.attach(repo, amd, [ref])
        p = Pushed(
            f"{repo}:{tag}",
            repo,
            tag,
            idx.digest,
            OCI_INDEX,
            {"linux/amd64": amd.digest, "linux/arm64": arm.digest},
            [self._ref_summary(ref, amd)],
            "index; streaming referrer on the linux/amd64 manifest",
        )
        pushed.append(p)

        # demo/multiarch-index: index, streaming referrer on the index itself
        repo = name("multiarch-index")
        amd, arm = make_image(repo, "amd64"), make_image(repo, "arm64")
        idx = make_index([amd, arm])
        self.push_manifest_tree(repo, idx, tag)
        ref = make_streaming_referrer(idx, "amd64")
        self.attach(repo, idx, [ref])
        pushed.append(
            Pushed(
                f"{repo}:{tag}",
                repo,
                tag,
                idx.digest,
                OCI_INDEX,
                {"linux/amd64": amd.digest, "linux/arm64": arm.digest},
                [self._ref_summary(ref, idx)],
                "index; streaming referrer on the index",
            )
        )

        # demo/docker-v2: Docker schema 2 manifest with a streaming referrer
        repo, img, p = single(
            "docker-v2", docker=True, note="Docker v2 manifest; streaming referrer"
        )
        ref = make_streaming_referrer(img)
        self.attach(repo, img, [ref])
        p.referrers.append(self._ref_summary(ref, img))

        # demo/config-form: streaming type only as config.mediaType (no artifactType field)
        repo, img, p = single(
            "config-form", note="streaming referrer, type in config.mediaType only"
        )
        ref = make_streaming_referrer(img, config_form=True)
        self.attach(repo, img, [ref])
        p.referrers.append(self._ref_summary(ref, img))

        # demo/other-referrer: only an SBOM
        repo, img, p = single("other-referrer", note="SBOM referrer only")
        ref = make_sbom_referrer(img)
        self.attach(repo, img, [ref])
        p.referrers.append(self._ref_summary(ref, img))

        # demo/late: none yet (and none left over from an earlier add-referrer)
        repo, img, p = single("late", note="no referrer until add-referrer")
        self.remove_referrers(repo, img.digest)

        # demo/many-referrers: 30 SBOMs + 1 streaming
        repo, img, p = single("many-referrers", note="30 SBOM referrers + 1 streaming")
        refs = [make_sbom_referrer(img, n) for n in range(30)] + [make_streaming_referrer(img)]
        self.attach(repo, img, refs)
        p.referrers.extend(self._ref_summary(r, img) for r in refs)
        return pushed

    def add_referrer(
        self,
        ref: str,
        *,
        arch: str = "amd64",
        platform: str | None = None,
        config_form: bool = False,
    ) -> Pushed:
        repo, tag = split_ref(ref)
        top = self.reg.get_manifest(repo, tag)
        if top is None:
            raise RegistryError(f"{ref} not found")
        subject = top
        if platform:
            want_os, _, want_arch = platform.partition("/")
            for d in top.json.get("manifests") or []:
                plat = d.get("platform") or {}
                if plat.get("os") == want_os and plat.get("architecture") == want_arch:
                    child = self.reg.get_manifest(repo, d["digest"])
                    assert child is not None
                    subject = child
                    break
            else:
                raise RegistryError(f"{ref} has no {platform} manifest")
        referrer = make_streaming_referrer(subject, arch, config_form=config_form)
        self.attach(repo, subject, [referrer])
        return Pushed(
            ref,
            repo,
            tag,
            top.digest,
            top.media_type,
            {},
            [self._ref_summary(referrer, subject)],
            "added",
        )


def split_ref(ref: str) -> tuple[str, str]:
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        raise SystemExit(f"want <repo>:<tag>, got {ref!r}")
    return repo, tag


def short(digest: str) -> str:
    return digest[:19]


SHORT_TYPES = {
    OCI_MANIFEST: "oci-manifest",
    OCI_INDEX: "oci-index",
    DOCKER_MANIFEST: "docker-v2",
    DOCKER_LIST: "docker-list",
    STREAMING_TYPE: "streaming",
    SBOM_TYPE: "spdx",
}


def print_table(pushed: list[Pushed], out: Any) -> None:
    rows = [("IMAGE", "MEDIA TYPE", "DIGEST", "REFERRERS", "NOTE")]
    for p in pushed:
        kinds: dict[str, int] = {}
        for r in p.referrers:
            kinds[r["artifactType"]] = kinds.get(r["artifactType"], 0) + 1
        refs = ", ".join(f"{n} {SHORT_TYPES.get(t, t)}" for t, n in kinds.items()) or "-"
        rows.append(
            (p.ref, SHORT_TYPES.get(p.media_type, p.media_type), short(p.digest), refs, p.note)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", required=True, help="host:port")
    p.add_argument("--plain-http", action="store_true", help="HTTP instead of HTTPS")
    p.add_argument(
        "--ca-cert", default=os.environ.get("STREAMGATE_CA_CERT"), help="CA bundle for HTTPS"
    )
    p.add_argument("--insecure", action="store_true", help="don't verify TLS")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument(
        "--aad-token", help="AAD access token: do ACR's exchange (see docs/registries.md)"
    )
    p.add_argument("--tenant", help="tenant id sent with the exchange")
    p.add_argument(
        "--token-front", help="https://host:port serving /oauth2/exchange (default: from the realm)"
    )
    p.add_argument("--json", dest="json_out", help="write what was pushed as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no table")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("seed", help="push the demo images and referrers")
    s.add_argument("--namespace", default="demo")
    s.add_argument("--tag", default="v1")
    a = sub.add_parser("add-referrer", help="attach a streaming referrer to <repo>:<tag>")
    a.add_argument("ref")
    a.add_argument("--arch", default="amd64", help="streaming.platform.arch annotation")
    a.add_argument(
        "--platform", help="attach to this platform's manifest of an index, e.g. linux/amd64"
    )
    a.add_argument(
        "--config-form", action="store_true", help="type in config.mediaType, no artifactType"
    )
    r = sub.add_parser("remove-referrers", help="delete the referrers of <repo>:<tag>")
    r.add_argument("ref")
    r.add_argument("--artifact-type")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verify: bool | str = False if args.insecure else (args.ca_cert or True)
    reg = Registry(
        args.registry,
        plain_http=args.plain_http,
        verify=verify,
        user=args.user,
        password=args.password,
        aad_token=args.aad_token,
        tenant=args.tenant,
        token_front=args.token_front,
    )
    out = sys.stderr if args.quiet else sys.stdout
    seeder = Seeder(reg, out=out)
    started = time.monotonic()
    try:
        if args.command == "seed":
            pushed = seeder.seed(args.namespace, args.tag)
        elif args.command == "add-referrer":
            pushed = [
                seeder.add_referrer(
                    args.ref, arch=args.arch, platform=args.platform, config_form=args.config_form
                )
            ]
        else:
            repo, tag = split_ref(args.ref)
            top = reg.get_manifest(repo, tag)
            if top is None:
                raise RegistryError(f"{args.ref} not found")
            removed = seeder.remove_referrers(repo, top.digest, args.artifact_type)
            pushed = [
                Pushed(
                    args.ref,
                    repo,
                    tag,
                    top.digest,
                    top.media_type,
                    {},
                    [],
                    f"removed {len(removed)}",
                )
            ]
    except (RegistryError, httpx.HTTPError) as exc:
        print(f"seed_registry: {exc}", file=sys.stderr)
        return 1
    finally:
        reg.close()
    elapsed = time.monotonic() - started
    if not args.quiet:
        print_table(pushed, sys.stdout)
        api = {
            True: "referrers API",
            False: "no referrers API (fallback tag)",
            None: "referrers API not probed",
        }
        summary = f"{api[seeder.referrers_api]}; {reg.requests} requests, {elapsed:.1f}s"
        print(f"# {args.registry}: {summary}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                {
                    "registry": args.registry,
                    "referrers_api": seeder.referrers_api,
                    "oci_subject_header": seeder.subject_header,
                    "images": {p.ref: p.as_dict() for p in pushed},
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
