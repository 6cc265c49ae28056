"""The zchat operator tool: talks to the broker's control socket."""
