"""Command line interface, one module per command group; the only package that imports click.

Thin by design: each command parses options, calls library functions, and prints. The library
modules a command needs that are slow to import are imported inside its body, so ``lowres
--help``, ``lowres data list`` or ``lowres train`` do not pay for the others. Measured with
``python -X importtime`` on the project's 2-core machine, on top of torch (about 2 s):
lowres.sweep 0.60 s, lowres.study 0.60 s, lowres.plots 0.41 s, lowres.report 0.38 s,
lowres.check 0.36 s, lowres.shards 0.34 s, lowres.train 0.27 s, lowres.data.sheet 0.09 s (pandas,
matplotlib and what they pull in); modules under 0.06 s (lowres.data, lowres.external,
lowres.distributed, lowres.errors) are imported at the top. Exit codes:
0 ok, 1 check failed, 2 bad input (any ``LowresError`` becomes one line on stderr, no traceback).

Modules: :mod:`~lowres.cli.group` (the group and its error handling), :mod:`~lowres.cli.train`
(train, export), :mod:`~lowres.cli.data` (data list/show), :mod:`~lowres.cli.sweep` (sweep,
merge), :mod:`~lowres.cli.results` (plot, check, report), :mod:`~lowres.cli.study` (run).
"""

# Importing a command module registers its commands on the group, in `lowres --help` order.
from lowres.cli import data, results, study, sweep, train  # noqa: F401
from lowres.cli.group import BadInput, LowresGroup, cli, main

__all__ = ["BadInput", "LowresGroup", "cli", "main"]
