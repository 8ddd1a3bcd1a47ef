"""Self-managed serving certificates in a cluster: one Secret that every replica agrees on.

At start (and then periodically) each replica calls `ensure_certificates`, which

1. reads the Secret, or creates it (a new CA and serving pair) when it is missing; a replica
   that loses the create race (409) reads the winner's — so replicas agree on one pair;
2. renews what is close to expiry (`CertPolicy`: a CA of a year renewed 30 days early, serving
   certificates of 90 days renewed 30 days early) with an update that carries the
   resourceVersion it read; on a conflict it reads again and decides again;
3. patches the `caBundle` of every webhook in its webhook configurations when it differs;
4. writes the files the server loads (`CertReloader` in `app.certs.tls` picks up changed files).

Steps 3 and 4 run in that order so the apiserver trusts a new CA before any replica serves a
certificate signed by it. The published bundle keeps the previous CA while it is still valid,
so replicas that still serve the old pair stay trusted through a CA rotation.

The Secret (type kubernetes.io/tls):

    tls.crt, tls.key  serving pair for <svc>, <svc>.<ns>, <svc>.<ns>.svc and
                      <svc>.<ns>.svc.cluster.local
    ca.crt, ca.key    the current CA
    ca-bundle.crt     what the webhook configurations trust: the current CA, then older CAs
                      while they are still valid

It is owned by the ValidatingWebhookConfiguration (when found), so deleting that (helm
uninstall) garbage-collects it.

`plan` is the pure part (existing material + time -> material to keep or store); the rest is
I/O against the Kubernetes API with a `kubernetes.client.ApiClient`.

Exceptions: `CertificateError` (the Secret or the webhook configurations could not be read or
written after retries; the message names the object, the cause is chained).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from app.certs.pki import CA_VALIDITY, SERVING_VALIDITY, new_ca, new_serving, write_atomic
from app.certs.tls import CertFiles

logger = logging.getLogger(__name__)

SECRET_TYPE = "kubernetes.io/tls"
KEY_CERT, KEY_KEY, KEY_CA, KEY_CA_KEY, KEY_BUNDLE = (
    "tls.crt",
    "tls.key",
    "ca.crt",
    "ca.key",
    "ca-bundle.crt",
)
_CONFLICT_RETRIES = 5
_HTTP_NOT_FOUND, _HTTP_CONFLICT, _HTTP_INVALID = 404, 409, 422


class CertificateError(RuntimeError):
    """The certificate Secret or a webhook configuration could not be read or written."""


@dataclass(frozen=True, slots=True)
class CertPolicy:
    """Lifetimes and how early to renew. Renewal happens when less than `*_renew_before` is
    left; a renew_before longer than the validity renews on every check (tests use that)."""

    ca_validity: dt.timedelta = CA_VALIDITY
    ca_renew_before: dt.timedelta = dt.timedelta(days=30)
    serving_validity: dt.timedelta = SERVING_VALIDITY
    serving_renew_before: dt.timedelta = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Material:
    """The PEM contents of the Secret."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes
    ca_bundle: bytes

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> Material | None:
        """From a Secret's base64 `data`; None when a key is missing or not base64."""
        data = data or {}
        try:
            raw = {k: base64.b64decode(data[k], validate=True) for k in _ALL_KEYS}
        except (KeyError, ValueError):
            return None
        return cls(raw[KEY_CA], raw[KEY_CA_KEY], raw[KEY_CERT], raw[KEY_KEY], raw[KEY_BUNDLE])

    def secret_data(self) -> dict[str, str]:
        raw = {
            KEY_CA: self.ca_cert,
            KEY_CA_KEY: self.ca_key,
            KEY_CERT: self.cert,
            KEY_KEY: self.key,
            KEY_BUNDLE: self.ca_bundle,
        }
        return {k: base64.b64encode(v).decode("ascii") for k, v in raw.items()}

    @property
    def ca_bundle_b64(self) -> str:
        """The value for a webhook's `clientConfig.caBundle`."""
        return base64.b64encode(self.ca_bundle).decode("ascii")


_ALL_KEYS = (KEY_CA, KEY_CA_KEY, KEY_CERT, KEY_KEY, KEY_BUNDLE)


@dataclass(frozen=True, slots=True)
class Plan:
    material: Material
    reasons: tuple[str, ...] = ()  # empty: keep what is stored

    @property
    def changed(self) -> bool:
        return bool(self.reasons)


# ---- pure: certificates ----------------------------------------------------------------


