"""`streamgate scan -o html` on the in-memory cluster of test_scan.py: the numbers the page
shows, its order, escaping of tenant text, and a page that needs nothing from the network.
Rendered in headless Chromium against the real control plane: tests/e2e/test_scan_explain_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

from app.cli.htmlreport import by_namespace, by_pool, overall, render, to_convert
from app.cli.scan import RENDERERS, pod_count
from app.core.verdicts import ImageVerdict, Verdict
from tests.memory import MemoryVerdicts
from tests.unit.cli.test_scan import ACR, GOOD, PLAIN, cluster, node, run_scan, templated


class Elements(HTMLParser):
    """Every element opened, with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)
        else:
            self.text.append(data)


def parse(page: str) -> Elements:
    doc = Elements()
    doc.feed(page)
    return doc


def test_pod_count_from_each_kind():
    assert pod_count("Deployment", {"spec": {"replicas": 3}}) == 3
    assert pod_count("Deployment", {"spec": {}}) == 1
    assert pod_count("StatefulSet", {"spec": {"replicas": 0}}) == 0
    assert pod_count("DaemonSet", {"status": {"desiredNumberScheduled": 7}}) == 7
    assert pod_count("DaemonSet", {"spec": {}}) == 0  # not counted by its controller yet
    assert pod_count("Job", {"spec": {"parallelism": 4}}) == 4
    assert pod_count("CronJob", {"spec": {"jobTemplate": {"spec": {"parallelism": 2}}}}) == 2
    assert pod_count("CronJob", {"spec": {}}) == 1
    assert pod_count("Pod", {}) == 1
    # a tenant's odd values count as the default, never as a crash or a negative number
    assert pod_count("Deployment", {"spec": {"replicas": "many"}}) == 1
    assert pod_count("Deployment", {"spec": {"replicas": -5}}) == 1
    assert pod_count("Deployment", {"spec": {"replicas": True}}) == 1
    assert pod_count("Job", {"spec": "nonsense"}) == 1


async def test_shares_by_namespace_and_pool_count_pods():
    reader = cluster()
    reader.node_list = [node("streamy"), node("arm", "arm64")]
    web = templated("web", "shop", GOOD, nodeSelector={"kubernetes.azure.com/agentpool": "streamy"})
    web["spec"]["replicas"] = 5
    reader.items["Deployment"][0] = web  # web: 5 pods, streamable, on the streaming pool only
    report = await run_scan(reader)
    total = overall(report)
    assert (total.streaming_workloads, total.workloads) == (1, 11)
    assert total.streaming_pods == 5
    # DaemonSet "broken" has no status: 0 pods; every other workload 1
    assert total.pods == 5 + 9
    shop = next(s for s in by_namespace(report) if s.label == "shop")
    assert (shop.streaming_pods, shop.pods, shop.workloads) == (5, 5 + 4, 6)
    assert by_namespace(report)[0].label == "shop"  # most pods first
    pools = {p.label: p for p in by_pool(report)}
    assert pools["streamy"].fit.streaming.value == "yes"
    assert pools["arm"].fit.reasons == ("arm64",)
    assert pools["streamy"].streaming_pods == 5 + 1  # web, and old (streamable, fits both)
    assert pools["arm"].streaming_pods == 0


async def test_images_to_convert_most_pods_first_with_the_command():
    reader = cluster()
    big = templated("big", "shop", f"{ACR}/other:v2")
    big["spec"]["replicas"] = 9
    reader.items["Deployment"].append(big)
    source = MemoryVerdicts(
        {
            PLAIN: ImageVerdict(Verdict.NOT_STREAMABLE, "no streaming artifact"),
            f"{ACR}/other:v2": ImageVerdict(Verdict.NOT_STREAMABLE, "no streaming artifact"),
            f"{ACR}/down:v1": ImageVerdict(
                Verdict.NOT_STREAMABLE, "no streaming artifact yet; conversion running"
            ),
        }
    )
    report = await run_scan(reader, source=source)
    items = [(c.ref.raw, c.pods, c.workloads, c.command) for c in to_convert(report)]
    assert items == [
        (
            f"{ACR}/other:v2",
            9,
            1,
            "az acr artifact-streaming create -n myreg --image other:v2",
        ),
        # legacy and op-1 (shop); dns and toy are skipped (kube-system, mode off)
        (PLAIN, 2, 2, "az acr artifact-streaming create -n myreg --image plain:v1"),
        (f"{ACR}/down:v1", 1, 1, None),  # a conversion is under way: nothing to run now
    ]
    page = render(report)
    assert "<code>az acr artifact-streaming create -n myreg --image other:v2</code>" in page
    assert page.index("other:v2") < page.index("plain:v1")


async def test_tenant_text_is_escaped_everywhere():
    hostile = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    reader = cluster()
    reader.add_ns(hostile)  # the fake API takes any name; the page must not care
    reader.items["Deployment"].append(templated("x", hostile, PLAIN))
    reader.items["DaemonSet"].append({"metadata": {"name": "y", "namespace": hostile}, "spec": {}})
    source = MemoryVerdicts(
        {PLAIN: ImageVerdict(Verdict.NOT_STREAMABLE, f"conversion failed: {hostile}\x1b[31m")}
    )
    report = await run_scan(reader, source=source)
    page = render(report)
    doc = parse(page)
    assert not any(tag in ("img", "iframe", "object", "a") for tag, _ in doc.tags)
    assert sum(tag == "script" for tag, _ in doc.tags) == 1
    assert not any(k.startswith("on") for _, attrs in doc.tags for k in attrs)
    text = "".join(doc.text)
    assert hostile in text  # shown as text, as the tenant wrote it
    assert "\x1b" not in page and "\\x1b[31m" in text  # control characters as escapes


async def test_the_page_loads_nothing_and_allows_only_its_own_style_and_script():
    page = render(await run_scan(cluster()))
    doc = parse(page)
    csp = next(
        attrs["content"]
        for tag, attrs in doc.tags
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"
    )
    assert csp is not None and "default-src 'none'" in csp

    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    [script], [style] = doc.scripts, doc.styles
    assert f"script-src {sha(script)};" in csp
    assert f"style-src {sha(style)};" in csp
    # no URL anywhere: nothing to fetch, no link out
    assert "http" not in page.replace("http-equiv", "")
    assert not re.search(r"url\(|@import|//[a-z0-9]", page, re.I)
    assert not any("src" in attrs or "href" in attrs for _, attrs in doc.tags)


def test_html_is_one_of_the_scan_outputs():
    assert RENDERERS["html"].__name__ == "to_html"
