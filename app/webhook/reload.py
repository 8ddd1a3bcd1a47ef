"""Policy reload: a changed policy file is validated and swapped in without a restart.

Polls the file's content (a ConfigMap update swaps a symlink, so modification times of the
visible path are not reliable; a hash of the bytes is). An invalid file is refused with a log
line and a metric, and the last good policy stays in force. The `pools` and `registry`
sections configure long-lived watchers and clients: a change there is applied at the next
restart, and the log says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app.core.policy import Policy, PolicyError, policy_from_yaml

logger = logging.getLogger(__name__)


def load_policy(path: str | Path | None) -> Policy:
    """Read and validate a policy file; None gives the default policy."""
    if path is None:
        return Policy()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(f"{path}: cannot read the policy file: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise PolicyError(f"{path}: not valid UTF-8: {err.reason}") from err
    return policy_from_yaml(text, source=str(path))


class PolicyHolder(Protocol):
    current: Policy


class PolicyReloader:
    def __init__(
        self,
        holder: PolicyHolder,
        path: Path,
        *,
        interval: float = 5.0,
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.holder = holder
        self.path = path
        self.interval = interval
        self.on_result = on_result
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def check(self) -> str:
        """Reload when the content changed: returns unchanged, ok or failed."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return "unchanged"
        self._digest = digest
        try:
            policy = load_policy(self.path)
        except PolicyError as err:
            logger.error("policy reload refused, the last good policy stays: %s", err)
            self.on_result("failed")
            return "failed"
        old = self.holder.current
        if policy.pools != old.pools or policy.registry != old.registry:
            logger.warning("policy sections pools/registry changed: applied at the next restart")
        self.holder.current = policy
        logger.info("policy reloaded from %s (mode %s)", self.path, policy.mode.value)
        self.on_result("ok")
        return "ok"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:
                logger.exception("policy reload check failed")
