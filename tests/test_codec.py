"""The wire protocol: messages, frame encoding and the sans-IO frame decoder."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.buffer.buffer import DataType
from penstock.errors import (
    ConfigurationError,
    CorruptFrameError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from penstock.ids import (
    ExecutionAttemptID,
    ExecutionGraphID,
    InputChannelID,
    IntermediateDataSetID,
    IntermediateResultPartitionID,
    JobVertexID,
    ResultPartitionID,
)
from penstock.transport.codec import (
    BAD_MAGIC_MESSAGE,
    BUFFER_RESPONSE_HEADER_LENGTH,
    FRAME_HEADER_LENGTH,
    MAGIC_NUMBER,
    NEED_DATA,
    FrameDecoder,
    encode,
    encode_buffer_response_header,
)
from penstock.transport.messages import (
    MAX_ERROR_TEXT_LENGTH,
    MESSAGE_TYPES,
    AckAllUserRecordsProcessed,
    AddCredit,
    BacklogAnnouncement,
    BufferResponse,
    CancelPartitionRequest,
    CloseRequest,
    ErrorResponse,
    Message,
    NewBufferSize,
    PartitionRequest,
    ResumeConsumption,
    TaskEventRequest,
)

MAX_BUFFER_SIZE = 4096
INT32_MAX = 2**31 - 1

# -- strategies ---------------------------------------------------------------------------

int64s = st.integers(-(2**63), 2**63 - 1)
int32s = st.integers(-(2**31), INT32_MAX)
naturals = st.integers(0, INT32_MAX)
positives = st.integers(1, INT32_MAX)
channel_ids = st.builds(InputChannelID, int64s, int64s)
partition_ids = st.builds(
    ResultPartitionID,
    st.builds(
        IntermediateResultPartitionID, st.builds(IntermediateDataSetID, int64s, int64s), int32s
    ),
    st.builds(
        ExecutionAttemptID,
        st.builds(ExecutionGraphID, int64s, int64s),
        st.builds(JobVertexID, int64s, int64s),
        int32s,
        int32s,
    ),
)


@st.composite
def buffer_responses(draw: st.DrawFn, max_size: int = 600) -> BufferResponse:
    payload = draw(st.binary(max_size=max_size))
    return BufferResponse(
        draw(channel_ids),
        draw(naturals),
        draw(naturals),
        draw(naturals),
        draw(st.sampled_from([kind for kind in DataType if kind is not DataType.NONE])),
        draw(st.booleans()),
        len(payload),
        payload,
    )


@st.composite
def partition_requests(draw: st.DrawFn) -> PartitionRequest:
    start = draw(naturals)
    end = draw(st.integers(start, INT32_MAX))
    return PartitionRequest(draw(partition_ids), start, end, draw(channel_ids), draw(naturals))


messages: st.SearchStrategy[Message] = st.one_of(
    buffer_responses(),
    st.builds(ErrorResponse, st.text(), st.text(), st.text(), st.none() | channel_ids),
    partition_requests(),
    st.builds(TaskEventRequest, st.binary(max_size=200), partition_ids, channel_ids),
    st.builds(CancelPartitionRequest, channel_ids),
    st.just(CloseRequest()),
    st.builds(AddCredit, positives, channel_ids),
    st.builds(ResumeConsumption, channel_ids),
    st.builds(AckAllUserRecordsProcessed, channel_ids),
    st.builds(BacklogAnnouncement, positives, channel_ids),
    st.builds(NewBufferSize, positives, channel_ids),
)

# -- helpers ------------------------------------------------------------------------------


def drain(decoder: FrameDecoder) -> list[Message]:
    """Every message the decoder can finish with the bytes it has."""
    out: list[Message] = []
    while (message := decoder.next_message()) is not NEED_DATA:
        out.append(message)
    return out


def decode_fed(stream: bytes, chunk_sizes: Sequence[int], decoder: FrameDecoder) -> list[Message]:
    """Feeds ``stream`` in chunks of the given sizes (cycled), draining after each."""
    out: list[Message] = []
    pos = 0
    index = 0
    while pos < len(stream):
        size = chunk_sizes[index % len(chunk_sizes)] if chunk_sizes else len(stream)
        decoder.feed(stream[pos : pos + size])
        pos += size
        index += 1
        out.extend(drain(decoder))
    return out


def decode_received(
    stream: bytes, recv_limits: Sequence[int], decoder: FrameDecoder
) -> list[Message]:
    """Receives ``stream`` as a BufferedProtocol would: get_buffer, write, buffer_updated."""
    out: list[Message] = []
    pos = 0
    index = 0
    while pos < len(stream):
        view = decoder.get_buffer(-1)
        assert len(view) >= 1
        limit = recv_limits[index % len(recv_limits)] if recv_limits else len(stream)
        n = min(len(view), limit, len(stream) - pos)
        view[:n] = stream[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
        index += 1
        out.extend(drain(decoder))
    return out


def same(received: Iterable[Message], sent: Iterable[Message]) -> None:
    """Compares messages; payloads compare by content whatever buffer holds them."""
    received = list(received)
    sent = list(sent)
    assert len(received) == len(sent)
    for got, want in zip(received, sent, strict=True):
        assert got == want
        if isinstance(got, BufferResponse):
            assert isinstance(want, BufferResponse)
            assert got.payload is not None and want.payload is not None
            assert bytes(got.payload) == bytes(want.payload)


def frame(message_id: int, body: bytes, length: int | None = None) -> bytes:
    size = FRAME_HEADER_LENGTH + len(body) if length is None else length
    return struct.pack(">iIb", size, MAGIC_NUMBER, message_id) + body


def raw_buffer_response(
    *,
    subpartition: int = 0,
    sequence: int = 0,
    backlog: int = 0,
    data_type: int = 1,
    compressed: int = 0,
    size: int = 4,
    payload: bytes = b"data",
    frame_length: int | None = None,
) -> bytes:
    header = struct.pack(
        ">qqiiibBi", 1, 2, subpartition, sequence, backlog, data_type, compressed, size
    )
    length = 43 + len(payload) if frame_length is None else frame_length
    return frame(0, header + payload, length)


class Pool:
    """An allocator handing out regions of one bytearray, as a buffer pool would."""

    def __init__(self, size: int = 1 << 16, *, refuse: bool = False) -> None:
        self.memory = bytearray(size)
        self.view = memoryview(self.memory)
        self.offset = 0
        self.refuse = refuse
        self.calls: list[tuple[InputChannelID, int, DataType]] = []

    def allocate(
        self, receiver: InputChannelID, size: int, data_type: DataType
    ) -> memoryview | None:
        self.calls.append((receiver, size, data_type))
        if self.refuse:
            return None
        region = self.view[self.offset : self.offset + size]
        self.offset += size
        return region


def expect_corrupt(stream: bytes, match: str | None = None) -> CorruptFrameError:
    """Decodes ``stream`` without and with an allocator: the same error, no buffer taken."""
    decoder = FrameDecoder(MAX_BUFFER_SIZE)
    decoder.feed(stream)
    with pytest.raises(CorruptFrameError, match=match) as info:
        drain(decoder)
    pool = Pool()
    with_allocator = FrameDecoder(MAX_BUFFER_SIZE, allocate=pool.allocate)
    with_allocator.feed(stream)
    with pytest.raises(CorruptFrameError) as same_info:
        drain(with_allocator)
    assert str(same_info.value) == str(info.value)
    assert pool.calls == []
    return info.value


# -- messages -----------------------------------------------------------------------------


def test_message_ids_are_flinks() -> None:
    names = {message_id: kind.__name__ for message_id, kind in MESSAGE_TYPES.items()}
    assert names == {
        0: "BufferResponse",
        1: "ErrorResponse",
        2: "PartitionRequest",
        3: "TaskEventRequest",
        4: "CancelPartitionRequest",
        5: "CloseRequest",
        6: "AddCredit",
        7: "ResumeConsumption",
        8: "AckAllUserRecordsProcessed",
        9: "BacklogAnnouncement",
        10: "NewBufferSize",
    }


@pytest.mark.parametrize(
    "build",
    [
        lambda r: AddCredit(0, r),
        lambda r: AddCredit(-1, r),
        lambda r: AddCredit(2**31, r),
        lambda r: BacklogAnnouncement(0, r),
        lambda r: NewBufferSize(0, r),
        lambda r: PartitionRequest(ResultPartitionID.generate(), 0, 0, r, -1),
        lambda r: PartitionRequest(ResultPartitionID.generate(), 3, 2, r, 1),
        lambda r: PartitionRequest(ResultPartitionID.generate(), -1, 2, r, 1),
        lambda r: BufferResponse(r, 0, 0, -1, DataType.DATA_BUFFER, False, 1, b"x"),
        lambda r: BufferResponse(r, 0, -1, 0, DataType.DATA_BUFFER, False, 1, b"x"),
        lambda r: BufferResponse(r, 0, 0, 0, DataType.DATA_BUFFER, False, 2, b"x"),
        lambda r: BufferResponse(r, 0, 0, 0, 1, False, 1, b"x"),  # type: ignore[arg-type]
        lambda r: CancelPartitionRequest("channel"),  # type: ignore[arg-type]
        lambda r: ErrorResponse("T", "m", "", "channel"),  # type: ignore[arg-type]
        lambda r: TaskEventRequest("event", ResultPartitionID.generate(), r),  # type: ignore[arg-type]
    ],
)
def test_messages_refuse_values_the_protocol_forbids(
    build: Callable[[InputChannelID], object],
) -> None:
    with pytest.raises(LocalProtocolError):
        build(InputChannelID.generate())


def test_error_response_describes_an_exception_and_back() -> None:
    receiver = InputChannelID.generate()
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("boom") from inner
    except ValueError as exc:
        response = ErrorResponse.from_exception(exc, receiver)
        fatal = ErrorResponse.from_exception(exc)
    assert response.type_name == "builtins.ValueError"
    assert response.message == "boom"
    assert "ValueError: boom" in response.traceback_text
    assert "KeyError: 'inner'" in response.traceback_text
    assert not response.is_fatal
    assert fatal.is_fatal
    assert fatal.receiver_id is None
    error = response.to_exception()
    assert isinstance(error, RemoteError)
    assert (error.type_name, error.message) == ("builtins.ValueError", "boom")
    assert error.traceback_text == response.traceback_text
    [decoded] = decode_fed(encode(response), [], FrameDecoder(MAX_BUFFER_SIZE))
    assert decoded == response


def test_error_response_keeps_a_remote_error_as_it_came() -> None:
    remote = RemoteError("pkg.Failure", "far away", "Traceback ...")
    response = ErrorResponse.from_exception(remote)
    assert (response.type_name, response.message, response.traceback_text) == (
        "pkg.Failure",
        "far away",
        "Traceback ...",
    )


def test_error_response_texts_are_cut_to_fit_a_control_frame() -> None:
    response = ErrorResponse.from_exception(RuntimeError("\U0001f4a5" * 10**6))
    assert len(response.message) == MAX_ERROR_TEXT_LENGTH
    assert len(response.traceback_text) == MAX_ERROR_TEXT_LENGTH
    [decoded] = decode_fed(encode(response), [], FrameDecoder(MAX_BUFFER_SIZE))
    assert decoded == response


def test_error_response_with_lone_surrogates_still_encodes() -> None:
    response = ErrorResponse("T", "bad \udcff name", "")
    [decoded] = decode_fed(encode(response), [], FrameDecoder(MAX_BUFFER_SIZE))
    assert isinstance(decoded, ErrorResponse)
    assert decoded.message == "bad \\udcff name"


# -- encoding -----------------------------------------------------------------------------


def test_add_credit_frame_is_byte_exact() -> None:
    receiver = InputChannelID(lower=1, upper=-2)
    assert encode(AddCredit(5, receiver)) == (
        bytes.fromhex("0000001d badc0ffe 06 00000005")
        + bytes.fromhex("0000000000000001 fffffffffffffffe")
    )


def test_frame_lengths_match_flinks_body_sizes() -> None:
    receiver = InputChannelID.generate()
    partition = ResultPartitionID.generate()
    assert len(encode(PartitionRequest(partition, 0, 1, receiver, 2))) == 9 + 20 + 40 + 8 + 16 + 4
    assert len(encode(CloseRequest())) == 9
    assert len(encode(CancelPartitionRequest(receiver))) == 9 + 16
    assert len(encode(TaskEventRequest(b"abc", partition, receiver))) == 9 + 4 + 3 + 60 + 16
    for message in (
        encode(AddCredit(1, receiver)),
        encode(BacklogAnnouncement(1, receiver)),
        encode(NewBufferSize(1, receiver)),
    ):
        assert len(message) == 9 + 4 + 16
        assert struct.unpack_from(">i", message)[0] == len(message)


@given(buffer_responses())
def test_buffer_response_header_plus_payload_is_the_frame(message: BufferResponse) -> None:
    assert message.payload is not None
    header = encode_buffer_response_header(
        message.receiver_id,
        message.subpartition_id,
        message.sequence_number,
        message.backlog,
        message.data_type,
        message.is_compressed,
        message.size,
    )
    assert len(header) == FRAME_HEADER_LENGTH + BUFFER_RESPONSE_HEADER_LENGTH
    assert header + bytes(message.payload) == encode(message)


def test_encode_refuses_what_it_cannot_send() -> None:
    receiver = InputChannelID.generate()
    discarded = BufferResponse(receiver, 0, 0, 0, DataType.DATA_BUFFER, False, 3, None)
    with pytest.raises(LocalProtocolError, match="discarded"):
        encode(discarded)
    with pytest.raises(LocalProtocolError):
        encode(AddCredit(1, InputChannelID(2**64, 0)))
    with pytest.raises(LocalProtocolError):
        encode("AddCredit")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_buffer_response_header(receiver, 0, 0, -1, DataType.DATA_BUFFER, False, 0)
    with pytest.raises(LocalProtocolError):
        encode_buffer_response_header(receiver, 0, 0, 0, DataType.DATA_BUFFER, False, 2**31)
    with pytest.raises(LocalProtocolError, match="NONE"):
        encode_buffer_response_header(receiver, 0, 0, 0, DataType.NONE, False, 0)


# -- decoding: round trips under every chunking --------------------------------------------


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    decoder = FrameDecoder(MAX_BUFFER_SIZE)
    decoder.feed(encode(message))
    [decoded] = drain(decoder)
    same([decoded], [message])
    assert type(decoded) is type(message)
    assert decoder.at_frame_boundary


@given(st.lists(messages, min_size=1, max_size=6))
def test_streams_decode_whole_byte_by_byte_and_with_trailing_bytes(
    sent: list[Message],
) -> None:
    stream = b"".join(encode(message) for message in sent)
    same(decode_fed(stream, [], FrameDecoder(MAX_BUFFER_SIZE)), sent)
    same(decode_fed(stream, [1], FrameDecoder(MAX_BUFFER_SIZE)), sent)
    # The h11 tr() idea: a frame followed by the start of the next one.
    first = encode(sent[0])
    tail = stream[len(first) :]
    second = encode(sent[1]) if len(sent) > 1 else b""
    for cut in sorted({0, 1, 8, 9, 10, 43, len(second) // 2, len(second) - 1}):
        if cut != 0 and not 0 < cut < len(second):
            continue
        decoder = FrameDecoder(MAX_BUFFER_SIZE)
        decoder.feed(first + tail[:cut])
        same(drain(decoder), sent[:1])
        assert decoder.at_frame_boundary == (cut == 0)
        decoder.feed(tail[cut:])
        same(drain(decoder), sent[1:])
        assert decoder.at_frame_boundary


@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(1, 97), max_size=8))
def test_streams_decode_in_random_chunks(sent: list[Message], chunks: list[int]) -> None:
    stream = b"".join(encode(message) for message in sent)
    same(decode_fed(stream, chunks, FrameDecoder(MAX_BUFFER_SIZE)), sent)


@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(1, 97), max_size=8))
def test_streams_received_through_get_buffer(sent: list[Message], limits: list[int]) -> None:
    stream = b"".join(encode(message) for message in sent)
    same(decode_received(stream, limits, FrameDecoder(MAX_BUFFER_SIZE)), sent)
    same(
        decode_received(stream, limits, FrameDecoder(MAX_BUFFER_SIZE, allocate=Pool().allocate)),
        sent,
    )


def test_get_buffer_never_reaches_past_the_current_part() -> None:
    receiver = InputChannelID.generate()
    message = BufferResponse(receiver, 1, 0, 0, DataType.DATA_BUFFER, False, 100, bytes(100))
    decoder = FrameDecoder(MAX_BUFFER_SIZE)
    assert len(decoder.get_buffer(65536)) == FRAME_HEADER_LENGTH
    stream = encode(message)
    decoder.get_buffer()[:] = stream[:9]
    decoder.buffer_updated(9)
    assert decoder.next_message() is NEED_DATA
    assert len(decoder.get_buffer()) == BUFFER_RESPONSE_HEADER_LENGTH
    decoder.get_buffer()[:4] = stream[9:13]
    decoder.buffer_updated(4)
    assert len(decoder.get_buffer()) == BUFFER_RESPONSE_HEADER_LENGTH - 4
    assert decoder.next_message() is NEED_DATA


def test_large_payloads_fed_in_large_chunks() -> None:
    receiver = InputChannelID.generate()
    sent: list[Message] = [
        BufferResponse(receiver, 0, i, 0, DataType.DATA_BUFFER, False, 32768, bytes([i]) * 32768)
        for i in range(40)
    ]
    stream = b"".join(encode(message) for message in sent)
    same(decode_fed(stream, [100_003], FrameDecoder(32768)), sent)
    same(decode_fed(stream, [len(stream)], FrameDecoder(32768)), sent)


# -- decoding: payloads into allocator memory ----------------------------------------------


@pytest.mark.parametrize("way_in", [decode_fed, decode_received])
def test_data_payloads_land_in_allocator_memory(
    way_in: Callable[[bytes, Sequence[int], FrameDecoder], list[Message]],
) -> None:
    receiver = InputChannelID.generate()
    first = bytes(range(256)) * 4
    second = b"\x07" * 300
    event = b"end of partition"
    sent: list[Message] = [
        BufferResponse(receiver, 0, 0, 1, DataType.DATA_BUFFER, False, len(first), first),
        BufferResponse(receiver, 0, 1, 0, DataType.EVENT_BUFFER, False, len(event), event),
        BufferResponse(receiver, 0, 2, 0, DataType.DATA_BUFFER, False, 0, b""),
        BufferResponse(receiver, 0, 3, 0, DataType.DATA_BUFFER_WITH_CLEAR_END, True, 300, second),
    ]
    pool = Pool()
    stream = b"".join(encode(message) for message in sent)
    received = way_in(stream, [7, 500, 1], FrameDecoder(MAX_BUFFER_SIZE, allocate=pool.allocate))
    same(received, sent)
    # Only non-empty data buffers cost a buffer; events use the decoder's own memory.
    assert pool.calls == [
        (receiver, len(first), DataType.DATA_BUFFER),
        (receiver, 300, DataType.DATA_BUFFER_WITH_CLEAR_END),
    ]
    assert pool.memory[: len(first) + 300] == first + second
    data_payload = received[0].payload if isinstance(received[0], BufferResponse) else None
    assert isinstance(data_payload, memoryview)
    assert data_payload.obj is pool.memory
    event_payload = received[1].payload if isinstance(received[1], BufferResponse) else None
    assert event_payload is not None
    assert not (isinstance(event_payload, memoryview) and event_payload.obj is pool.memory)


@pytest.mark.parametrize("way_in", [decode_fed, decode_received])
def test_payloads_without_a_buffer_are_skipped(
    way_in: Callable[[bytes, Sequence[int], FrameDecoder], list[Message]],
) -> None:
    receiver = InputChannelID.generate()
    big = b"\xaa" * 200_000
    sent: list[Message] = [
        BufferResponse(receiver, 0, 0, 0, DataType.DATA_BUFFER, False, len(big), big),
        AddCredit(1, receiver),
        BufferResponse(receiver, 0, 1, 0, DataType.EVENT_BUFFER, False, 3, b"evt"),
    ]
    pool = Pool(refuse=True)
    stream = b"".join(encode(message) for message in sent)
    decoder = FrameDecoder(len(big), allocate=pool.allocate)
    received = way_in(stream, [70_001, 3], decoder)
    assert len(received) == 3
    skipped, credit, event = received
    assert isinstance(skipped, BufferResponse)
    assert skipped.payload is None
    assert skipped == BufferResponse(receiver, 0, 0, 0, DataType.DATA_BUFFER, False, len(big), None)
    assert credit == AddCredit(1, receiver)
    assert isinstance(event, BufferResponse)
    assert event.payload is not None and bytes(event.payload) == b"evt"
    assert pool.calls == [(receiver, len(big), DataType.DATA_BUFFER)]
    assert decoder.at_frame_boundary


@pytest.mark.parametrize(
    "answer",
    [
        memoryview(bytearray(3)),
        memoryview(bytes(4)),
        memoryview(bytearray(4)).cast("b"),
        bytearray(4),
    ],
)
def test_a_bad_allocator_answer_is_a_local_error_and_changes_nothing(answer: object) -> None:
    answers = [answer, memoryview(bytearray(4))]

    def allocate(receiver: InputChannelID, size: int, data_type: DataType) -> memoryview | None:
        return answers.pop(0)  # type: ignore[return-value]

    decoder = FrameDecoder(MAX_BUFFER_SIZE, allocate=allocate)
    decoder.feed(raw_buffer_response())
    with pytest.raises(LocalProtocolError, match="allocator"):
        decoder.next_message()
    [message] = drain(decoder)
    assert isinstance(message, BufferResponse)
    assert message.payload is not None and bytes(message.payload) == b"data"


def test_misuse_of_the_receive_path_is_a_local_error() -> None:
    decoder = FrameDecoder(MAX_BUFFER_SIZE)
    with pytest.raises(LocalProtocolError):
        decoder.buffer_updated(1)  # nothing handed out yet
    assert len(decoder.get_buffer()) == 9
    with pytest.raises(LocalProtocolError):
        decoder.buffer_updated(10)
    decoder.get_buffer()[:] = encode(CloseRequest())
    decoder.buffer_updated(9)
    with pytest.raises(LocalProtocolError, match="next_message"):
        decoder.get_buffer()
    assert drain(decoder) == [CloseRequest()]
    decoder.feed(encode(CloseRequest())[:4])
    with pytest.raises(LocalProtocolError, match="fed bytes"):
        decoder.get_buffer()


@pytest.mark.parametrize(
    ("key", "max_buffer_size", "max_control_frame_size"),
    [("max_buffer_size", 0, 1 << 20), ("max_control_frame_size", 32768, 96)],
)
def test_decoder_limits_are_validated(
    key: str, max_buffer_size: int, max_control_frame_size: int
) -> None:
    with pytest.raises(ConfigurationError, match=key):
        FrameDecoder(max_buffer_size, max_control_frame_size)


# -- decoding: corrupt frames ---------------------------------------------------------------


def test_bad_magic_has_flinks_message() -> None:
    stream = struct.pack(">iIb", 9, 0xCAFEBABE, 5)
    error = expect_corrupt(stream)
    assert str(error) == "Network stream corrupted: received incorrect magic number."
    assert str(error) == BAD_MAGIC_MESSAGE
    assert isinstance(error, RemoteProtocolError)


@pytest.mark.parametrize("message_id", [11, 42, 127, -1, -128])
def test_unknown_message_ids_have_flinks_message(message_id: int) -> None:
    error = expect_corrupt(frame(message_id, b""))
    assert str(error) == f"Received unknown message from producer: {message_id}"


def test_oversize_frames_are_refused_from_the_header_alone() -> None:
    pool = Pool()
    for stream in (
        frame(0, b"", length=MAX_BUFFER_SIZE + 43 + 1),
        frame(0, b"", length=INT32_MAX),
        frame(1, b"", length=(1 << 20) + 1),
        frame(3, b"", length=INT32_MAX),
    ):
        decoder = FrameDecoder(MAX_BUFFER_SIZE, allocate=pool.allocate)
        decoder.feed(stream)  # only the 9 header bytes: nothing else could be buffered
        with pytest.raises(CorruptFrameError, match="bytes"):
            decoder.next_message()
    assert pool.calls == []


def test_the_largest_allowed_frames_pass() -> None:
    receiver = InputChannelID.generate()
    payload = bytes(MAX_BUFFER_SIZE)
    sent: list[Message] = [
        BufferResponse(receiver, 0, 0, 0, DataType.DATA_BUFFER, False, len(payload), payload)
    ]
    same(decode_fed(b"".join(map(encode, sent)), [], FrameDecoder(MAX_BUFFER_SIZE)), sent)
    error = ErrorResponse("T", "x" * 200, "", None)
    limit = len(encode(error))
    same(decode_fed(encode(error), [], FrameDecoder(MAX_BUFFER_SIZE, limit)), [error])
    with pytest.raises(CorruptFrameError, match="limit"):
        decode_fed(encode(error), [], FrameDecoder(MAX_BUFFER_SIZE, limit - 1))


@pytest.mark.parametrize(
    ("stream", "match"),
    [
        (frame(5, b"", length=8), "shorter than the 9-byte header"),
        (frame(5, b"", length=-5), "shorter"),
        (frame(0, b"", length=42), "BufferResponse frame of 42 bytes"),
        (raw_buffer_response(size=5), "declared size 5"),
        (raw_buffer_response(size=-1), "declared size -1"),
        (raw_buffer_response(backlog=-1), "negative"),
        (raw_buffer_response(sequence=-3), "negative"),
        (raw_buffer_response(subpartition=-3), "negative"),
        (raw_buffer_response(data_type=12), "unknown data type 12"),
        # NONE means "nothing next" inside a channel: a buffer of it would stall the gate.
        (raw_buffer_response(data_type=0), r"data type 0 \(NONE\) is no buffer's type"),
        (raw_buffer_response(data_type=-1), "unknown data type -1"),
        (raw_buffer_response(compressed=2), "not a bool"),
        (frame(6, struct.pack(">iqq", 0, 1, 2)), "credit"),
        (frame(6, struct.pack(">iqq", -4, 1, 2)), "credit"),
        (frame(9, struct.pack(">iqq", 0, 1, 2)), "backlog"),
        (frame(10, struct.pack(">iqq", -1, 1, 2)), "buffer_size"),
        (frame(6, struct.pack(">iqq", 1, 1, 2) + b"\x00"), "body of 21 bytes, expected 20"),
        (frame(6, struct.pack(">iq", 1, 1)), "body of 12 bytes"),
        (frame(5, b"\x00"), "CloseRequest"),
        (frame(4, bytes(17)), "CancelPartitionRequest"),
        (frame(2, bytes(60) + struct.pack(">iiqqi", 0, 0, 1, 2, -1)), "credit"),
        (frame(2, bytes(60) + struct.pack(">iiqqi", 2, 1, 1, 2, 1)), "range"),
        (frame(3, struct.pack(">i", 5) + bytes(4 + 76)), "event length 5"),
        (frame(3, struct.pack(">i", -1) + bytes(76)), "event length -1"),
        (frame(1, b""), "truncated"),
        (frame(1, struct.pack(">i", 2) + b"\xff\xfe" + bytes(9)), "utf-8"),
        (frame(1, struct.pack(">i", 100) + bytes(10)), "outside the frame"),
        (frame(1, bytes(12)), "missing receiver flag"),
        (frame(1, bytes(12) + b"\x02"), "receiver flag 2"),
        (frame(1, bytes(12) + b"\x01" + bytes(15)), "truncated receiver id"),
        (frame(1, bytes(12) + b"\x00\x00"), "1 trailing bytes"),
        (frame(1, bytes(12) + b"\x01" + bytes(17)), "1 trailing bytes"),
    ],
)
def test_corrupt_frames(stream: bytes, match: str) -> None:
    expect_corrupt(stream, match)


def test_a_failed_decoder_stays_failed() -> None:
    decoder = FrameDecoder(MAX_BUFFER_SIZE)
    decoder.feed(struct.pack(">iIb", 9, 0, 5) + encode(CloseRequest()))
    with pytest.raises(CorruptFrameError) as first:
        decoder.next_message()
    for use in (
        decoder.next_message,
        lambda: decoder.feed(encode(CloseRequest())),
        decoder.get_buffer,
        lambda: decoder.buffer_updated(0),
    ):
        with pytest.raises(CorruptFrameError, match="failed earlier") as again:
            use()
        assert again.value.__cause__ is first.value


# -- fuzzing: random bytes give only RemoteProtocolError or NEED_DATA -----------------------


def decode_anything(decoder: FrameDecoder, stream: bytes, chunk: int) -> None:
    with contextlib.suppress(RemoteProtocolError):
        for start in range(0, len(stream), chunk):
            decoder.feed(stream[start : start + chunk])
            for message in drain(decoder):
                assert type(message) in MESSAGE_TYPES.values()


@pytest.mark.slow
@settings(max_examples=5000)
@given(st.binary(max_size=200), st.integers(1, 64))
def test_fuzz_random_bytes(stream: bytes, chunk: int) -> None:
    decode_anything(FrameDecoder(256, 512), stream, chunk)


@pytest.mark.slow
@settings(max_examples=3500)
@given(
    st.integers(0, 12),
    st.integers(-16, 600),
    st.binary(max_size=300),
    st.integers(1, 64),
    st.booleans(),
)
def test_fuzz_well_framed_random_bodies(
    message_id: int, length: int, body: bytes, chunk: int, refuse: bool
) -> None:
    stream = struct.pack(">iIb", length, MAGIC_NUMBER, message_id) + body
    decoder = FrameDecoder(256, 512, allocate=Pool(refuse=refuse).allocate)
    decode_anything(decoder, stream, chunk)


@pytest.mark.slow
@settings(max_examples=1500)
@given(
    st.lists(messages, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(1, 64),
)
def test_fuzz_mutated_valid_streams(
    sent: list[Message], flips: list[tuple[int, int]], chunk: int
) -> None:
    stream = bytearray(b"".join(encode(message) for message in sent))
    for position, value in flips:
        stream[position % len(stream)] = value
    decode_anything(FrameDecoder(MAX_BUFFER_SIZE, 4096), bytes(stream), chunk)


@pytest.mark.slow
@settings(max_examples=1000)
@given(st.binary(min_size=9, max_size=300), st.lists(st.integers(1, 64), min_size=1))
def test_fuzz_random_bytes_through_get_buffer(stream: bytes, limits: list[int]) -> None:
    # Start with a valid magic number so that most examples get past the frame header.
    stream = stream[:4] + struct.pack(">I", MAGIC_NUMBER) + stream[8:]
    with contextlib.suppress(RemoteProtocolError):
        decode_received(stream, limits, FrameDecoder(256, 512, allocate=Pool().allocate))


def test_consumed_bytes_are_dropped_as_the_stream_goes_on() -> None:
    receiver = InputChannelID.generate()
    sent: list[Message] = [AddCredit(i + 1, receiver) for i in range(5000)]
    stream = b"".join(encode(message) for message in sent)
    decoder = FrameDecoder(MAX_BUFFER_SIZE)
    # Chunks that never end on a frame boundary, so consumed bytes always sit in front
    # of a partial frame when the next chunk arrives.
    same(decode_fed(stream, [70_001, 13], decoder), sent)
    assert decoder.at_frame_boundary


def test_need_data_is_a_sentinel() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert FrameDecoder(MAX_BUFFER_SIZE).next_message() is NEED_DATA


def test_header_encoding_refuses_ids_out_of_range() -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode a BufferResponse"):
        encode_buffer_response_header(
            InputChannelID(2**63, 0), 0, 0, 0, DataType.DATA_BUFFER, False, 0
        )


@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(1, 97), max_size=8))
def test_one_reused_receive_area_as_the_client_reads(
    sent: list[Message], chunks: list[int]
) -> None:
    """Fed bytes are decoded where they lie; once NEED_DATA is returned the decoder
    holds none of them, so the caller may overwrite its receive area."""
    stream = b"".join(encode(message) for message in sent)
    area = memoryview(bytearray(256))
    decoder = FrameDecoder(MAX_BUFFER_SIZE, allocate=Pool().allocate)
    received: list[Message] = []
    position = 0
    sizes = iter(chunks or [97])
    while position < len(stream):
        size = min(next(sizes, 97), len(stream) - position)
        area[:size] = stream[position : position + size]
        position += size
        decoder.feed(area[:size])
        received += drain(decoder)
        area[:] = b"\xee" * len(area)  # what the next read would do to it
    same(received, sent)
    assert decoder.at_frame_boundary


def test_bytes_fed_twice_before_draining_are_all_decoded() -> None:
    receiver = InputChannelID.generate()
    sent: list[Message] = [AddCredit(i + 1, receiver) for i in range(4)]
    stream = b"".join(encode(message) for message in sent)
    decoder = FrameDecoder(MAX_BUFFER_SIZE)
    first = bytearray(stream[:30])
    decoder.feed(first)  # lent, not copied
    decoder.feed(stream[30:])  # the rest of the lent bytes is copied first
    first[:] = b"\xee" * len(first)
    same(drain(decoder), sent)
