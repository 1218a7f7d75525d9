"""Frame codec throughput: decoding 32 KiB BufferResponses and AddCredit messages.

Each round decodes ``FRAMES`` frames, so frames/s = FRAMES / mean round time (also stored
as ``frames_per_round`` in the benchmark's extra info). Run with
``pytest benchmarks/test_codec_bench.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from penstock.buffer.buffer import DataType
from penstock.ids import InputChannelID
from penstock.transport.codec import NEED_DATA, FrameDecoder, encode
from penstock.transport.messages import AddCredit, BufferResponse

FRAMES = 1000
SEGMENT_SIZE = 32 * 1024
RECEIVER = InputChannelID.generate()
BUFFER_FRAME = encode(
    BufferResponse(
        RECEIVER, 0, 0, 0, DataType.DATA_BUFFER, False, SEGMENT_SIZE, bytes(SEGMENT_SIZE)
    )
)
CREDIT_FRAME = encode(AddCredit(2, RECEIVER))


def one_segment() -> Callable[[InputChannelID, int, DataType], memoryview | None]:
    region = memoryview(bytearray(SEGMENT_SIZE))

    def allocate(receiver_id: InputChannelID, size: int, data_type: DataType) -> memoryview:
        return region[:size]

    return allocate


def fed(frame: bytes, per_chunk: int, decoder: FrameDecoder) -> Callable[[], int]:
    chunk = frame * per_chunk

    def run() -> int:
        decoded = 0
        for _ in range(FRAMES // per_chunk):
            decoder.feed(chunk)
            while decoder.next_message() is not NEED_DATA:
                decoded += 1
        return decoded

    return run


def received(frame: bytes, decoder: FrameDecoder) -> Callable[[], int]:
    """Receives like ``asyncio.BufferedProtocol``; the slice copy stands in for recv_into."""
    source = memoryview(frame)

    def run() -> int:
        decoded = 0
        for _ in range(FRAMES):
            pos = 0
            while True:
                view = decoder.get_buffer(-1)
                n = len(view)
                view[:] = source[pos : pos + n]
                pos += n
                decoder.buffer_updated(n)
                if decoder.next_message() is not NEED_DATA:
                    decoded += 1
                    break
        return decoded

    return run


CASES: dict[str, Callable[[], Callable[[], int]]] = {
    "buffer-32k-feed-own-memory": lambda: fed(BUFFER_FRAME, 1, FrameDecoder(SEGMENT_SIZE)),
    "buffer-32k-feed-allocator": lambda: fed(
        BUFFER_FRAME, 1, FrameDecoder(SEGMENT_SIZE, allocate=one_segment())
    ),
    "buffer-32k-get-buffer-allocator": lambda: received(
        BUFFER_FRAME, FrameDecoder(SEGMENT_SIZE, allocate=one_segment())
    ),
    "add-credit-feed-100-per-chunk": lambda: fed(CREDIT_FRAME, 100, FrameDecoder(SEGMENT_SIZE)),
    "add-credit-feed-1-per-chunk": lambda: fed(CREDIT_FRAME, 1, FrameDecoder(SEGMENT_SIZE)),
    "add-credit-get-buffer": lambda: received(CREDIT_FRAME, FrameDecoder(SEGMENT_SIZE)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_decode_frames(benchmark: BenchmarkFixture, case: str) -> None:
    run = CASES[case]()
    benchmark.extra_info["frames_per_round"] = FRAMES
    assert benchmark(run) == FRAMES
