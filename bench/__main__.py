"""`python -m bench`: see bench.cli."""

import sys

from bench.show.progress import status

if sys.argv[1:2] in ([], ["run"]) and not {"-h", "--help", "--dry-run"} & set(sys.argv):
    status("loading torch and the models")  # at once: importing them takes seconds
    from bench.measure import isolation

    # Before bench.cli imports torch here: the case server loads it on the other core meanwhile.
    isolation.start()

from bench.cli import main  # noqa: E402

raise SystemExit(main())
