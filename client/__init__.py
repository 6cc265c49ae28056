"""The zchat client: a library (``Connection``) and the terminal program around it."""

from .connection import Connection, Event, Refused, Unreachable

__all__ = ["Connection", "Event", "Refused", "Unreachable"]
