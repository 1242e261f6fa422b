"""Progress on stderr, for training, sweeps and studies alike, through click's progress bar.

click is already a dependency (the command line is built on it), and its bar does what lowres
needs: one bar per stage of work (an epoch's batches, a sweep unit's cells, the bootstraps),
redrawn in place with a short status after it. On a terminal the bar is replaced, when the
stage ends, by the stage's one summary line (an epoch's loss, accuracy and held-out TAR). Where
stderr is not a terminal (a pipe, a CI log) no bar is drawn at all: each stage prints its
summary line (and, where a stage asks for it, one line per step), so a log reads line by line.

A stage given a logger writes its lines through it at INFO (``lowres -q`` silences them);
without one, straight to stderr (training, which has its own ``progress`` switch).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

REDRAW_S = 0.1
"""Least time between two redraws of a bar (fast loops redraw at most ten times a second)."""


def on_terminal() -> bool:
    """True when stderr is an interactive terminal (bars are drawn only there)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def say(line: str, log: logging.Logger | None = None) -> None:
    """One line of progress: through ``log`` at INFO, or straight to stderr."""
    if log is not None:
        log.info("%s", line)
    else:
        click.echo(line, err=True)


class Stage:
    """A stage of ``total`` steps: a bar on a terminal, lines elsewhere (see the module).

    Use as a context manager; :meth:`advance` after each step (``info``: the status shown after
    the bar, or the step's line off a terminal when ``step_lines``), :meth:`done` with the
    stage's summary line. Leaving the block without :meth:`done` (an error, Ctrl-C) ends the
    bar's line so the error prints on a line of its own.

    Args:
        label: the bar's label (``epoch 3/18``).
        total: the number of steps.
        enabled: False draws and prints nothing.
        log: the logger of the lines (None: stderr).
        step_lines: off a terminal, print each step's ``info`` as a line.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool = True,
        log: logging.Logger | None = None,
        step_lines: bool = False,
    ) -> None:
        self.label, self.total = label, max(0, int(total))
        self.enabled = enabled and (log is None or log.isEnabledFor(logging.INFO))
        self.log, self.step_lines = log, step_lines
        self.bar: Any = None
        self.pending, self.last = 0, 0.0

    def __enter__(self) -> Stage:
        if self.enabled and self.total > 0 and on_terminal():
            self.bar = click.progressbar(
                length=self.total,
                label=self.label,
                file=sys.stderr,
                width=24,
                show_pos=True,
                show_percent=False,
                item_show_func=lambda info: info,
            )
            self.bar.__enter__()
        return self

    def advance(self, n: int = 1, info: str | None = None) -> None:
        """``n`` more steps done; ``info`` describes where the stage is now."""
        if self.bar is None:
            if self.enabled and self.step_lines and info:
                say(info, self.log)
            return
        self.pending += n
        now = time.monotonic()
        if now - self.last >= REDRAW_S or self.bar.pos + self.pending >= self.total:
            self.bar.update(self.pending, info)
            self.pending, self.last = 0, now

    def done(self, line: str) -> None:
        """End the stage with its summary line (on a terminal it replaces the bar)."""
        if self.bar is not None:
            # The bar's own line, redrawn in place as the summary (click pads it over the bar).
            self.bar.bar_template, self.bar.label = "%(label)s", line
            self.bar.render_progress()
            self.bar.render_finish()
            self.bar = None
        elif self.enabled:
            say(line, self.log)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None
