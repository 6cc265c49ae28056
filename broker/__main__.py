import sys

if sys.argv[1:2] == ["edge"]:  # python -m broker edge ...: the edge, by its other name
    from edge.cli import main as edge

    raise SystemExit(edge(sys.argv[2:]))

from .cli import main

raise SystemExit(main())
