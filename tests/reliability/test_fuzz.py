"""Fuzzing the real server: generated and mutated AdmissionReviews, and raw bytes.

`streamgate serve` runs as its own process (the CLI, with the live node inventory of the local
control plane and the olareg registry standing in for ACR); hypothesis posts to /validate and
/mutate. Every answer must pass `check_answer`: HTTP 200 with a well-formed review echoing the
uid (warnings at most 256 characters, a patch that applies), or 400/413 with a reason; never
a 500, never an onError "internal error" answer, never longer than the registry deadline plus
a margin. The process's memory must stay bounded.

Counts: 2,000 cases under `make test`, 24,000 under `make reliability`.
"""

from __future__ import annotations

import json
import socket
import string
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.harness import (
    Answer,
    Row,
    ServerProcess,
    Violation,
    check_answer,
    scale,
)
from tests.support.faultproxy import UNRESOLVABLE

pytestmark = [pytest.mark.e2e, pytest.mark.registry]

REG = "127.0.0.1:25000"
REVIEWS = Path(__file__).parents[1] / "reviews"
DEADLINE = 2.0  # the policy's registry deadline (the default)
SLOWEST_ALLOWED = DEADLINE + 1.5
MIB = 1024 * 1024

CASES = {
    "generated": scale(900, 10_000),
    "mutated": scale(800, 10_000),
    "raw": scale(300, 4_000),
}

POLICY = {
    "mode": "warn",
    "onError": "deny",
    "acrRegistries": [REG, UNRESOLVABLE],
    "namespaceModes": {"strict": "enforce", "quiet": "audit", "gone": "off"},
    "exemptions": {"namespaces": ["kube-system"], "images": ["*/exempt/*"]},
    "steering": {"enabled": True},
    "registry": {"registries": {REG: {"insecure": True}}},
}


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.slowest = 0.0
        self.cases = 0

    def add(self, answer: Answer) -> None:
        self.cases += 1
        self.statuses[answer.status] += 1
        seconds = answer.seconds
        if answer.status == 200:
            response = answer.body["response"]
            if not answer.allowed:
                self.outcomes["denied"] += 1
            elif answer.warnings:
                self.outcomes["warned"] += 1
            elif "patch" in response:
                self.outcomes["patched"] += 1
        self.slowest = max(self.slowest, seconds)

    def summary(self) -> str:
        codes = ", ".join(f"{n} x {code}" for code, n in sorted(self.statuses.items()))
        judged = ", ".join(f"{n} {what}" for what, n in sorted(self.outcomes.items()))
        return f"{codes} ({judged}); slowest {self.slowest * 1000:.0f} ms"


@pytest.fixture(scope="module")
def target(
    cluster: Path, seeded_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("fuzz"), POLICY, kubeconfig=cluster, log_level="warning"
    ).start()
    proc.wait_ready()
    yield proc
    proc.stop()


class Memory:
    """RSS samples of the server over the module's fuzz cases."""

    def __init__(self, target: ServerProcess) -> None:
        self.samples: list[tuple[int, int]] = [(0, target.rss_kb())]
        self.cases = 0

    def sample(self, target: ServerProcess) -> None:
        self.samples.append((self.cases, target.rss_kb()))

    @property
    def start_kb(self) -> int:
        return self.samples[0][1]

    @property
    def peak_kb(self) -> int:
        return max(kb for _, kb in self.samples)

    @property
    def end_kb(self) -> int:
        return self.samples[-1][1]

    def at_fraction(self, fraction: float) -> int:
        return next(kb for n, kb in self.samples if n >= self.cases * fraction)


@pytest.fixture(scope="module")
def memory(target: ServerProcess) -> Memory:
    return Memory(target)


