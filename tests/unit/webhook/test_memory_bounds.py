"""A tenant's large reviews can't grow the webhook's memory without bound: 60 distinct ~940 KiB
Pod reviews (250 long images each) through the admission path. Measured: before the caches
were bounded in characters this grew RSS by ~120 MiB (45 -> 165 MiB); now by ~5 MiB."""

from __future__ import annotations

import gc
import json
import logging

from app.core.policy import parse_policy
from app.core.pools import NoInventory
from app.webhook.admission import Admission
from app.webhook.review import parse_review
from tests.memory import MemoryVerdicts


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _review(n: int) -> bytes:
    containers = [
        {"name": f"c{i}", "image": f"docker.io/library/{'x' * 3800}{n}-{i}:1"} for i in range(250)
    ]
    obj = {"metadata": {"name": f"p{n}"}, "spec": {"containers": containers}}
    request = {
        "uid": f"u{n}",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": "tenant",
        "name": f"p{n}",
        "object": obj,
    }
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    return json.dumps(review).encode()


async def test_sixty_large_reviews_leave_memory_flat(tmp_path) -> None:
    # the decision log on, as in production (its line cache kept whole decisions alive)
    logger = logging.getLogger("app.webhook.admission")
    handler = logging.FileHandler(tmp_path / "decisions.log")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        await _run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
    longest = max(len(line) for line in (tmp_path / "decisions.log").read_text().splitlines())
    assert longest < 16_000  # 20 images of at most 256 characters, not 250 of 3,800


async def _run() -> None:
    policy = parse_policy({"rules": {"notAcr": "warn"}})
    admission = Admission(policy=lambda: policy, verdicts=MemoryVerdicts(), placement=NoInventory())
    gc.collect()
    before = _rss_mib()
    for n in range(60):
        request = parse_review(_review(n))
        answer = await admission.answer(request, "validate")
        assert answer.allowed and answer.warnings
        await admission.answer(request, "mutate")
        del request
    gc.collect()
    grown = _rss_mib() - before
    assert grown < 40, f"RSS grew {grown:.0f} MiB over 60 large reviews"
