"""The embedded broker's transport: consumers only ever see whole messages, and a message file
that does not decode is skipped instead of killing the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from genoserve.jobs.fs_transport import Transport


@pytest.fixture
def connection(tmp_path: Path) -> Connection:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(tmp_path / "control"),  # kombu's default is ./control
        "store_processed": False,
        "polling_interval": 0.05,
    }
    with Connection("filesystem://", transport=Transport, transport_options=options) as conn:
        yield conn


def test_messages_round_trip_in_order_and_no_partial_file_is_left(connection: Connection, tmp_path: Path) -> None:
    queue = connection.SimpleQueue("binding")
    for i in range(5):
        queue.put({"shard": i})
    assert not list((tmp_path / "queue").glob("*.part"))
    got = []
    for _ in range(5):
        message = queue.get(timeout=10)
        got.append(message.payload["shard"])
        message.ack()
    assert got == [0, 1, 2, 3, 4]
    queue.close()


def test_a_message_still_being_written_is_invisible(connection: Connection, tmp_path: Path) -> None:
    queue = connection.SimpleQueue("binding")
    # What a producer holds while writing: kombu's consumers must not take it (the race that used
    # to hand a worker an empty file, kill it and lose the shard).
    (tmp_path / "queue" / "0_x.binding.msg.part").write_bytes(b"")
    with pytest.raises(queue.Empty):
        queue.get(timeout=0.3)
    assert (tmp_path / "queue" / "0_x.binding.msg.part").exists()
    queue.close()


def test_a_corrupt_message_file_is_skipped_and_the_next_is_delivered(connection: Connection, tmp_path: Path) -> None:
    # A queue name of its own: kombu's virtual transports keep exchange bindings per process.
    queue = connection.SimpleQueue("variants")
    (tmp_path / "queue" / "00000000000000000000_corrupt.variants.msg").write_bytes(b"")  # sorts first
    queue.put({"shard": 7})
    message = queue.get(timeout=10)
    assert message.payload == {"shard": 7}
    message.ack()
    assert not (tmp_path / "queue" / "00000000000000000000_corrupt.variants.msg").exists()
    queue.close()
