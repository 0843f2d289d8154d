"""Flag parsing of the `jaxctl` commands: range-checked `type=` converters and
an argument parser whose every error is one line and exit code 2.

Range checks happen while argparse reads the flags (`integer(low=1)`,
`real(low=0, low_open=True)`, `names(choices)`), so a bad value stops the
command before anything runs or is written; checks that relate several
flags raise `UsageError` from the command's `prepare(args)`, which the CLI
reports the same way.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Sequence

import jaxctl.util.checks as checks


class UsageError(ValueError):
    """A flag value (or combination) the command rejects; reported in one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` that reports an error in one line (no usage block) and exits 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _converter(parse: Callable[[str], object], name: str) -> Callable[[str], object]:
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


def integer(low: int | None = None) -> Callable[[str], int]:
    """A `type=` converter: an integer `>= low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        return checks.check_int("the value", value, low=low)

    return _converter(parse, "integer")


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False,
         finite: bool = True) -> Callable[[str], float]:
    """A `type=` converter: a real number in `[low, high]` (`(low, ...` with
    `low_open`), finite unless `finite=False`; NaN is always rejected."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if finite and math.isinf(value):
            raise ValueError(f"the value must be finite, got {value}")
        return float(checks.check_scalar("the value", value, low=low, high=high,
                                         low_open=low_open))

    return _converter(parse, "number")


def names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """A `type=` converter: a non-empty comma-separated list of `choices`."""

    def parse(text: str) -> list[str]:
        chosen = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not chosen:
            raise ValueError(f"expected a comma-separated list of {', '.join(choices)}, "
                             f"got {text!r}")
        unknown = sorted(set(chosen) - set(choices))
        if unknown:
            raise ValueError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return chosen

    return _converter(parse, "list")


def check_devices(devices: int, divides: int, what: str) -> None:
    """`--devices N`: at most the devices jax sees, and a divisor of the `divides` `what`."""
    import jax

    available = len(jax.devices())
    if devices > available:
        raise UsageError(f"--devices {devices}: only {available} device(s) available")
    if divides % devices:
        raise UsageError(f"--devices {devices} must divide the {divides} {what}")
