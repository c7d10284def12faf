"""The embedded broker: kombu's filesystem transport with atomic message files.

kombu's own filesystem transport creates a message file under its final name and then writes
it; a consumer polling the folder in between moves the still-empty file away, fails to decode
it, and the worker dies with the message lost (seen under load with two workers: a 2-minute
stall until the sweeper re-queued the shard). Here a message is written under a name no consumer
looks at (``….msg.part``) and renamed into place, so a consumer only ever sees whole messages;
and a message file that does not decode (written by something else) is logged and skipped
instead of killing the worker.
"""

from __future__ import annotations

import logging
import os
import uuid
from time import monotonic_ns
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

log = logging.getLogger(__name__)

#: ``broker_transport`` for Celery (a "module:Class" path kombu resolves).
TRANSPORT = "genoserve.jobs.fs_transport:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # Consumers take files in name order: a zero-padded nanosecond clock first keeps FIFO order
        # (kombu's own millisecond prefix shuffles messages put within the same millisecond).
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # kombu's consumers match "<queue>.msg" exactly: invisible to them
        try:
            with open(partial, "wb") as fh:
                fh.write(dumps(payload).encode())  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"cannot add message {final!r} to the queue folder") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        while True:  # ends with a message or with kombu's Empty
            try:
                return super()._get(queue)  # type: ignore[no-untyped-call]
            except ValueError as exc:  # json.JSONDecodeError: not a whole message; already removed
                log.error("queue %s: skipped a message file that is not valid JSON: %s", queue, exc)


class Transport(filesystem.Transport):
    Channel = Channel
