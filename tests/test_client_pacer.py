"""The client's mirror of the broker's rate limits, on a clock the test moves."""

from __future__ import annotations

import pytest

from client.connection import Pacer, parse_address


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pacer(**limits: float) -> tuple[Pacer, Clock]:
    clock = Clock()
    p = Pacer(clock)
    p.configure({"rate": 20.0, "burst": 100, "delivery_rate": 1000.0,
                 "delivery_burst": 5000.0, **limits})
    return p, clock


def sent_at_once(p: Pacer, characters: int = 0) -> int:
    n = 0
    while p.take(characters):
        n += 1
    return n


def test_a_burst_a_margin_below_the_broker_s_less_the_hello():
    p, _ = pacer()
    assert sent_at_once(p) == 100 - 10 - 1  # the hello took one


def test_then_a_rate_a_margin_below_the_broker_s():
    p, clock = pacer()
    sent_at_once(p)
    assert p.wait(0) == pytest.approx(1 / 18)
    clock.now += 10.0
    assert sent_at_once(p) == 90  # 180 earned, capped at the burst
    clock.now += 1.0
    assert sent_at_once(p) == 18


def test_no_limit_announced_or_a_rate_of_zero_means_no_pacing():
    for limits in ({"rate": 0}, {"rate": None}, {"rate": True}):
        p, _ = pacer(**limits)
        assert all(p.take(10**9) for _ in range(1000))
        assert p.wait(10**9) == 0.0


def test_characters_delivered_are_paced_too():
    p, clock = pacer()
    assert sent_at_once(p, 1000) == 4  # 4500 of the 5000 the broker allows at once
    assert p.wait(1000) == pytest.approx((1000 - 500) / 900)
    clock.now += 1000 / 900
    assert p.take(1000) and not p.take(1000)


def test_a_request_bigger_than_our_margin_waits_for_a_full_bucket_then_goes():
    p, clock = pacer()
    assert p.take(4800)  # over our 4500 but within the broker's 5000: a full bucket
    assert not p.take(4800)  # in debt now
    assert p.wait(4800) == pytest.approx((4500 + 300) / 900)  # until full again
    clock.now += 5.0
    assert not p.take(4800)
    clock.now += 0.4
    assert p.take(4800)


def test_a_history_page_read_is_owed_and_paid_back_before_more_goes():
    p, clock = pacer()
    p.owe(6000)  # more than the bucket: in debt
    assert not p.take(0)
    assert p.wait(0) == pytest.approx((6000 - 4500) / 900)
    clock.now += 2.0
    assert p.take(0)


def test_a_reconnect_keeps_what_was_spent():
    p, _ = pacer()
    sent_at_once(p)
    p.configure({"rate": 20.0, "burst": 100})  # the resumed session's hello
    assert not p.take(0)


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:5555", "tcp://127.0.0.1:5555"),
    ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
    ("localhost:80", "tcp://localhost:80"),
    ("[::1]:5555", "tcp://[::1]:5555"),
])
def test_addresses_with_or_without_tcp(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "nonsense", "127.0.0.1", "127.0.0.1:", ":5555",
                                  "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x",
                                  "udp://127.0.0.1:5555", "tcp://a/b:5", "::1:5555",
                                  "127.0.0.1:５５"])
def test_anything_else_is_refused_in_one_line(text):
    with pytest.raises(ValueError) as refused:
        parse_address(text)
    assert "\n" not in str(refused.value) and "HOST:PORT" in str(refused.value)


def test_a_ui_thread_asking_how_much_waits_never_sees_the_queues_change_under_it():
    """The full-screen client asks ``queued`` and ``busy`` from its own thread while the
    network thread sends and answers: that once crashed it ("deque mutated during
    iteration"). Here the change happens in the middle of the count, every time."""
    import zmq

    from client.connection import Connection, _Outgoing, _Pending

    ctx = zmq.Context()
    conn = Connection("tcp://127.0.0.1:9", ctx=ctx)
    try:
        for rid in range(1, 4):  # three lines waiting for the rate limit
            conn._pending[rid] = _Pending("say", {"text": f"line {rid}"}, "user")
            conn._outbox.append(_Outgoing(rid, "say", {"text": f"line {rid}"}, False))
        assert conn.queued == 3 and conn.busy

        class Meddling(dict):  # a network thread's work, landing mid-count
            def get(self, key, default=None):
                conn._outbox.append(conn._outbox[0])
                self[max(self) + 1] = _Pending("say", {}, "user")
                return super().get(key, default)

            def values(self):
                self[max(self) + 1] = _Pending("say", {}, "user")
                return super().values()

        conn._pending = Meddling(conn._pending)
        assert conn.queued >= 3
        assert conn.busy
    finally:
        conn.close()
        ctx.term()