def service_hosts(service: str, namespace: str) -> list[str]:
    """The names the apiserver may use for the Service (it uses <svc>.<ns>.svc)."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _load_pair(cert_pem: bytes, key_pem: bytes) -> x509.Certificate | None:
    """The certificate when it parses and `key_pem` is its private key; else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None
    pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert_pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert if pub == cert_pub else None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def dns_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName))


def _left(cert: x509.Certificate, now: dt.datetime) -> dt.timedelta:
    return cert.not_valid_after_utc - now


def split_pem(bundle: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []


def _bundle(
    current: x509.Certificate, older: Sequence[x509.Certificate], now: dt.datetime
) -> bytes:
    """The current CA first, then older CAs (no duplicates) that have not expired."""
    seen = {current.fingerprint(hashes.SHA256())}
    kept = [current]
    for ca in older:
        fp = ca.fingerprint(hashes.SHA256())
        if fp not in seen and ca.not_valid_after_utc > now:
            seen.add(fp)
            kept.append(ca)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)


def _ca_problem(current: Material | None, now: dt.datetime, policy: CertPolicy) -> str:
    """Why the stored CA can't stay, or "" when it can."""
    if current is None:
        return "no certificates yet"
    ca = _load_pair(current.ca_cert, current.ca_key)
    if ca is None or not _is_ca(ca):
        return "CA unreadable, not a CA, or not matching its key"
    if _left(ca, now) <= policy.ca_renew_before:
        return f"CA expires {ca.not_valid_after_utc:%Y-%m-%d}"
    return ""


def _serving_problem(
    current: Material,
    ca: x509.Certificate,
    hosts: Sequence[str],
    now: dt.datetime,
    policy: CertPolicy,
) -> str:
    """Why the stored serving pair can't stay, or "" when it can."""
    serving = _load_pair(current.cert, current.key)
    if serving is None:
        return "serving certificate unreadable or not matching its key"
    if not _signed_by(serving, ca):
        return "serving certificate not signed by the CA"
    if dns_names(serving) != set(hosts):
        return "serving certificate names differ from " + ", ".join(hosts)
    if _left(serving, now) <= policy.serving_renew_before:
        return f"serving certificate expires {serving.not_valid_after_utc:%Y-%m-%d}"
    return ""


def plan(
    current: Material | None,
    *,
    hosts: Sequence[str],
    now: dt.datetime,
    policy: CertPolicy = CertPolicy(),
    ca_name: str = "streamgate-ca",
) -> Plan:
    """Decide what the Secret should hold at `now`: the stored material when it is sound and
    not due for renewal (no reasons), else new material and why. A new CA brings a new serving
    pair; the CAs it replaces stay in the bundle until they expire."""
    why = _ca_problem(current, now, policy)
    if why:
        ca_pem, ca_key_pem = new_ca(now, validity=policy.ca_validity, common_name=ca_name)
        cert_pem, key_pem = new_serving(
            ca_pem, ca_key_pem, hosts, now, validity=policy.serving_validity
        )
        older = [*split_pem(current.ca_cert), *split_pem(current.ca_bundle)] if current else []
    else:
        assert current is not None  # _ca_problem says so
        ca_pem, ca_key_pem = current.ca_cert, current.ca_key
        cert_pem, key_pem = current.cert, current.key
        older = split_pem(current.ca_bundle)
        why = _serving_problem(current, x509.load_pem_x509_certificate(ca_pem), hosts, now, policy)
        if why:
            cert_pem, key_pem = new_serving(
                ca_pem, ca_key_pem, hosts, now, validity=policy.serving_validity
            )
    bundle = _bundle(x509.load_pem_x509_certificate(ca_pem), older, now)
    if not why and current is not None and bundle != current.ca_bundle:
        why = "CA bundle out of date"
    return Plan(Material(ca_pem, ca_key_pem, cert_pem, key_pem, bundle), (why,) if why else ())


# ---- I/O: the Secret, the webhook configurations, the files ---------------------------


def _status(err: ApiException) -> int:
    return int(err.status or 0)


@dataclass(frozen=True, slots=True)
class _Config:
    kind: str  # "validating" | "mutating"
    name: str
    uid: str
    ca_bundles: tuple[str, ...]  # per webhook, in order
    webhook_names: tuple[str, ...]


