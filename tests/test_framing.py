"""How the broker cuts a turn's messages for one peer or room into frames (no sockets)."""

from __future__ import annotations

from broker.server import FRAME_MESSAGES, FRAME_TEXT, _frames


def say(k: int, size: int = 10) -> dict:
    return {"ev": "msg", "seq": k, "text": "x" * size}


def test_a_single_message_is_a_frame_of_one_however_large():
    huge = say(1, FRAME_TEXT * 2)
    assert list(_frames([huge])) == [[huge]]


def test_frames_keep_the_order_and_hold_at_most_frame_messages():
    batch = [say(k) for k in range(FRAME_MESSAGES * 2 + 5)]
    frames = list(_frames(batch))
    assert [len(f) for f in frames] == [FRAME_MESSAGES, FRAME_MESSAGES, 5]
    assert [m for f in frames for m in f] == batch


def test_a_frame_ends_before_its_text_would_pass_the_budget():
    size = FRAME_TEXT // 3  # two fit in a frame; the 64 counted per message keeps out a third
    batch = [say(k, size) for k in range(7)]
    frames = list(_frames(batch))
    assert [m for f in frames for m in f] == batch
    for frame in frames:
        assert sum(len(m["text"]) + 64 for m in frame) <= FRAME_TEXT
    assert all(len(f) == 2 for f in frames[:-1])


def test_an_oversized_message_among_others_goes_alone():
    big = say(2, FRAME_TEXT)
    batch = [say(1), big, say(3)]
    assert list(_frames(batch)) == [[batch[0]], [big], [batch[2]]]
