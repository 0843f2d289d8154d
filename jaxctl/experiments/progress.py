"""Progress bars with live metrics for the long loops of the experiments (rich).

On a terminal the bar redraws in place on stderr; elsewhere (logs, CI,
pytest's captured streams) rich prints nothing while it runs and one final
line when the bar closes, so logs stay short.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _RichProgress, \
    TextColumn, TimeElapsedColumn


def _format(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in metrics.items())


class Progress:
    """A progress bar `desc [####----] done/total elapsed metrics` on stderr.

    Example:
      >>> bar = Progress(3, "demo")
      >>> for i in range(3):
      ...     bar.update(i + 1, loss=0.5 / (i + 1))
      >>> bar.close()
    """

    def __init__(self, total: int, desc: str = "", stream=None):
        self.total = max(int(total), 1)
        console = Console(file=stream if stream is not None else sys.stderr)
        self._bar = _RichProgress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.fields[metrics]}"), console=console,
                                  transient=False)
        self._task = self._bar.add_task(desc, total=self.total, metrics="")
        self._bar.start()

    def update(self, done: int, **metrics: Any) -> None:
        """Sets the count of finished units to `done` and shows `metrics`."""
        self._bar.update(self._task, completed=done, metrics=_format(metrics))

    def close(self) -> None:
        """Stops redrawing (prints the final state off a terminal)."""
        self._bar.stop()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
