"""Make the README's pictures of both terminal modes, from a real session.

A broker and two scripted people (bob, carol) are started as in the tests; alice runs
``python -m client`` (line mode), then ``python -m client --tui``, each in a tmux pane.
The pane is read back with its colours (``tmux capture-pane -e``) and drawn to a PNG
with Pillow and DejaVu Sans Mono; a plain-text copy is kept beside it.

    python docs/screenshots/capture.py        # needs tmux and Pillow
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Client, start_broker  # noqa: E402

FONTS = Path("/usr/share/fonts/truetype/dejavu")
SIZE = 15
DEFAULT_FG, DEFAULT_BG = (208, 208, 208), (24, 24, 28)
BASIC = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200),
         (188, 63, 188), (17, 168, 205), (229, 229, 229), (102, 102, 102), (241, 76, 76),
         (35, 209, 139), (245, 245, 67), (59, 142, 234), (214, 112, 214), (41, 184, 219),
         (255, 255, 255)]


def colour_256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return BASIC[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    grey = 8 + (n - 232) * 10
    return grey, grey, grey


class Pen:
    """The SGR state of a terminal while it reads the captured text."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fg: tuple[int, int, int] | None = None
        self.bg: tuple[int, int, int] | None = None
        self.bold = self.dim = self.underline = self.reverse = False

    def apply(self, params: list[int]) -> None:
        i = 0
        while i < len(params):
            p = params[i]
            if p == 0:
                self.reset()
            elif p == 1:
                self.bold = True
            elif p == 2:
                self.dim = True
            elif p == 22:
                self.bold = self.dim = False
            elif p == 4:
                self.underline = True
            elif p == 24:
                self.underline = False
            elif p == 7:
                self.reverse = True
            elif p == 27:
                self.reverse = False
            elif p in (38, 48) and i + 1 < len(params):
                if params[i + 1] == 5 and i + 2 < len(params):
                    rgb, i = colour_256(params[i + 2]), i + 2
                elif params[i + 1] == 2 and i + 4 < len(params):
                    rgb, i = (params[i + 2], params[i + 3], params[i + 4]), i + 4
                else:
                    rgb = None
                if p == 38:
                    self.fg = rgb
                else:
                    self.bg = rgb
            elif p == 39:
                self.fg = None
            elif p == 49:
                self.bg = None
            elif 30 <= p <= 37:
                self.fg = BASIC[p - 30]
            elif 40 <= p <= 47:
                self.bg = BASIC[p - 40]
            elif 90 <= p <= 97:
                self.fg = BASIC[p - 90 + 8]
            elif 100 <= p <= 107:
                self.bg = BASIC[p - 100 + 8]
            i += 1

    def colours(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        fg, bg = self.fg or DEFAULT_FG, self.bg or DEFAULT_BG
        if self.reverse:
            fg, bg = bg, fg
        if self.dim:
            fg = tuple((c + b) // 2 for c, b in zip(fg, bg, strict=True))  # type: ignore
        return fg, bg


SGR = re.compile(r"\x1b\[([0-9;]*)m")


def to_png(captured: str, path: Path, title: str) -> None:
    regular = ImageFont.truetype(str(FONTS / "DejaVuSansMono.ttf"), SIZE)
    bold = ImageFont.truetype(str(FONTS / "DejaVuSansMono-Bold.ttf"), SIZE)
    cw, ch = int(regular.getlength("M")), int(SIZE * 1.3)
    lines = captured.rstrip("\n").split("\n")
    cols = max(len(SGR.sub("", ln)) for ln in lines)
    pad, bar = 14, 30
    img = Image.new("RGB", (cols * cw + 2 * pad, len(lines) * ch + 2 * pad + bar),
                    DEFAULT_BG)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, img.width, bar), fill=(48, 48, 54))
    for n, colour in enumerate([(237, 106, 94), (245, 191, 79), (98, 197, 84)]):
        draw.ellipse((12 + n * 20, 9, 24 + n * 20, 21), fill=colour)
    draw.text((img.width // 2, bar // 2), title, fill=(200, 200, 200), font=regular,
              anchor="mm")
    pen = Pen()
    for row, line in enumerate(lines):
        x, y = pad, bar + pad + row * ch
        pieces = SGR.split(line)  # text, parameters, text, parameters, ..., text
        for n, piece in enumerate(pieces):
            if n % 2:
                pen.apply([int(p) for p in piece.split(";") if p] or [0])
                continue
            for char in piece:
                fg, bg = pen.colours()
                draw.rectangle((x, y, x + cw, y + ch), fill=bg)
                draw.text((x, y + 2), char, fill=fg, font=bold if pen.bold else regular)
                if pen.underline:
                    draw.line((x, y + ch - 2, x + cw, y + ch - 2), fill=fg)
                x += cw
    img.save(path)


class Pane:
    def __init__(self, command: list[str], width: int, height: int):
        self.dir = tempfile.mkdtemp(prefix="zchat-tmux-")
        self.socket = os.path.join(self.dir, "s")
        env = {"PYTHONPATH": str(ROOT), "ZCHAT_KEYS": os.environ["ZCHAT_KEYS"],
               "TERM": "xterm-256color", "LANG": "C.UTF-8", "COLORTERM": "truecolor"}
        assignments = shlex.join(f"{k}={v}" for k, v in env.items())
        self.tmux("new-session", "-d", "-x", str(width), "-y", str(height),
                  f"cd {shlex.quote(str(ROOT))} && env {assignments} {shlex.join(command)}; "
                  "sleep 60")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def wait_for(self, test: Callable[[str], bool] | str, timeout: float = 10) -> None:
        check = test if callable(test) else (lambda screen: test in screen)
        deadline = time.monotonic() + timeout
        while not check(self.tmux("capture-pane", "-p")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{test!r} never appeared")
            time.sleep(0.05)

    def line(self, text: str, then: str = "") -> None:
        self.tmux("send-keys", "-l", text)
        self.tmux("send-keys", "Enter")
        if then:
            self.wait_for(then)

    def capture(self, name: str, title: str) -> None:
        coloured = self.tmux("capture-pane", "-p", "-e", "-N")  # -N: trailing cells too
        (HERE / f"{name}.txt").write_text(self.tmux("capture-pane", "-p"))
        to_png(coloured, HERE / f"{name}.png", title)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def session(broker_router: str, mode: list[str], name: str, title: str,
            width: int, height: int) -> None:
    bob, carol = Client(broker_router), Client(broker_router)
    bob.send("login bob", "/create lounge")
    bob.event("reply", cmd="create")
    carol.send("login carol", "/create dev", "/join lounge")
    carol.event("reply", cmd="join")
    alice = Pane([sys.executable, "-m", "client", "--server", broker_router, "--name",
                  "alice", *mode], width, height)
    try:
        alice.wait_for("alice")
        time.sleep(1.5)  # let a full-screen app settle before it is typed into
        alice.line("/join dev", then="Joined dev")
        alice.line("/join lounge", then="Joined lounge")
        bob.send("morning all! the 1.2 release is out")
        alice.wait_for("release is out")
        carol.send("/me cheers")
        alice.wait_for("cheers")
        alice.line("nice work bob", then="alice: nice work bob")
        carol.send("/join dev", "who is reviewing the TUI patch?")
        bob.send("I can take it after lunch")
        alice.wait_for("after lunch")
        alice.tmux("send-keys", "-l", "thanks b")
        alice.tmux("send-keys", "Tab")  # Tab completes the name: "thanks bob"
        alice.wait_for("thanks bob")
        alice.tmux("send-keys", "-l", ", see you at")
        time.sleep(1.2)  # the toolbar's lag appears on the next repaint
        alice.capture(name, title)
    finally:
        alice.close()
        bob.kill()
        carol.kill()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(os.path.join(tmp, "zchat.db"))
        try:
            session(broker.router, [], "line-mode", "python -m client", 100, 22)
        finally:
            broker.stop()
        broker = start_broker(os.path.join(tmp, "zchat2.db"))
        try:
            session(broker.router, ["--tui"], "tui-mode", "python -m client --tui", 118, 26)
        finally:
            broker.stop()
    print("wrote", *sorted(p.name for p in HERE.iterdir() if p.suffix in (".png", ".txt")))


if __name__ == "__main__":
    main()
