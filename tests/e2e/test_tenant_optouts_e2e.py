"""Issue 18 finding 5 and issue 14 item 6, through the real kube-apiserver: what a tenant who
can create Pods (and label its namespace) could do to step out of `enforce`, each tried with
kubectl against a webhook running the default settings for these knobs (the chart's webhook
configurations rendered with default values; the demo's registry policy plus an admin's
`namespaceModes` entry).

Before the fix each of these was admitted: the chart's matchConditions skipped any object
annotated streamgate.io/exempt (whatever its value), its namespaceSelector skipped namespaces
labelled streamgate.io/mode=off, the label beat the admin's namespaceModes, and any Pod that
claimed a ReplicaSet owner had its denial turned into a warning.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REGISTRY, ROOT, RUN_LABEL, Kubectl, LocalWebhook, local_webhook

pytestmark = pytest.mark.e2e

PLAIN = f"{REGISTRY}/demo/plain:v1"
CONTROLLER = "system:serviceaccount:kube-system:replicaset-controller"


class Tenant:
    def __init__(self, hook: LocalWebhook, suffix: str) -> None:
        self.hook = hook
        self.admin_enforced = f"sg-adm-{suffix}"  # namespaceModes: enforce; labelled off
        self.enforced = f"sg-enf-{suffix}"  # labelled enforce
        self.plain = f"sg-plain-{suffix}"  # no mode label: the policy's warn


@pytest.fixture(scope="module")
def tenant(
    cluster: Path, seeded_registry: str, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tenant]:
    suffix = uuid.uuid4().hex[:5]
    names = {
        f"sg-adm-{suffix}": "off",
        f"sg-enf-{suffix}": "enforce",
        f"sg-plain-{suffix}": None,
    }
    for ns, mode in names.items():
        kubectl("create", "namespace", ns)
        labels = [f"{RUN_LABEL}={suffix}"] + ([f"streamgate.io/mode={mode}"] if mode else [])
        kubectl("label", "namespace", ns, *labels)
    policy = (ROOT / "examples" / "policy.yaml").read_text() + (
        f"namespaceModes:\n  sg-adm-{suffix}: enforce\n"
    )
    try:
        with local_webhook(
            kubectl,
            tmp_path_factory.mktemp("optouts"),
            suffix,
            policy=policy,
            probe_namespace=f"sg-plain-{suffix}",
        ) as hook:
            yield Tenant(hook, suffix)
    finally:
        for ns in names:
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


def pod(ns: str, *, annotations: dict[str, str] | None = None, owner: bool = False) -> str:
    meta: dict[str, object] = {"name": f"p-{uuid.uuid4().hex[:6]}", "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-5d9c",
                "uid": str(uuid.uuid4()),
                "controller": True,
            }
        ]
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": PLAIN}]},
        }
    )


def dry_run(kubectl: Kubectl, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return kubectl("create", "--dry-run=server", *extra, "-f", "-", stdin=manifest, check=False)


def test_the_exempt_annotation_does_not_lift_enforce(tenant: Tenant, kubectl: Kubectl) -> None:
    out = dry_run(kubectl, pod(tenant.enforced, annotations={"streamgate.io/exempt": "true"}))
    assert out.returncode != 0, out.stdout
    assert 'admission webhook "validate.streamgate.io" denied the request' in out.stderr
    assert "has no streaming artifact" in out.stderr
    assert (
        "Warning: streamgate.io/exempt ignored in enforce mode here; an admin can allow it "
        "(policy exemptions.annotation)"
    ) in out.stderr


@pytest.mark.parametrize("value", ["false", "no", "0", ""])
def test_a_false_exempt_value_is_no_exemption(tenant: Tenant, kubectl: Kubectl, value: str) -> None:
    """Issue 14 item 6: `streamgate.io/exempt: "false"` exempted the workload (warn mode:
    the warning must still be printed)."""
    out = dry_run(kubectl, pod(tenant.plain, annotations={"streamgate.io/exempt": value}))
    assert out.returncode == 0, out.stderr
    assert "has no streaming artifact" in out.stderr


def test_a_reason_exempts_in_warn_mode(tenant: Tenant, kubectl: Kubectl) -> None:
    out = dry_run(kubectl, pod(tenant.plain, annotations={"streamgate.io/exempt": "OPS-12"}))
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr


def test_the_mode_label_cannot_switch_the_admins_enforce_off(
    tenant: Tenant, kubectl: Kubectl
) -> None:
    out = dry_run(kubectl, pod(tenant.admin_enforced))
    assert out.returncode != 0, out.stdout
    assert "has no streaming artifact" in out.stderr
    assert (
        "Warning: namespace label streamgate.io/mode=off ignored: labels may only be stricter "
        "than enforce (policy namespaceLabel)"
    ) in out.stderr


def test_a_claimed_owner_softens_only_the_controllers_request(
    tenant: Tenant, kubectl: Kubectl
) -> None:
    mine = dry_run(kubectl, pod(tenant.enforced, owner=True))
    assert mine.returncode != 0, mine.stdout
    assert "denied the request" in mine.stderr
    # The same Pod created as the ReplicaSet controller (impersonated: the admin may) is what
    # a rollout does: warned, not denied, so a controller is never stuck half-way.
    theirs = dry_run(kubectl, pod(tenant.enforced, owner=True), f"--as={CONTROLLER}")
    assert theirs.returncode == 0, theirs.stderr
    assert "has no streaming artifact" in theirs.stderr
