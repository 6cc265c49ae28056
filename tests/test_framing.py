"""How the broker packs a turn's messages for one peer or room into frames (no sockets)."""

from __future__ import annotations

from broker.server import FRAME_BYTES, FRAME_MESSAGES, _frames
from schema import messages, pack


def say(k: int, size: int = 10) -> dict:
    return {"ev": "msg", "seq": k, "text": "x" * size}


def framed(batch: list[dict]) -> list[bytes]:
    """The frames of a turn's messages, each packed once as the chat core packs them."""
    return list(_frames([pack(m) for m in batch]))


def unpacked(frames: list[bytes]) -> list[list[dict]]:
    return [messages(f) for f in frames]


def test_a_frame_is_byte_for_byte_the_array_of_its_messages_packed():
    for count in (1, 15, 16, FRAME_MESSAGES):  # a fixarray header, then an array 16 one
        batch = [say(k) for k in range(count)]
        assert framed(batch) == [pack(batch)]


def test_a_single_message_is_a_frame_of_one_however_large():
    huge = say(1, FRAME_BYTES * 2)
    assert unpacked(framed([huge])) == [[huge]]


def test_frames_keep_the_order_and_hold_at_most_frame_messages():
    batch = [say(k) for k in range(FRAME_MESSAGES * 2 + 5)]
    frames = unpacked(framed(batch))
    assert [len(f) for f in frames] == [FRAME_MESSAGES, FRAME_MESSAGES, 5]
    assert [m for f in frames for m in f] == batch


def test_frames_of_several_messages_stay_within_the_byte_bound():
    batch = [say(k, FRAME_BYTES // 5) for k in range(12)]
    frames = framed(batch)
    assert all(len(f) <= FRAME_BYTES for f in frames)
    assert len(frames) > 2  # cut, not sent whole
    assert [m for f in unpacked(frames) for m in f] == batch


def test_an_oversized_message_among_others_goes_alone():
    big = say(2, FRAME_BYTES)
    batch = [say(1), big, say(3), say(4)]
    frames = unpacked(framed(batch))
    assert [big] in frames
    assert [m for f in frames for m in f] == batch