def _read_configs(adm: Any, names: Sequence[str]) -> list[_Config]:
    found: list[_Config] = []
    readers = (
        ("validating", adm.read_validating_webhook_configuration),
        ("mutating", adm.read_mutating_webhook_configuration),
    )
    for name in names:
        for kind, read in readers:
            try:
                obj = read(name)
            except ApiException as err:
                if _status(err) == _HTTP_NOT_FOUND:
                    logger.debug("%s webhook configuration %s: %s", kind, name, err.reason)
                    continue
                raise CertificateError(f"reading {kind} webhook configuration {name}") from err
            hooks = obj.webhooks or []
            found.append(
                _Config(
                    kind,
                    name,
                    obj.metadata.uid,
                    tuple((h.client_config.ca_bundle or "") for h in hooks),
                    tuple(h.name for h in hooks),
                )
            )
    return found


def _owner(configs: Sequence[_Config]) -> list[dict[str, Any]]:
    """The validating configuration, or the mutating one where there is none (one-call mode,
    chart `webhook.calls: one`): deleting it deletes the Secret."""
    for kind in ("validating", "mutating"):
        for c in configs:
            if c.kind == kind:
                return [
                    {
                        "apiVersion": "admissionregistration.k8s.io/v1",
                        "kind": f"{kind.capitalize()}WebhookConfiguration",
                        "name": c.name,
                        "uid": c.uid,
                    }
                ]
    return []


def _sync_secret(
    core: Any,
    *,
    namespace: str,
    name: str,
    hosts: Sequence[str],
    now: dt.datetime,
    policy: CertPolicy,
    owners: list[dict[str, Any]],
) -> Material:
    """Read, create or renew the Secret; returns what it holds afterwards."""
    last: ApiException | None = None
    for _ in range(_CONFLICT_RETRIES):
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if _status(err) != _HTTP_NOT_FOUND:
                raise CertificateError(f"reading Secret {namespace}/{name}") from err
            secret = None
        if secret is None:
            p = plan(None, hosts=hosts, now=now, policy=policy)
            body = {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "streamgate"},
                    "ownerReferences": owners,
                },
                "type": SECRET_TYPE,
                "data": p.material.secret_data(),
            }
            try:
                core.create_namespaced_secret(namespace, body)
            except ApiException as err:
                if _status(err) == _HTTP_CONFLICT:  # another replica created it first
                    logger.info("Secret %s/%s created by another replica", namespace, name)
                    last = err
                    continue
                raise CertificateError(f"creating Secret {namespace}/{name}") from err
            logger.info("created Secret %s/%s with a new CA and serving pair", namespace, name)
            return p.material

        current = Material.from_secret_data(secret.data)
        p = plan(current, hosts=hosts, now=now, policy=policy)
        if not p.changed:
            return p.material
        secret.data = p.material.secret_data()
        secret.type = secret.type or SECRET_TYPE
        if owners and not secret.metadata.owner_references:
            secret.metadata.owner_references = [client.V1OwnerReference(**o) for o in owners]
        try:
            core.replace_namespaced_secret(name, namespace, secret)  # carries resourceVersion
        except ApiException as err:
            if _status(err) == _HTTP_CONFLICT:  # changed since we read it: decide again
                last = err
                continue
            raise CertificateError(f"updating Secret {namespace}/{name}") from err
        logger.info("renewed Secret %s/%s: %s", namespace, name, "; ".join(p.reasons))
        return p.material
    raise CertificateError(
        f"Secret {namespace}/{name}: still conflicting after {_CONFLICT_RETRIES} tries"
    ) from last


def _patch_ca_bundles(adm: Any, configs: Sequence[_Config], ca_bundle: str) -> int:
    """Set `caBundle` on every webhook of each configuration where it differs; returns how
    many configurations were patched. Each replace is guarded by a test of the webhook's name,
    so a configuration changed meanwhile is not patched at the wrong index."""
    patched = 0
    for c in configs:
        ops: list[dict[str, Any]] = []
        for i, (have, hook) in enumerate(zip(c.ca_bundles, c.webhook_names, strict=True)):
            if have != ca_bundle:
                ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook})
                ops.append(
                    {
                        "op": "add",
                        "path": f"/webhooks/{i}/clientConfig/caBundle",
                        "value": ca_bundle,
                    }
                )
        if not ops:
            continue
        patch = (
            adm.patch_validating_webhook_configuration
            if c.kind == "validating"
            else adm.patch_mutating_webhook_configuration
        )
        try:
            patch(c.name, ops, _content_type="application/json-patch+json")
        except ApiException as err:
            raise CertificateError(f"patching caBundle of {c.kind} webhook {c.name}") from err
        logger.info("patched caBundle of %s webhook configuration %s", c.kind, c.name)
        patched += 1
    return patched