# ---- strategies -------------------------------------------------------------------------------


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in `n` draws (hypothesis favours the ends of a range, so the rare
    case is a value in the middle)."""
    return draw(st.integers(0, n - 1)) == n // 2


texts = st.text(max_size=40)
odd_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
    st.sampled_from(["", " ", "\x00", "\u202e", "😀" * 30, "a" * 5000, "../../etc", "%00", "∞"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=5)),
    max_leaves=25,
)

repos = st.sampled_from(
    ["demo/plain", "demo/streamable", "demo/multiarch", "demo/late", "demo/other-referrer"]
    + [f"fuzz/r{n}" for n in range(20)]
)
tags = st.sampled_from(["v1", "v2", "latest", "1.0", "x" * 128])
digests = st.sampled_from(["sha256:" + c * 64 for c in "0af"] + ["sha256:short", "md5:abc"])


@st.composite
def images(draw: st.DrawFn) -> Any:
    choice = draw(st.integers(0, 9))
    if choice <= 3:
        ref = f"{REG}/{draw(repos)}"
        return ref + (f":{draw(tags)}" if draw(st.booleans()) else f"@{draw(digests)}")
    if choice == 4:
        host = draw(st.sampled_from(["docker.io", "mcr.microsoft.com", "ghcr.io", UNRESOLVABLE]))
        return f"{host}/{draw(repos)}:{draw(tags)}"
    if choice == 5:
        return draw(
            st.sampled_from(["nginx", "busybox:1.36", "library/redis@" + "sha256:" + "1" * 64])
        )
    if choice == 6:
        return f"{REG}/exempt/{draw(repos)}:{draw(tags)}"
    if choice == 7:
        return draw(odd_text)
    if choice == 8:
        return draw(st.text(alphabet=string.printable, max_size=300))
    return draw(json_values)


@st.composite
def containers(draw: st.DrawFn, max_size: int = 4) -> list[Any]:
    items = draw(
        st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.text(max_size=20), scalars), "image": images()},
                    optional={
                        "imagePullPolicy": st.sampled_from(["Always", "IfNotPresent", 3]),
                        "ports": json_values,
                    },
                ),
                json_values,
            ),
            max_size=max_size,
        )
    )
    if one_in(draw, 30):  # now and then a huge list
        items = items * draw(st.integers(100, 3000)) if items else items
    return items


AKS = "kubernetes.azure.com/agentpool"
POOLS = ["streamub", "streamazl", "arm", "win", "gen1", "sandbox", "tainted", "nope"]


@st.composite
def pod_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": draw(containers())}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "initContainers": containers(2),
        "ephemeralContainers": containers(2),
        "nodeSelector": st.one_of(
            st.dictionaries(
                st.sampled_from([AKS, "kubernetes.io/arch", "x"]),
                st.sampled_from([*POOLS, "amd64", "arm64"]),
                max_size=2,
            ),
            json_values,
        ),
        "affinity": st.one_of(node_affinity(), json_values),
        "tolerations": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"operator": st.sampled_from(["Exists", "Equal", "Bogus"])},
                    optional={
                        "key": st.sampled_from(["dedicated", "", "x"]),
                        "effect": st.sampled_from(["NoSchedule", "NoExecute", ""]),
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "runtimeClassName": st.one_of(st.sampled_from(["kata-vm-isolation", "runc", ""]), scalars),
        "nodeName": st.one_of(
            st.sampled_from(["aks-streamub-12345678-vmss000000", "nowhere"]), scalars
        ),
        "imagePullSecrets": st.one_of(
            st.lists(st.fixed_dictionaries({"name": texts}), max_size=2), json_values
        ),
    }
    for key, strategy in optional.items():
        if one_in(draw, 4):
            spec[key] = draw(strategy)
    return spec


@st.composite
def node_affinity(draw: st.DrawFn) -> dict[str, Any]:
    expression = draw(
        st.fixed_dictionaries(
            {
                "key": st.sampled_from([AKS, "kubernetes.io/arch", "kubernetes.io/os", "", "x"]),
                "operator": st.sampled_from(
                    ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Nope"]
                ),
                "values": st.one_of(
                    st.lists(st.sampled_from([*POOLS, "1", "amd64", "linux"]), max_size=3),
                    json_values,
                ),
            }
        )
    )
    terms = draw(
        st.lists(st.fixed_dictionaries({"matchExpressions": st.just([expression])}), max_size=2)
    )
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }


KINDS = [
    ("", "Pod"),
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "ReplicaSet"),
    ("", "ReplicationController"),
    ("batch", "Job"),
    ("batch", "CronJob"),
]


def wrap(kind: str, spec: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """`spec` placed where the kind keeps its pod spec."""
    template = {"metadata": {"labels": {"a": "b"}}, "spec": spec}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "CronJob":
        body = {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    else:
        body = {"template": template}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": body}


metadata = st.fixed_dictionaries(
    {"name": st.one_of(texts, scalars)},
    optional={
        "namespace": texts,
        "annotations": st.one_of(
            st.dictionaries(
                st.sampled_from(["streamgate.io/exempt", "a", "streamgate.io/x"]),
                st.one_of(texts, scalars),
                max_size=2,
            ),
            json_values,
        ),
        "labels": json_values,
        "ownerReferences": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "kind": st.sampled_from(["ReplicaSet", "Job", "X"]),
                        "controller": st.booleans(),
                    }
                ),
                max_size=2,
            ),
            json_values,
        ),
    },
)


@st.composite
def generated_reviews(draw: st.DrawFn) -> dict[str, Any]:
    # Mostly what an apiserver sends (judged kinds, CREATE/UPDATE, no subresource), so most
    # cases reach the evaluation; the rest anything.
    plausible = not one_in(draw, 4)
    group, kind = draw(st.sampled_from(KINDS) if plausible else st.tuples(texts, texts))
    if one_in(draw, 10):  # the group of another kind
        group = draw(st.sampled_from(["", "apps", "batch", "x.io"]))
    obj = wrap(kind, draw(pod_specs()), draw(metadata))
    operations = ["CREATE", "UPDATE"] if plausible else ["DELETE", "CONNECT", "", "create"]
    operation = draw(st.sampled_from(operations))
    request: dict[str, Any] = {
        "uid": draw(st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=60))),
        "kind": {"group": group, "version": "v1", "kind": kind},
        "operation": operation,
        "namespace": draw(
            st.sampled_from(["default", "strict", "quiet", "gone", "kube-system", ""]) | texts
        ),
        "name": draw(texts),
        "object": draw(json_values) if one_in(draw, 30) else obj,
        "subResource": draw(
            st.sampled_from(["", "", "", "", "", "status", "ephemeralcontainers", "scale"])
        ),
        "dryRun": draw(st.booleans()),
        "userInfo": {"username": draw(texts)},
    }
    if operation == "UPDATE" and draw(st.booleans()):
        request["oldObject"] = (
            json.loads(json.dumps(obj))
            if draw(st.booleans())
            else wrap(kind, draw(pod_specs()), {})
        )
    return {
        "apiVersion": draw(
            st.sampled_from(
                ["admission.k8s.io/v1"] * 16 + ["admission.k8s.io/v1beta1"] * 3 + ["v1", ""]
            )
        ),
        "kind": "AdmissionReview",
        "request": request,
    }


def _samples() -> list[dict[str, Any]]:
    out = []
    for path in sorted(REVIEWS.glob("*.json")):
        text = path.read_text().replace("streamgatedemo.azurecr.io/", f"{REG}/demo/")
        out.append(json.loads(text))
    return out


SAMPLES = _samples()


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*here, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*here, index))
    return found


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def _deep(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = {"x": leaf}
    return leaf


@st.composite
def mutated_reviews(draw: st.DrawFn) -> dict[str, Any]:
    doc = json.loads(json.dumps(draw(st.sampled_from(SAMPLES))))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _get(doc, path[:-1]), path[-1]
        how = draw(st.integers(0, 8))
        if how == 0 and isinstance(parent, dict):
            del parent[key]
        elif how == 1:
            parent[key] = draw(json_values)
        elif how == 2:
            parent[key] = [parent[key]]
        elif how == 3:
            parent[key] = draw(
                st.sampled_from(["", "a" * 100_000, "\ud7ff\ue000\U0010ffff", "null"])
            )
        elif how == 4:
            parent[key] = _deep(draw(st.integers(10, 400)), parent[key])
        elif how == 5 and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] * draw(st.integers(2, 2000))
        elif how == 6 and isinstance(parent, dict):
            parent[draw(odd_text)] = draw(json_values)
        elif how == 7:
            parent[key] = draw(images())
        else:
            parent[key] = draw(st.sampled_from([None, 0, -1, 1e308, True, {}, []]))
    return doc


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    sample = json.dumps(draw(st.sampled_from(SAMPLES))).encode()
    how = draw(st.integers(0, 9))
    if how == 0:
        return draw(st.binary(max_size=2000))
    if how == 1:
        return sample[: draw(st.integers(0, len(sample)))]
    if how == 2:
        return draw(
            st.sampled_from([b"[]", b"null", b"42", b'"x"', b"{}", b"true", b"\xef\xbb\xbf{}"])
        )
    if how == 3:
        depth = draw(st.integers(100, 200_000))
        return b"[" * depth + b"]" * depth
    if how == 4:
        return sample.replace(b'"uid"', b'"uid": 1, "uid"', 1)  # duplicate keys
    if how == 5:
        return sample.replace(b"false", b"NaN").replace(b"30", b"1e400")
    if how == 6:
        at = draw(st.integers(0, len(sample) - 1))
        return sample[:at] + draw(st.binary(min_size=1, max_size=8)) + sample[at + 1 :]
    if how == 7:
        return sample.replace(b'"AdmissionReview"', b'"admissionreview"')
    if how == 8:
        return (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":'
            + _deep_bytes(draw(st.integers(1, 5000)))
            + b"}"
        )
    return sample.decode().encode("utf-16")


def _deep_bytes(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# ---- the tests ----------------------------------------------------------------------------------


def _post(
    target: ServerProcess, client: httpx.Client, endpoint: str, body: bytes, tally: Tally
) -> None:
    started = time.monotonic()
    try:
        response = client.post(
            f"/{endpoint}", content=body, headers={"Content-Type": "application/json"}
        )
    except httpx.TimeoutException as err:
        raise Violation(
            f"no answer within {client.timeout.read}s (a hang): {body[:300]!r}"
        ) from err
    seconds = time.monotonic() - started
    try:
        answer = check_answer(body, endpoint, response, seconds)
    except Violation as err:
        raise Violation(f"{err}\nsent: {body[:600]!r}") from None
    if seconds > SLOWEST_ALLOWED:
        raise Violation(f"answered in {seconds:.2f}s, over {SLOWEST_ALLOWED}s: {body[:300]!r}")
    tally.add(answer)


FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


def _fuzz(
    target: ServerProcess,
    memory: Memory,
    record: Row,
    family: str,
    strategy: st.SearchStrategy[Any],
) -> None:
    tally = Tally()
    client = target.new_client(timeout=httpx.Timeout(10.0))

    @settings(FUZZ, max_examples=CASES[family])
    @given(body=strategy, endpoint=st.sampled_from(["validate", "mutate", "admit"]))
    def run(body: Any, endpoint: str) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        _post(target, client, endpoint, raw, tally)
        memory.cases += 1
        if memory.cases % 200 == 0:
            memory.sample(target)

    record.area = "fuzz"
    try:
        run()
    finally:
        client.close()
        memory.sample(target)
        record.cases = tally.cases
        record.observed = tally.summary()
    assert tally.cases >= CASES[family] * 0.95


def test_generated_reviews(target: ServerProcess, memory: Memory, record: Row) -> None:
    record.tried = (
        "generated AdmissionReviews: judged and random kinds, groups, operations, subresources; "
        "pod specs with odd images (unicode, 5000 characters, not strings), container lists up "
        "to 12,000, random affinities, tolerations, selectors, runtime classes; UPDATEs"
    )
    _fuzz(target, memory, record, "generated", generated_reviews())


def test_mutated_reviews(target: ServerProcess, memory: Memory, record: Row) -> None:
    record.tried = (
        "mutated real reviews (tests/reviews): fields deleted, retyped, wrapped in lists; "
        "100k-character strings, nesting 10-400 deep, arrays repeated 2-2000 times, unicode keys"
    )
    _fuzz(target, memory, record, "mutated", mutated_reviews())


def test_raw_bodies(target: ServerProcess, memory: Memory, record: Row) -> None:
    record.tried = (
        "raw bodies: random bytes, truncated JSON, non-objects, arrays 200k deep, duplicate "
        "keys, NaN and 1e400, byte flips, UTF-16, a request nested 5000 deep"
    )
    _fuzz(target, memory, record, "raw", raw_bodies())


def test_body_limit_is_a_clear_413(target: ServerProcess, record: Row) -> None:
    """Over 7 MiB: refused with 413 and a reason, whether the length is declared or streamed."""
    record.area = "fuzz"
    record.tried = (
        "bodies over the 7 MiB limit: declared (8 MiB, 64 MiB never sent), chunked without a "
        "length (8 MiB); a Content-Length shorter than the body"
    )
    big = (
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"x":"'
        + b"a" * (8 * MIB)
        + b'"}}'
    )
    client = target.new_client(timeout=httpx.Timeout(30.0))
    seen = []
    try:
        declared = client.post("/validate", content=big)
        seen.append(declared.status_code)
        assert declared.status_code == 413 and "body larger than" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), MIB):
                yield big[i : i + MIB]

        streamed = client.post("/mutate", content=chunks())
        seen.append(streamed.status_code)
        assert streamed.status_code == 413 and "body larger than" in streamed.json()["error"]
    finally:
        client.close()
    # A declared 64 MiB that never comes: answered at once from the header.
    status = _raw_request(
        target, b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n"
    )
    seen.append(status)
    assert status == 413
    # A length that says less than what follows: the server reads what was declared.
    body = b'{"kind": "AdmissionReview"}'
    status = _raw_request(
        target, b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + body
    )
    seen.append(status)
    assert status == 400
    record.cases = len(seen)
    record.observed = ", ".join(map(str, seen))


def _raw_request(target: ServerProcess, data: bytes) -> int:
    with (
        socket.create_connection(("127.0.0.1", target.port), timeout=10) as raw,
        target.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(data)
        reply = tls.recv(4096)
    return int(reply.split(b" ", 2)[1])


def test_memory_stays_bounded(target: ServerProcess, memory: Memory, record: Row) -> None:
    """After all the fuzzing above (this test runs last in the module): the RSS stays under
    the chart's 256 MiB limit and stops growing once warm."""
    record.area = "fuzz"
    record.tried = "server RSS over the whole fuzz run (sampled every 200 cases)"
    memory.sample(target)
    start, peak, end = memory.start_kb // 1024, memory.peak_kb // 1024, memory.end_kb // 1024
    warm = memory.at_fraction(0.25) // 1024
    record.cases = memory.cases
    record.observed = (
        f"RSS {start} MiB before, {warm} MiB after a quarter, peak {peak} MiB, {end} MiB at "
        f"the end (chart limit 256 MiB)"
    )
    assert peak < 256, record.observed
    assert end - warm < 40, record.observed
    assert "Traceback" not in target.log_text()
    assert target.client().get("/healthz").status_code == 200
