"""zchat's benchmark: a real broker, load from several processes, figures you can trust.

``python -m bench WORKLOAD`` (fanout, rooms, dm, crowd) or ``python -m bench all``; see
``python -m bench --help`` and docs/bench/results.md.
"""