def _write_if_changed(path: Path, data: bytes, *, mode: int = 0o644) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, data, mode=mode)
    return True


def write_files(material: Material, out_dir: Path) -> CertFiles:
    """Write ca.crt (the bundle), tls.key, then tls.crt — each only when it changed, the key
    before its certificate (the reloader retries a mismatched pair on its next tick)."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = CertFiles(out_dir / "ca.crt", out_dir / "tls.crt", out_dir / "tls.key")
    _write_if_changed(files.ca, material.ca_bundle)
    _write_if_changed(files.key, material.key, mode=0o600)
    _write_if_changed(files.cert, material.cert)
    return files


def ensure_certificates(
    api: Any,
    *,
    namespace: str,
    secret_name: str,
    service_name: str,
    webhook_names: Sequence[str],
    out_dir: Path,
    now: dt.datetime | None = None,
    policy: CertPolicy = CertPolicy(),
) -> CertFiles:
    """Create or reuse the certificate Secret, renew what is due, publish the CA bundle in the
    webhook configurations named `webhook_names` (validating and mutating ones of each name;
    missing ones are skipped) and write the serving files to `out_dir`. Blocking: call it
    from a thread in async code. Raises `CertificateError`."""
    now = now or dt.datetime.now(dt.UTC)
    core = client.CoreV1Api(api)
    adm = client.AdmissionregistrationV1Api(api)
    configs = _read_configs(adm, webhook_names)
    if not configs:
        logger.warning("no webhook configuration named %s: caBundle not published", webhook_names)
    material = _sync_secret(
        core,
        namespace=namespace,
        name=secret_name,
        hosts=service_hosts(service_name, namespace),
        now=now,
        policy=policy,
        owners=_owner(configs),
    )
    try:
        _patch_ca_bundles(adm, configs, material.ca_bundle_b64)
    except CertificateError as err:
        # Changed under us (a test op failed): read again and retry once.
        if not isinstance(err.__cause__, ApiException) or _status(err.__cause__) not in (
            _HTTP_CONFLICT,
            _HTTP_INVALID,
        ):
            raise
        _patch_ca_bundles(adm, _read_configs(adm, webhook_names), material.ca_bundle_b64)
    return write_files(material, out_dir)


# ---- keeping them fresh -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManagedCertSettings:
    """`streamgate serve --manage-certs`: where the pair lives and who must trust it."""

    namespace: str
    secret_name: str
    service_name: str
    webhook_names: tuple[str, ...]
    out_dir: Path = Path("/tmp/certs")
    check_interval: float = 3600.0
    policy: CertPolicy = field(default_factory=CertPolicy)


class CertificateKeeper:
    """Re-runs `ensure` every `interval` seconds off the event loop; after a failure it tries
    again after `retry` seconds. The files it writes are reloaded by `CertReloader`."""

    def __init__(
        self, ensure: Callable[[], CertFiles], *, interval: float = 3600.0, retry: float = 60.0
    ) -> None:
        self.ensure = ensure
        self.interval = interval
        self.retry = retry
        self.checks = 0
        self.failures = 0

    def check(self) -> bool:
        self.checks += 1
        try:
            self.ensure()
        except Exception:
            self.failures += 1
            logger.exception("certificate check failed; keeping the current pair")
            return False
        return True

    async def run(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            ok = await asyncio.to_thread(self.check)
            delay = self.interval if ok else min(self.retry, self.interval)


def manage_certificates(
    api: Any, settings: ManagedCertSettings, *, startup_timeout: float = 60.0
) -> tuple[CertFiles, CertificateKeeper]:
    """Start-up: ensure the certificates (retrying while the API is unreachable, up to
    `startup_timeout` seconds, then raising `CertificateError`) and return the files for the
    server plus a keeper whose `run()` the server schedules next to the cert reloader."""

    def ensure() -> CertFiles:
        return ensure_certificates(
            api,
            namespace=settings.namespace,
            secret_name=settings.secret_name,
            service_name=settings.service_name,
            webhook_names=settings.webhook_names,
            out_dir=settings.out_dir,
            policy=settings.policy,
        )

    deadline = time.monotonic() + startup_timeout
    delay = 1.0
    while True:
        try:
            files = ensure()
            break
        except CertificateError as err:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("certificates not ready (%s: %s); retrying", err, err.__cause__)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    return files, CertificateKeeper(ensure, interval=settings.check_interval)
