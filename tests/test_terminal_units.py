"""The terminal UIs' own logic, without a terminal: colours, timestamps, the toolbar, Tab,
what the UI learns from events."""

from __future__ import annotations

import re
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from client.connection import Event, RoomView
from client.render import render
from client.terminal import (
    CONTINUATION,
    PALETTE,
    PENDING_SHOWN,
    ChatState,
    Status,
    completions,
    nick_colour,
    paste_lines,
    pending_text,
    plain,
    prompt_text,
    status_fragments,
    styled,
    timestamp,
    to_ansi,
    wrap,
    wrap_text,
)

TS = 1_700_000_000.0
HHMM = time.strftime("[%H:%M]", time.localtime(TS))
OUR_SGR = re.compile(r"\x1b\[[0-9;]*m")


def msg(text: str = "hi", who: str = "bob", room: str = "lounge", **extra: Any) -> Event:
    return Event("msg", {"room": room, "seq": 1, "from": who, "text": text, "ts": TS, **extra})


# --- colours and timestamps ------------------------------------------------------------------


def test_a_nickname_has_the_same_colour_every_time_and_everywhere():
    assert nick_colour("alice") == nick_colour("alice") == "bright_green"  # crc32, not hash
    assert nick_colour("bob") == "cyan"


def test_nicknames_spread_over_the_palette_which_has_no_red():
    colours = {nick_colour(f"user{i}") for i in range(200)}
    assert colours == set(PALETTE)
    assert "red" not in PALETTE  # red means an error


def test_timestamps_are_local_hours_and_minutes_of_the_event():
    assert timestamp(TS) == HHMM
    assert timestamp(None, now=lambda: TS) == HHMM  # our own lines: now
    assert timestamp("soon", now=lambda: TS) == HHMM


# --- styled lines ----------------------------------------------------------------------------


def test_a_message_line_is_render_s_line_with_a_timestamp_and_a_coloured_nickname():
    [line] = styled(msg())
    assert plain(line) == f"{HHMM} " + render(msg())[0]
    assert ("cyan", "bob") in line
    assert line[0] == ("time", f"{HHMM} ")


def test_our_own_nickname_is_bold():
    [line] = styled(msg(who="alice"), me="alice")
    assert ("self bright_green", "alice") in line


def test_an_action_colours_the_actor():
    [line] = styled(msg("waves", me=True))
    assert plain(line).endswith("[lounge] * bob waves")
    assert ("cyan", "bob") in line


def test_the_nickname_coloured_is_the_speaker_not_a_mention_in_the_text():
    [line] = styled(msg("bob: said bob", who="bob"))
    spans = [t for s, t in line if s == "cyan"]
    assert spans == ["bob"]
    assert plain(line).endswith("[lounge] bob: bob: said bob")


def test_joins_and_leaves_are_dim_with_the_name_coloured():
    [line] = styled(Event("leave", {"room": "lounge", "seq": 2, "name": "bob", "ts": TS,
                                    "reason": "timed out"}))
    assert plain(line) == f"{HHMM} [lounge] bob left (timed out)"
    assert ("cyan", "bob") in line and ("dim", " left (timed out)") in line


def test_the_room_prefix_is_left_out_in_that_room_s_own_pane():
    [line] = styled(msg(), room_shown="lounge")
    assert plain(line) == f"{HHMM} bob: hi"
    [other] = styled(msg(), room_shown="dev")
    assert plain(other) == f"{HHMM} [lounge] bob: hi"


def test_older_messages_keep_their_own_times():
    old = TS - 3 * 3600
    event = Event("history", {"room": "lounge", "events": [
        {"kind": "msg", "room": "lounge", "seq": 1, "from": "bob", "text": "early", "ts": old}]})
    header, body, footer = styled(event, now=lambda: TS)
    assert plain(body) == time.strftime("[%H:%M]", time.localtime(old)) + \
        " [lounge] bob: early"
    assert plain(header).endswith("--- older messages of lounge ---")
    assert ("cyan", "bob") in body


def test_errors_are_red():
    [line] = styled(Event("error", {"cmd": "join", "code": "x", "text": "No such room"}))
    assert ("error", "No such room") in line
    assert "\x1b[31mNo such room\x1b[0m" in to_ansi(line)


def test_without_colour_a_line_is_plain_text():
    [line] = styled(msg())
    assert to_ansi(line, colour=False) == plain(line)


