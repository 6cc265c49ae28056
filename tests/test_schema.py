"""The wire schema: what decode() accepts, and the exact refusal for everything else.

No sockets: frames are built with msgpack and handed to the codec directly.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schema import (
    ERRORS,
    ProtocolError,
    Request,
    decode,
    decode_admin,
    error,
    messages,
    ok,
    pack,
    parse,
    request,
)
from schema import protocol as P


def frame(cmd: str, rid: int = 1, **fields: Any) -> bytes:
    return pack({"id": rid, "cmd": cmd, **fields})


def assert_args(got: Request, expected: dict[str, Any]) -> None:
    """The fields given come through; every other field of the kind is absent (None)."""
    assert {k: got.args.get(k) for k in expected} == expected
    assert all(v is None for k, v in got.args.items() if k not in expected), got.args


def refusal(data: bytes, admin: bool = False) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        (decode_admin if admin else decode)(data)
    return caught.value


# --- Every client kind with valid fields ----------------------------------------------------

VALID_CLIENT_REQUESTS = [
    ("hello", {"version": 1}, {"version": 1, "client": None}),
    ("hello", {"version": 1, "client": "c0ffee"}, {"version": 1, "client": "c0ffee"}),
    ("ping", {}, {}),
    ("login", {"name": "alice"}, {"name": "alice"}),
    ("logout", {}, {}),
    ("users", {}, {}),
    ("rooms", {}, {}),
    ("create", {"room": "lounge"}, {"room": "lounge", "name": None}),
    ("create", {"room": "lounge", "name": "bob"}, {"room": "lounge", "name": "bob"}),
    ("join", {"room": "lounge"}, {"room": "lounge", "name": None}),
    ("join", {"room": "lounge", "name": "bob"}, {"room": "lounge", "name": "bob"}),
    ("leave", {"room": "lounge"}, {"room": "lounge"}),
    ("who", {"room": "lounge"}, {"room": "lounge"}),
    ("say", {"room": "lounge", "text": "hi"}, {"room": "lounge", "text": "hi", "me": None}),
    ("say", {"room": "lounge", "text": "waves", "me": True},
     {"room": "lounge", "text": "waves", "me": True}),
    ("whisper", {"room": "lounge", "to": "bob", "text": "psst"},
     {"room": "lounge", "to": "bob", "text": "psst"}),
    ("msg", {"to": ["bob"], "text": "hi"}, {"to": ["bob"], "text": "hi"}),
    ("msg", {"to": ["bob", "carol"], "text": "hi"}, {"to": ["bob", "carol"], "text": "hi"}),
    ("broadcast", {"text": "hello all"}, {"text": "hello all"}),
    ("history", {"room": "lounge"},
     {"room": "lounge", "before": None, "after": None, "limit": None}),
    ("history", {"room": "lounge", "before": 10, "after": 2, "limit": 5},
     {"room": "lounge", "before": 10, "after": 2, "limit": 5}),
    ("bye", {}, {}),
]


@pytest.mark.parametrize(("cmd", "fields", "args"), VALID_CLIENT_REQUESTS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(VALID_CLIENT_REQUESTS)])
def test_decode_accepts_every_client_kind_with_valid_fields(cmd, fields, args):
    got = decode(frame(cmd, rid=42, **fields))
    assert isinstance(got, Request)
    assert (got.id, got.cmd) == (42, cmd)
    assert_args(got, args)


ISSUE_2_KINDS = {"hello", "ping", "login", "logout", "users", "rooms", "create", "join",
                 "leave", "who", "say", "whisper", "msg", "broadcast", "history", "bye"}


def test_every_client_kind_of_the_product_spec_has_a_valid_example_above():
    assert ISSUE_2_KINDS <= set(P.CLIENT_REQUESTS)
    assert {cmd for cmd, _, _ in VALID_CLIENT_REQUESTS} == ISSUE_2_KINDS


def test_request_builder_leaves_out_absent_optionals_and_round_trips():
    built = request(7, "say", room="lounge", text="hi", me=None)
    assert built == {"id": 7, "cmd": "say", "room": "lounge", "text": "hi"}
    got = decode(pack(built))
    assert (got.id, got.cmd) == (7, "say")
    assert_args(got, {"room": "lounge", "text": "hi", "me": None})


def test_parse_validates_an_already_decoded_map_like_decode():
    got = parse({"id": 3, "cmd": "login", "name": "alice"})
    assert (got.id, got.cmd) == (3, "login")
    assert_args(got, {"name": "alice"})


def test_fields_outside_the_kind_are_ignored():
    got = decode(frame("login", name="alice", colour="blue"))
    assert "colour" not in got.args
    assert_args(got, {"name": "alice"})


def test_largest_request_id_is_accepted():
    assert decode(frame("ping", rid=(1 << 63) - 1)).id == (1 << 63) - 1
    assert decode(frame("ping", rid=0)).id == 0


# --- Replies ---------------------------------------------------------------------------------


def test_ok_reply_echoes_the_id_and_carries_the_fields():
    assert ok(5, name="alice") == {"re": 5, "ok": True, "name": "alice"}


def test_error_reply_carries_code_and_the_standard_text_by_default():
    assert error(5, ProtocolError("bad_username")) == {
        "re": 5, "ok": False, "code": "bad_username", "error": "Bad username"}
    assert error(None, ProtocolError("no_such_user", "No such user: zed"))["error"] == (
        "No such user: zed")


def test_exact_texts_named_by_the_spec():
    assert ERRORS["bad_username"] == "Bad username"
    assert ERRORS["bad_message"] == "Bad message"
    assert ERRORS["invalid_command"] == "Invalid command"


# --- Frames that are not a request map ------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"\xc1",  # the one byte msgpack never uses
    b"\x92\x01",  # an array of two with only one element
    b"\x81\xa2id",  # a map cut short
    b"\xa1\xff",  # a str that is not UTF-8
    b"",
], ids=["never-used", "truncated-array", "truncated-map", "bad-utf8", "empty"])
def test_bytes_that_are_not_msgpack_are_malformed(data):
    assert refusal(data).code == "malformed"


@pytest.mark.parametrize("value", [104, "ping", [1, "ping"], None, 1.5, True, b"id"],
                         ids=repr)
def test_msgpack_that_is_not_a_map_is_malformed(value):
    assert refusal(msgpack.packb(value, use_bin_type=True)).code == "malformed"


def test_the_byte_h_decodes_to_an_int_and_is_refused_as_malformed():
    err = refusal(b"h")
    assert err.code == "malformed"
    assert err.text == "A request must be a map"


def test_map_with_non_string_keys_is_malformed():
    assert refusal(msgpack.packb({1: "ping"})).code == "malformed"


@pytest.mark.parametrize("rid", [None, "1", -1, 1.0, True, False, 1 << 63, [1]], ids=repr)
def test_a_request_needs_a_non_negative_integer_id(rid):
    fields = {"cmd": "ping"} if rid is None else {"id": rid, "cmd": "ping"}
    err = refusal(pack(fields))
    assert err.code == "malformed"
    assert err.text == "A request needs an integer id"


@pytest.mark.parametrize("cmd", [None, 1, b"ping", ["ping"]], ids=repr)
def test_a_request_needs_a_string_cmd(cmd):
    fields = {"id": 1} if cmd is None else {"id": 1, "cmd": cmd}
    err = refusal(pack(fields))
    assert err.code == "malformed"
    assert err.text == "A request needs a string cmd"


@pytest.mark.parametrize("cmd", ["", "PING", "nosuch", "kill", "stats", "_hello", "__init__"])
def test_an_unknown_cmd_is_unknown_command(cmd):
    assert refusal(frame(cmd)).code == "unknown_command"


@pytest.mark.parametrize("cmd", ["say", "hello", "login", "join"])
def test_client_kinds_are_unknown_on_the_admin_socket(cmd):
    assert refusal(frame(cmd), admin=True).code == "unknown_command"


@pytest.mark.parametrize(("cmd", "fields", "missing"), [
    ("hello", {}, "version"),
    ("login", {}, "name"),
    ("create", {"name": "bob"}, "room"),
    ("say", {"room": "lounge"}, "text"),
    ("say", {"text": "hi"}, "room"),
    ("whisper", {"room": "lounge", "text": "hi"}, "to"),
    ("msg", {"text": "hi"}, "to"),
    ("msg", {"to": ["bob"]}, "text"),
    ("broadcast", {}, "text"),
    ("history", {}, "room"),
    ("login", {"name": None}, "name"),  # nil is absent
])
def test_a_missing_required_field_is_invalid_command(cmd, fields, missing):
    err = refusal(frame(cmd, **fields))
    assert err.code == "invalid_command"
    assert err.text == f"Missing field: {missing}"


@pytest.mark.parametrize(("cmd", "fields"), [
    ("login", {"name": 5}),  # int for str
    ("login", {"name": b"alice"}),  # bin for str
    ("login", {"name": ["alice"]}),
    ("say", {"room": "lounge", "text": 7}),
    ("msg", {"to": "bob", "text": "hi"}),  # str for list
    ("msg", {"to": {"bob": 1}, "text": "hi"}),
    ("hello", {"version": True}),  # bool for int
    ("hello", {"version": 1.0}),
    ("hello", {"version": "1"}),
    ("history", {"room": "lounge", "limit": True}),
    ("history", {"room": "lounge", "before": 1.5}),
    ("say", {"room": "lounge", "text": "hi", "me": 1}),  # int for bool
    ("say", {"room": "lounge", "text": "hi", "me": "yes"}),
])
def test_a_field_of_the_wrong_type_is_invalid_command(cmd, fields):
    err = refusal(frame(cmd, **fields))
    assert err.code == "invalid_command"
    assert err.text.startswith("Field ")


# --- Value rules -----------------------------------------------------------------------------


def test_text_of_65535_characters_is_accepted():
    text = "x" * P.TEXT_MAX
    assert decode(frame("broadcast", text=text)).args["text"] == text


@pytest.mark.parametrize("cmd", ["say", "whisper", "msg", "broadcast"])
def test_text_of_65536_characters_is_a_bad_message(cmd):
    fields = {"say": {"room": "r"}, "whisper": {"room": "r", "to": "bob"},
              "msg": {"to": ["bob"]}, "broadcast": {}}[cmd]
    assert refusal(frame(cmd, text="x" * (P.TEXT_MAX + 1), **fields)).code == "bad_message"


def test_empty_text_is_a_bad_message():
    assert refusal(frame("say", room="r", text="")).code == "bad_message"


@pytest.mark.parametrize("name", ["a", "x" * 20, "Bob", "b0b_the-1st", "Zoë", "日本語",
                                  "a.b@c", "bob/2"])
def test_valid_nicknames_are_accepted(name):
    assert decode(frame("login", name=name)).args["name"] == name


@pytest.mark.parametrize("name", [
    "", "x" * 21, "a b", "a\tb", "a\nb", "a,b", "bob,", "a\x1bb", "a\x00", "a\x7f",
    "a\u00a0b",  # no-break space is white space
    "a\u200bb",  # zero-width space is not printable
    "/bob", "#!bob",
], ids=repr)
def test_invalid_nicknames_are_bad_username(name):
    assert refusal(frame("login", name=name)).code == "bad_username"


@pytest.mark.parametrize(("cmd", "fields"), [
    ("create", {"room": "r", "name": "a b"}),
    ("join", {"room": "r", "name": "x" * 21}),
    ("whisper", {"room": "r", "to": "a,b", "text": "hi"}),
])
def test_every_nickname_field_follows_the_nickname_rules(cmd, fields):
    assert refusal(frame(cmd, **fields)).code == "bad_username"


@pytest.mark.parametrize("room", ["r", "x" * 32, "dev-ops_2", "café"])
def test_valid_room_names_are_accepted(room):
    assert decode(frame("join", room=room)).args["room"] == room


@pytest.mark.parametrize("room", ["", "x" * 33, "a b", "a,b", "a\x00b", "a\x1b", "/r", "#!r"],
                         ids=repr)
@pytest.mark.parametrize("cmd", ["create", "join", "leave", "who", "history"])
def test_invalid_room_names_are_bad_room_name(cmd, room):
    assert refusal(frame(cmd, room=room)).code == "bad_room_name"


def test_msg_to_twenty_names_is_accepted():
    names = [f"u{i}" for i in range(P.RECIPIENTS_MAX)]
    assert decode(frame("msg", to=names, text="hi")).args["to"] == names


@pytest.mark.parametrize("to", [
    [],
    [f"u{i}" for i in range(P.RECIPIENTS_MAX + 1)],
    [5],
    ["bob", 5],
    ["bob", None],
    [b"bob"],
    [["bob"]],
    ["bob", "a b"],
    ["x" * 21],
], ids=["empty", "21-names", "int", "str-and-int", "nil-item", "bin-item", "nested",
        "spaced-name", "long-name"])
def test_bad_msg_recipients_are_bad_username(to):
    assert refusal(frame("msg", to=to, text="hi")).code == "bad_username"


@pytest.mark.parametrize(("fields", "ok_"), [
    ({"limit": 1}, True), ({"limit": P.HISTORY_PAGE_MAX}, True),
    ({"limit": 0}, False), ({"limit": P.HISTORY_PAGE_MAX + 1}, False), ({"limit": -1}, False),
    ({"before": 0}, True), ({"after": (1 << 63) - 1}, True),
    ({"before": -1}, False), ({"after": -5}, False), ({"after": 1 << 63}, False),
])
def test_history_bounds(fields, ok_):
    data = frame("history", room="r", **fields)
    if ok_:
        assert decode(data).args["room"] == "r"
    else:
        assert refusal(data).code == "invalid_command"


@pytest.mark.parametrize("client", ["", "x" * (P.CLIENT_ID_MAX + 1)], ids=["empty", "long"])
def test_hello_client_id_is_bounded(client):
    assert refusal(frame("hello", version=1, client=client)).code == "invalid_command"


def test_ext_type_in_a_field_is_malformed():
    data = msgpack.packb({"id": 1, "cmd": "login", "name": msgpack.ExtType(5, b"alice")})
    assert refusal(data).code == "malformed"


def test_ext_type_in_an_ignored_field_is_still_malformed():
    data = msgpack.packb({"id": 1, "cmd": "ping", "x": msgpack.ExtType(1, b"")})
    assert refusal(data).code == "malformed"


def test_timestamp_ext_type_is_refused_like_every_ext_type():
    data = msgpack.packb({"id": 1, "cmd": "ping", "x": msgpack.Timestamp(1, 0)})
    assert refusal(data).code == "malformed"


# --- Admin kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cmd", "fields", "args"), [
    ("ls", {}, {}),
    ("users", {}, {}),
    ("stats", {}, {}),
    ("kill", {"room": "lounge"}, {"room": "lounge", "reason": None}),
    ("kill", {"room": "lounge", "reason": "spam"}, {"room": "lounge", "reason": "spam"}),
    ("kick", {"name": "bob"}, {"name": "bob", "reason": None}),
    ("kick", {"name": "bob", "reason": "flooding"}, {"name": "bob", "reason": "flooding"}),
])
def test_decode_admin_accepts_every_admin_kind(cmd, fields, args):
    got = decode_admin(frame(cmd, rid=9, **fields))
    assert (got.id, got.cmd) == (9, cmd)
    assert_args(got, args)


@pytest.mark.parametrize(("cmd", "fields", "code"), [
    ("kill", {}, "invalid_command"),
    ("kill", {"room": "a b"}, "bad_room_name"),
    ("kill", {"room": "r", "reason": "x" * (P.REASON_MAX + 1)}, "bad_reason"),
    ("kill", {"room": "r", "reason": "bye\x1b[2J"}, "bad_reason"),
    ("kill", {"room": "r", "reason": 3}, "invalid_command"),
    ("kick", {}, "invalid_command"),
    ("kick", {"name": "x" * 21}, "bad_username"),
    ("kick", {"name": "bob", "reason": "line\nbreak"}, "bad_reason"),
    ("nosuch", {}, "unknown_command"),
])
def test_decode_admin_refusals(cmd, fields, code):
    assert refusal(frame(cmd, **fields), admin=True).code == code


def test_reason_of_200_characters_is_accepted():
    reason = "x" * P.REASON_MAX
    assert decode_admin(frame("kill", room="r", reason=reason)).args["reason"] == reason


# --- Property: nothing but a Request or a ProtocolError --------------------------------------

_scalars = (st.none() | st.booleans()
            | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
            | st.floats(allow_nan=True) | st.text(max_size=30) | st.binary(max_size=30))
_packable = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=8,
)
# Maps shaped like requests, so the property reaches field validation too.
_request_like = st.fixed_dictionaries(
    {"id": st.integers(min_value=-2, max_value=(1 << 64) - 1) | _scalars,
     "cmd": st.sampled_from(sorted(P.CLIENT_REQUESTS) + sorted(P.ADMIN_REQUESTS)) | _scalars},
    optional={name: _scalars | st.lists(st.text(max_size=22), max_size=22) for name in
              ("version", "client", "name", "room", "text", "me", "to", "before", "after",
               "limit", "reason")},
)
_PROPERTY = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_refuses(data: bytes) -> None:
    for decoder in (decode, decode_admin):
        try:
            result = decoder(data)
        except ProtocolError as err:
            assert err.code in ERRORS
        else:
            assert isinstance(result, Request)
            assert type(result.id) is int and result.id >= 0


@_PROPERTY
@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_returns_a_request_or_raises_protocol_error(data):
    _decodes_or_refuses(data)


@_PROPERTY
@given(_packable | _request_like)
def test_decode_of_arbitrary_msgpack_returns_a_request_or_raises_protocol_error(value):
    _decodes_or_refuses(msgpack.packb(value, use_bin_type=True))


# --- broker frames: arrays of messages ----------------------------------------------------


def test_messages_are_the_maps_of_an_array_frame_in_order():
    frame = pack([{"re": 1, "ok": True}, {"ev": "dm", "text": "hi"}])
    assert messages(frame) == [{"re": 1, "ok": True}, {"ev": "dm", "text": "hi"}]


@pytest.mark.parametrize("frame", [
    pack({"re": 1, "ok": True}),  # a single map is no broker frame (protocol 1 sent those)
    b"\xc1",  # undecodable
    b"",
    pack("text"),
    msgpack.packb(msgpack.ExtType(1, b"x")),
])
def test_messages_of_anything_but_an_array_are_none(frame):
    assert messages(frame) == []


def test_messages_skip_array_items_that_are_not_maps():
    assert messages(pack([1, {"ev": "tick"}, "x", None])) == [{"ev": "tick"}]

