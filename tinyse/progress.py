"""A one-line progress bar on stderr, with elapsed time and ETA, and no dependencies.

    progress = Progress(total=390, title="epoch 1/164", run=RunTiming(elapsed_before=1200, steps_after=390 * 163))
    for ...:
        progress.update(loss=1.23, acc=55.0, img_s=410)
    progress.close()

draws

    epoch 1/164 [######..................] 98/390  loss 1.23  acc 55  img_s 410  0:24 eta 1:12  run 20:24 eta 11:04:51

Two clocks: the epoch's (time since the bar started, and the steps left times the seconds per step
measured so far in this epoch) and, with ``run``, the whole run's (the time before this epoch plus
the epoch's, and the epoch's ETA plus the run's remaining steps at the same rate plus the seconds
``run`` expects besides, such as evaluations). The rate is the current epoch's: it follows the
machine as it is now (another job starting or stopping on the cores) instead of averaging over hours.

On a terminal the line redraws itself; elsewhere (logs, CI) it stays silent,
so only the caller's summary lines are written.
"""
import sys
import time
from dataclasses import dataclass


@dataclass
class RunTiming:
    """The run around one epoch's bar: for the run's elapsed time and ETA."""

    elapsed_before: float = 0.0  # seconds the run has taken before this bar started
    steps_after: int = 0  # steps the run will take after this bar's last one
    seconds_after: float = 0.0  # seconds expected after the last step that are not steps (evaluations)


def format_duration(seconds):
    """M:SS under an hour, H:MM:SS from an hour on ("?" when unknown): 65 -> "1:05", 3725 -> "1:02:05"."""
    if seconds is None or seconds != seconds or seconds < 0:  # None, NaN or negative: not known yet
        return "?"
    minutes, secs = divmod(round(float(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """A bar of ``total`` steps titled ``title``; ``clock`` (seconds, for tests) and ``run`` (a ``RunTiming``)."""

    def __init__(self, total, title="", enabled=True, stream=None, width=24, clock=time.perf_counter, run=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.total, self.title, self.width = total, title, width
        self.clock, self.run = clock, run
        self.done, self.started = 0, clock()
        self.first = 0  # the step this bar started counting at (a resumed epoch starts past 0)
        self.last_draw = None

    def skip_to(self, done):
        """Start counting at ``done`` (a resumed epoch): the rate counts only the steps this bar sees."""
        self.done = self.first = done

    def times(self):
        """{"elapsed", "eta", "run_elapsed", "run_eta"} in seconds now; an ETA is None before the first step."""
        elapsed = self.clock() - self.started
        steps = self.done - self.first
        rate = elapsed / steps if steps else None  # seconds per step in this epoch
        eta = (self.total - self.done) * rate if rate is not None else None
        times = {"elapsed": elapsed, "eta": eta, "run_elapsed": None, "run_eta": None}
        if self.run is not None:
            times["run_elapsed"] = self.run.elapsed_before + elapsed
            if eta is not None:
                times["run_eta"] = eta + self.run.steps_after * rate + self.run.seconds_after
        return times

    def line(self, **values):
        """The bar as drawn: title, bar, steps, ``values`` as name=value, the epoch's and the run's clocks."""
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        shown = "".join(f"  {k} {v:.4g}" for k, v in values.items())
        t = self.times()
        clocks = f"  {format_duration(t['elapsed'])} eta {format_duration(t['eta'])}"
        if self.run is not None:
            clocks += f"  run {format_duration(t['run_elapsed'])} eta {format_duration(t['run_eta'])}"
        return f"{self.title} [{bar}] {self.done}/{self.total}{shown}{clocks}"

    def due(self):
        """True when the next ``update`` will draw (at most 10 times a second, and the last step): the
        caller reads values that cost a host synchronisation on a GPU only then."""
        if not self.enabled:
            return False
        return self.last_draw is None or self.clock() - self.last_draw > 0.1 or self.done + 1 == self.total

    def update(self, **values):
        """One more step done; ``values`` are shown as name=value (redrawn at most 10 times a second)."""
        draw = self.due()
        self.done += 1
        if draw:
            self.last_draw = self.clock()
            self.stream.write(f"\r{self.line(**values)}\033[K")
            self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
