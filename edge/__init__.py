"""zchat's edge: a process that holds client connections for a core (issue 12)."""
