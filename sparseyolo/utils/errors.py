"""Errors of library calls that a front end (the CLI) reports in its own words."""

from __future__ import annotations

import re
from collections.abc import Mapping


class ParameterError(ValueError):
    """A bad argument of a library call; the message names parameters as the Python API spells them.

    The parameters named are listed, so a front end can say them its own way: ``sparseyolo val`` reports
    ``conf_thres 1.5 ...`` as ``--conf-thres 1.5 ...`` (:meth:`rename`).

    Args:
        message: what is wrong and how to fix it, in API terms (``"batch_size must be >= 1, got 0"``).
        *params: the parameter names the message uses.
    """

    def __init__(self, message: str, *params: str) -> None:
        super().__init__(message)
        self.message = message
        self.params = params

    def rename(self, names: Mapping[str, str]) -> str:
        """The message with each listed parameter that ``names`` knows replaced by its name there (whole words)."""
        out = self.message
        for p in self.params:
            if p in names:
                out = re.sub(rf"(?<![\w-]){re.escape(p)}(?!\w)", names[p], out)
        return out
