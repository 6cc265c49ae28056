"""A progress bar while a run goes: tqdm if it is installed, else one plain stderr line."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, total: float, *, enabled: bool = True, label: str = ""):
        self.total, self.enabled, self.label = total, enabled, label
        self._bar: Any = None
        self._last_plain = -1.0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=round(total, 1), desc=label, unit="s", leave=False,
                         bar_format="{desc} {bar} {n:.0f}/{total:.0f} s {postfix}",
                         file=sys.stderr)

    def update(self, elapsed: float, **figures: float) -> None:
        if not self.enabled:
            return
        text = ", ".join(f"{k} {v:,.0f}" + ("/s" if k == "deliveries" else "")
                         for k, v in figures.items())
        if self._bar is not None:
            self._bar.n = round(min(elapsed, self.total), 1)
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()
        elif elapsed - self._last_plain >= 1.0:  # plain: one line a second, overwritten
            self._last_plain = elapsed
            end = "\r" if sys.stderr.isatty() else "\n"
            print(f"{self.label}: {elapsed:4.0f}/{self.total:.0f} s  {text}", end=end,
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and sys.stderr.isatty():
            print(file=sys.stderr)