@given(st.text(min_size=1, max_size=30), st.text(max_size=60), st.text(max_size=30))
def test_nothing_another_user_chose_reaches_the_terminal_as_a_control(who, text, room):
    for event in (msg(text, who=who, room=room), msg(text, who=who, me=True),
                  Event("join", {"room": room, "seq": 1, "name": who, "ts": TS}),
                  Event("dm", {"from": who, "to": [who, "x"], "text": text, "ts": TS})):
        for line in styled(event, me=who, room_shown=room):
            shown = OUR_SGR.sub("", to_ansi(line))
            assert shown.isprintable(), shown


# --- what the UI learns from events ----------------------------------------------------------


def reply(cmd: str, **data: Any) -> Event:
    return Event("reply", {"cmd": cmd, **data})


def test_members_are_the_librarys_view_of_each_room_sorted_for_display():
    view = RoomView("lounge", b"t", seq=3, oldest=1, heard=0.0, members=["bob", "Alice"])
    s = ChatState({"lounge": view})
    assert s.members_of("lounge") == ["Alice", "bob"]
    view.members.append("carol")  # the library applied a join
    assert s.members_of("lounge") == ["Alice", "bob", "carol"]
    assert s.members_of("elsewhere") == [] and s.members_of(None) == []


def test_members_of_the_current_room_are_offered_for_completion():
    view = RoomView("lounge", b"t", seq=3, oldest=1, heard=0.0, members=["alice", "dave"])
    _, nicks, members = ChatState({"lounge": view}).names("lounge")
    assert members == ["alice", "dave"] and {"alice", "dave"} <= set(nicks)


def test_unread_counts_messages_in_rooms_other_than_the_current_one():
    s = ChatState()
    rooms = ["lounge", "dev"]
    s.observe(msg(room="lounge"), "dev", rooms)
    s.observe(msg(room="lounge"), "dev", rooms)
    s.observe(msg(room="dev"), "dev", rooms)
    s.observe(msg(room="lounge", replay=True), "dev", rooms)
    assert s.unread_counts() == {"lounge": 2}
    s.observe(reply("join", room="lounge", members=["alice"]), "lounge", rooms)
    assert s.unread_counts() == {}


def test_names_seen_feed_completion_but_only_valid_ones():
    s = ChatState()
    s.observe(reply("rooms", rooms=[{"room": "dev", "count": 1}, {"room": "bad name"}]),
              None, [])
    s.observe(reply("users", users=["bob", "carol", "\x1b[2J"]), None, [])
    s.observe(Event("dm", {"from": "dave", "to": ["alice"], "text": "hi"}), None, [])
    rooms, nicks, members = s.names(None)
    assert rooms == ["dev"]
    assert nicks == ["alice", "bob", "carol", "dave"]
    assert members == []


# --- the toolbar -----------------------------------------------------------------------------


def toolbar(**kw: Any) -> str:
    base = dict(name="alice", current="dev", rooms=("lounge", "dev"), unread={"lounge": 3},
                link="connected", lag=0.0021)
    return plain(status_fragments(Status(**{**base, **kw})))


def test_the_toolbar_shows_nickname_room_unread_counts_state_and_lag():
    assert toolbar() == " alice │ dev │ rooms: lounge(3) dev │ connected · lag 2 ms "


def test_the_toolbar_before_login_and_outside_rooms():
    assert toolbar(name=None, current=None, rooms=(), unread={}, lag=None) == \
        " (no nickname) │ lobby │ connected "


def test_the_toolbar_says_when_the_broker_is_away_and_hides_a_stale_lag():
    assert toolbar(link="reconnecting").endswith("│ reconnecting ")
    assert toolbar(link="lost").endswith("│ lost ")
    assert "lag 1.5 s" in toolbar(lag=1.5)


def test_the_toolbar_cleans_names():
    assert "^[[2J" in toolbar(name="\x1b[2J")


# --- Tab -------------------------------------------------------------------------------------


def tab(before: str, current: str | None = "lounge", me: str = "alice") -> list[str]:
    start, found = completions(before, current, rooms=["lounge", "dev", "dungeon"],
                               nicks=["alice", "bob", "Bea", "carol"], members=["carol"],
                               me=me)
    return [before[:start] + c.text for c in found]


def test_tab_completes_command_names_with_their_aliases():
    assert tab("/jo") == ["/join "]
    assert tab("/h") == ["/history ", "/help "]
    assert tab("/qui") == ["/quit"]  # nothing follows: no space
    assert tab("/qu") == ["/query ", "/quit"]
    assert tab("/ex") == ["/exit"]


def test_in_the_lobby_commands_complete_without_the_slash():
    assert tab("jo", current=None) == ["join "]
    assert tab("/jo", current=None) == ["/join "]


