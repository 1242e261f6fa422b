"""Command line interface, one module per command group; the only package that imports click.

Thin by design: each command parses options, calls library functions, and prints. Heavy imports
(torch, pandas, ...) live inside command bodies so ``lowres --help`` is instant. Exit codes:
0 ok, 1 check failed, 2 bad input (any ``LowresError`` becomes one line on stderr, no traceback).

Modules: :mod:`~lowres.cli.group` (the group and its error handling), :mod:`~lowres.cli.train`
(train, export), :mod:`~lowres.cli.data` (data list/show), :mod:`~lowres.cli.sweep` (sweep,
merge), :mod:`~lowres.cli.results` (plot, check, report), :mod:`~lowres.cli.study` (run).
"""

# Importing a command module registers its commands on the group, in `lowres --help` order.
from lowres.cli import data, results, study, sweep, train  # noqa: F401
from lowres.cli.group import BadInput, LowresGroup, cli, main

__all__ = ["BadInput", "LowresGroup", "cli", "main"]
