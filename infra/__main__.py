"""The callplane Pulumi program (``Pulumi.yaml``: ``main: infra/``), and ``python -m infra
<command>`` (see :mod:`infra.cli`): with a command it is the CLI, run by Pulumi it is the
program. See infra/README.md."""

from __future__ import annotations

import sys
from pathlib import Path

# The language host runs this file with infra/ as its working directory's program; make the
# repository root importable so that ``infra`` and ``callplane`` resolve as packages (the
# dynamic providers are pickled by reference to ``infra.providers``).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

if (sys.argv[1:2] and not sys.argv[1].startswith("-")) or sys.argv[1:2] == ["--help"]:
    from infra.cli import main

    main()
else:
    from infra.program import run

    run()
