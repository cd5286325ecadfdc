"""A one-line progress bar on stderr, with no dependencies.

    progress = Progress(total=390, title="epoch 1/164")
    for ...:
        progress.update(loss=1.23, acc=55.0, img_s=410)
    progress.close()

On a terminal the line redraws itself; elsewhere (logs, CI) it stays silent,
so only the caller's summary lines are written.
"""
import sys
import time


class Progress:
    def __init__(self, total, title="", enabled=True, stream=None, width=24):
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.total, self.title, self.width = total, title, width
        self.done, self.started = 0, time.perf_counter()
        self.last_draw = 0.0

    def skip_to(self, done):
        """Start counting at ``done`` (a resumed epoch)."""
        self.done = done

    def update(self, **values):
        """One more step done; ``values`` are shown as name=value."""
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self.last_draw > 0.1 or self.done == self.total):
            self.last_draw = now
            filled = int(self.width * self.done / max(self.total, 1))
            bar = "#" * filled + "." * (self.width - filled)
            shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            self.stream.write(f"\r{self.title} [{bar}] {self.done}/{self.total}  {shown}\033[K")
            self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
