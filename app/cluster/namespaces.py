"""Namespace modes from the `streamgate.io/mode` label, watched in the background.

A `NamespaceModes` source (app/webhook/admission.py) for the server: one `Reflector` (list +
watch of Namespaces, in a thread) keeps a plain dict of namespace -> mode, replaced whole on
each list and updated per event; admission reads it with one dict look-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from app.cluster.reflector import Reflector, ReflectorSettings
from app.core.policy import MODE_LABEL, Mode, mode_from_label

logger = logging.getLogger(__name__)


def _mode_of(namespace: Mapping[str, Any]) -> tuple[str, Mode | None]:
    meta = namespace.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    labels = meta.get("labels")
    value = labels.get(MODE_LABEL) if isinstance(labels, Mapping) else None
    mode = mode_from_label(value if isinstance(value, str) else None)
    if value is not None and mode is None:
        logger.warning(
            "namespace %s: label %s=%r is not a mode; ignored", meta.get("name"), MODE_LABEL, value
        )
    return str(meta.get("name", "")), mode


class NamespaceLabels:
    """Modes chosen by namespace labels; `mode()` is None until a namespace asks for one."""

    def __init__(self, api_client: Any, *, settings: ReflectorSettings | None = None) -> None:
        self._modes: dict[str, Mode] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reflector = Reflector(
            "namespaces",
            client.CoreV1Api(api_client).list_namespace,
            on_replace=self._replace,
            on_event=self._event,
            stop=self._stop,
            settings=settings,
        )

    def _replace(self, items: list[Mapping[str, Any]]) -> None:
        modes = {}
        for item in items:
            name, mode = _mode_of(item)
            if mode is not None:
                modes[name] = mode
        self._modes = modes

    def _event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name, mode = _mode_of(obj)
        modes = dict(self._modes)
        if kind == "DELETED" or mode is None:
            modes.pop(name, None)
        else:
            modes[name] = mode
        self._modes = modes  # one reference swap: readers never see a half-built dict

    @property
    def ready(self) -> bool:
        return self._reflector.synced

    def mode(self, namespace: str) -> Mode | None:
        return self._modes.get(namespace)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._reflector.run, name="streamgate-watch-namespaces", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._reflector.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
