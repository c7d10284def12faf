"""The server's shared-memory reader and the client's pool, on real POSIX shared memory."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from genoserve.api.codecs.tensor import NO_SHARED_MEMORY, from_numpy, to_numpy
from genoserve.api.shared_memory import SHM_DIR, SharedMemoryReader
from genoserve.client.shared_memory import ALIGN, CHUNK, SharedMemoryPool
from genoserve.core.errors import InvalidArgument
from genoserve.v1 import tensor_pb2


@pytest.fixture
def pool() -> Iterator[SharedMemoryPool]:
    made = SharedMemoryPool()
    yield made
    made.close()


def test_a_placed_tensor_decodes_to_the_same_array_through_the_reader(pool: SharedMemoryPool) -> None:
    reader = SharedMemoryReader()
    arrays = [
        np.arange(10, dtype=np.int64),
        np.linspace(0, 1, 7, dtype=np.float32).reshape(7, 1),
        np.zeros(0, np.uint8),
    ]
    with pool.lease() as lease:
        tensors = [from_numpy(a, lease) for a in arrays]
        assert all(not t.data and t.HasField("shared_memory") for t in tensors)
        assert all(t.shared_memory.offset % ALIGN == 0 for t in tensors)
        for array, tensor in zip(arrays, tensors, strict=True):
            np.testing.assert_array_equal(to_numpy(tensor, "x", shared=reader), array)
    # A second request reuses the object (one object, released and taken again).
    with pool.lease() as lease:
        assert from_numpy(np.ones(3), lease).shared_memory.name == tensors[0].shared_memory.name
    assert len(pool.names) == 1


def test_parts_are_written_back_to_back_and_big_tensors_get_their_own_object(pool: SharedMemoryPool) -> None:
    reader = SharedMemoryReader()
    a, b = np.full((2, 3), 7, np.uint8), np.full((1, 3), 9, np.uint8)
    big = np.ones(CHUNK + 5, np.uint8)
    with pool.lease() as lease:
        region = lease.place([a, b])
        tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[3, 3], shared_memory=region)
        np.testing.assert_array_equal(to_numpy(tensor, "x", shared=reader), np.concatenate([a, b]))
        large = from_numpy(big, lease)
        assert large.shared_memory.name != region.name
        np.testing.assert_array_equal(to_numpy(large, "big", shared=reader), big)
    assert len(pool.names) == 2
    names = pool.names
    pool.close()
    assert not any((SHM_DIR / n).exists() for n in names)


def test_a_recreated_object_is_mapped_again_not_read_from_the_old_mapping() -> None:
    reader = SharedMemoryReader()
    name = "genoserve-test-recreated"
    for value, size in ((1, 4096), (2, 8192)):
        region = shared_memory.SharedMemory(name=name, create=True, size=size)
        try:
            np.frombuffer(region.buf, np.uint8)[:] = value
            view = reader.read(tensor_pb2.SharedMemoryRegion(name=name, offset=size - 16), 16, "x")
            assert bytes(view) == bytes([value]) * 16
            del view
        finally:
            region.close()
            region.unlink()


def test_the_reader_keeps_a_bounded_number_of_mappings() -> None:
    reader = SharedMemoryReader(cache_size=2)
    regions = [shared_memory.SharedMemory(name=f"genoserve-test-lru-{i}", create=True, size=4096) for i in range(4)]
    try:
        for region in regions:
            reader.read(tensor_pb2.SharedMemoryRegion(name=region.name), 8, "x")
        assert list(reader._maps) == [regions[2].name, regions[3].name]
    finally:
        for region in regions:
            region.close()
            region.unlink()


@pytest.mark.parametrize(
    ("name", "offset", "needle"),
    [
        ("psm_1234", 0, "x.name: must start with 'genoserve'"),
        ("genoserve/../../etc/passwd", 0, "contain no '/'"),
        ("genoserve-test-absent", 0, "no shared-memory object 'genoserve-test-absent'"),
        ("genoserve-test-short", 4090, "x.offset: the tensor's 8 bytes at offset 4090 end at 4098, past the end"),
    ],
)
def test_bad_references_name_the_field_and_the_rule(name: str, offset: int, needle: str) -> None:
    region = shared_memory.SharedMemory(name="genoserve-test-short", create=True, size=4096)
    try:
        with pytest.raises(InvalidArgument) as caught:
            SharedMemoryReader().read(tensor_pb2.SharedMemoryRegion(name=name, offset=offset), 8, "x")
        assert needle in str(caught.value)
    finally:
        region.close()
        region.unlink()


def test_without_a_reader_shared_memory_is_refused_and_data_beside_it_too(pool: SharedMemoryPool) -> None:
    with pool.lease() as lease:
        tensor = from_numpy(np.ones(4, np.float32), lease)
    with pytest.raises(InvalidArgument) as caught:
        to_numpy(tensor, "inputs[x]")
    assert str(caught.value).startswith("inputs[x].shared_memory: ")
    assert NO_SHARED_MEMORY in str(caught.value)
    tensor.data = np.ones(4, np.float32).tobytes()
    with pytest.raises(InvalidArgument, match=r"inputs\[x\].data: must be empty when shared_memory is set"):
        to_numpy(tensor, "inputs[x]", shared=SharedMemoryReader())


def test_the_server_keeps_private_copies_of_what_native_code_trusts(pool: SharedMemoryPool) -> None:
    """CSR structure (scipy's C++ indexes with it unchecked) and images are copied out of shared
    memory before they are checked, so a client changing them afterwards cannot reach past them."""
    import scipy.sparse as sp

    from genoserve.api.codecs import embedding, segmentation
    from genoserve.v1 import segmentation_pb2

    reader = SharedMemoryReader()
    matrix = sp.csr_matrix(np.array([[0, 3, 0], [1, 0, 2]], dtype=np.float32))
    with pool.lease() as lease:
        data = embedding.encode_embed_request("m", ["a", "b", "c"], matrix, shared=lease)
        parsed = embedding.parse_embed_request(data)
        counts = embedding.counts(parsed, shared=reader)
        image_message = segmentation_pb2.SegmentRequest(
            image=segmentation_pb2.Image(array=from_numpy(np.ones((4, 4), np.float32), lease))
        )
        image = segmentation.image(image_message, reader)
        [name] = {t.header.shared_memory.name for t in parsed.tensors.values()}
        with open(SHM_DIR / name, "r+b") as handle:  # the client scribbles over everything
            handle.write(b"\xff" * os.fstat(handle.fileno()).st_size)
    assert isinstance(counts, embedding.CsrCounts)
    np.testing.assert_array_equal(counts.indptr, [0, 1, 3])
    np.testing.assert_array_equal(counts.indices, [1, 0, 2])
    np.testing.assert_array_equal(image, np.ones((4, 4), np.float32))


def test_a_write_after_the_pool_closed_fails_instead_of_reaching_a_reused_descriptor() -> None:
    """A stream's sending thread can still be placing a batch when the call fails and the client
    closes: that write must fail cleanly (its descriptor may already belong to another file)."""
    pool = SharedMemoryPool()
    lease = pool.lease()
    lease.place([np.ones(16, np.uint8)])  # the lease now holds an object with room left
    [name] = pool.names
    pool.close()
    assert not (SHM_DIR / name).exists()
    with pytest.raises(RuntimeError, match="closed"):
        lease.place([np.ones(16, np.uint8)])
    with pytest.raises(RuntimeError, match="closed"):
        pool.lease().place([np.ones(16, np.uint8)])


# -- objects that are not the server's own regular shared-memory objects ---------------------------


def _refused(name: str, nbytes: int = 8) -> str:
    """The INVALID_ARGUMENT message the reader gives for ``name`` (it must refuse it)."""
    with pytest.raises(InvalidArgument) as caught:
        SharedMemoryReader().read(tensor_pb2.SharedMemoryRegion(name=name), nbytes, "inputs[x].shared_memory")
    message = str(caught.value)
    assert message.startswith("inputs[x].shared_memory.name: "), message
    return message.replace(name, "<name>")  # what is left may not reveal a size


@pytest.fixture
def shm_path() -> Iterator[str]:
    """A free name under /dev/shm for this test (removed afterwards, whatever it became)."""
    name = f"genoserve-test-{os.getpid()}-{os.urandom(4).hex()}"
    yield name
    path = SHM_DIR / name
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def test_a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer(shm_path: str) -> None:
    os.mkfifo(SHM_DIR / shm_path)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(_refused(shm_path)), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # the reader is stuck in open(): release it before failing
        os.close(os.open(SHM_DIR / shm_path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("opening a FIFO blocked the reader until a writer came")
    assert "regular" in outcome[0]


def test_a_symlink_is_not_followed_and_its_targets_size_is_not_revealed(shm_path: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 7919)
    secret.chmod(0o600)
    (SHM_DIR / shm_path).symlink_to(secret)
    assert "7919" not in _refused(shm_path, 8)  # small enough to fit: still refused, not read
    message = _refused(shm_path, 10**6)  # too big: refused without the size of what it points at
    assert "7919" not in message
    assert "symbolic link" in message or "regular" in message


def test_a_symlink_to_a_root_only_file_is_refused(shm_path: str) -> None:
    target = Path("/etc/shadow")
    if not target.exists():
        pytest.skip("no /etc/shadow here")
    (SHM_DIR / shm_path).symlink_to(target)
    message = _refused(shm_path, 10**6)
    assert str(target.stat().st_size) not in message


def test_a_directory_is_invalid_argument_not_an_internal_error(shm_path: str) -> None:
    (SHM_DIR / shm_path).mkdir()
    assert "regular" in _refused(shm_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_an_object_of_another_user_is_refused_without_its_size(shm_path: str) -> None:
    path = SHM_DIR / shm_path
    path.write_bytes(b"\1" * 6007)
    os.chown(path, 12345, 12345)
    message = _refused(shm_path)
    assert "owned by the server's user" in message
    assert "6007" not in _refused(shm_path, 10**6)