def test_tab_completes_rooms_where_a_command_takes_a_room():
    assert tab("/join d") == ["/join dev", "/join dungeon"]
    assert tab("/leave lo") == ["/leave lounge"]
    assert tab("join lo", current=None) == ["join lounge"]


def test_tab_completes_nicknames_where_a_command_takes_a_name():
    assert tab("/whisper b") == ["/whisper Bea", "/whisper bob"]
    assert tab("/msg bob,c") == ["/msg bob,carol"]


def test_tab_completes_the_command_help_explains():
    assert tab("/help wh") == ["/help who", "/help whisper"]  # in the table's order


def test_in_a_chat_line_tab_completes_nicknames_members_first_and_never_me():
    assert tab("c") == ["carol: "]
    assert tab("a") == []  # alice is me
    assert tab("hi b") == ["hi Bea", "hi bob"]
    assert tab("") == ["carol: ", "Bea: ", "bob: "]


def test_nothing_to_complete_after_a_free_text_argument():
    assert tab("/broadcast hello th") == []
    assert tab("//jo") == []  # a chat line starting with a slash


# --- screen lines: long lines are cut, and every continuation is marked -------------------


def _cells(text: str) -> int:
    from wcwidth import wcswidth

    return wcswidth(text)


def test_a_line_that_fits_is_left_alone():
    line = styled(msg("short"))[0]
    assert wrap(line, 80) == [line]


def test_a_long_line_is_cut_below_the_width_and_each_continuation_is_marked():
    text = "[lounge] bob: " + "word " * 60
    parts = wrap_text(text, 40)
    assert len(parts) > 1 and "".join(
        p.removeprefix(CONTINUATION) for p in parts) == text
    assert all(_cells(p) < 40 for p in parts)
    assert all(p.startswith(CONTINUATION) for p in parts[1:])


def test_padding_cannot_start_a_screen_line_with_text_that_looks_like_a_message():
    fake = "[12:00] [lounge] alice: hi"
    for width in range(20, 120):
        parts = wrap_text("[lounge] mallory: x" + " " * 200 + fake, width)
        assert all(p.startswith(CONTINUATION) for p in parts[1:])
        assert not [p for p in parts[1:] if p.lstrip().startswith("[12:00]")
                    and not p.startswith(CONTINUATION)]


def test_wide_characters_count_double():
    parts = wrap_text("日本語" * 20, 21)
    assert all(_cells(p) < 21 for p in parts)
    assert "".join(p.removeprefix(CONTINUATION) for p in parts) == "日本語" * 20


def test_styles_are_kept_across_the_cut():
    line = styled(msg("x" * 100))[0]
    parts = wrap(line, 50)
    assert "".join(plain(p).removeprefix(CONTINUATION) for p in parts) == plain(line)
    assert parts[1][0] == ("dim", CONTINUATION)


@given(st.text(max_size=300), st.integers(min_value=10, max_value=200))
def test_wrapping_loses_nothing_and_never_overflows(text, width):
    parts = wrap_text(text, width)
    assert "".join([parts[0]] + [p.removeprefix(CONTINUATION) for p in parts[1:]]) == text
    assert all(sum(max(0, _cells(ch)) for ch in p) < width for p in parts)


# --- pending lines, pastes, the prompt ----------------------------------------------------


def test_pending_lines_are_shown_then_counted():
    lines = [f"line {i}" for i in range(5)]
    assert pending_text(lines, 0, 80) == [
        "(pending) line 0", "(pending) line 1", "(pending) line 2",
        f"(pending) … and {5 - PENDING_SHOWN} more"]
    assert pending_text([], 0, 80) == []


def test_a_long_backlog_says_how_many_lines_are_queued():
    assert pending_text(["a"] * 150, 150, 80)[-1] == "sending 150 queued lines…"
    assert "queued" not in " ".join(pending_text(["a"] * 3, 3, 80))


def test_pending_lines_are_cleaned_and_cut_to_one_screen_line():
    [line] = pending_text(["\x1b[2J" + "x" * 200], 0, 40)
    assert line.startswith("(pending) ^[[2J") and line.endswith("…") and len(line) < 40


def test_a_paste_is_one_message_per_line_around_the_cursor():
    assert paste_lines("start: ", "one\r\ntwo\n\n  \nthree", " end") == [
        "start: one", "two", "three end"]
    assert paste_lines("", "one\rtwo\n", "") == ["one", "two"]


def test_the_prompt_names_the_query_when_there_is_one():
    class Conn:
        current, name = "lounge", "alice"
    assert prompt_text(Conn()) == "[lounge] "
    assert prompt_text(Conn(), "bob") == "[query bob] "
