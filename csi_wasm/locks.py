"""One operation per volume at a time; a second one is refused, not queued."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from csi_wasm.errors import Aborted


class VolumeLocks:
    def __init__(self) -> None:
        self._busy: set[str] = set()
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, volume_id: str) -> Iterator[None]:
        """Run the block as the only operation on ``volume_id``, else raise ABORTED.

        kubelet retries ABORTED with backoff, so refusing is kinder than making a
        second call wait behind a pull that may take minutes.
        """
        with self._guard:
            if volume_id in self._busy:
                raise Aborted(
                    f"another operation on volume {volume_id} is in progress; kubelet will retry"
                )
            self._busy.add(volume_id)
        try:
            yield
        finally:
            with self._guard:
                self._busy.discard(volume_id)
