"""When does a disk or bucket fill at its current growth rate? A least-squares line through its samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Projection:
    """Growth in bytes per day over the samples, and when ``capacity`` is reached at that rate (``None``:
    not growing, no capacity known, or too few samples)."""

    bytes_per_day: float
    latest_bytes: int
    capacity: int | None
    full_at: datetime | None

    @property
    def days_left(self) -> float | None:
        if self.full_at is None:
            return None
        return max(0.0, (self.full_at - datetime.now(self.full_at.tzinfo)).total_seconds() / 86400)


#: samples spanning less than this give no projection: minutes of noise say nothing of a growth rate
MIN_SPAN = timedelta(hours=1)


def project(
    samples: Sequence[tuple[datetime, int]], capacity: int | None, min_span: timedelta = MIN_SPAN
) -> Projection:
    """Fit ``used = a + b * t`` to ``(when, bytes used)`` samples; project the time ``capacity`` is reached.
    Samples spanning less than ``min_span`` project nothing (growth 0, no date)."""
    points = sorted(samples)
    latest = points[-1][1] if points else 0
    if len(points) < 2 or points[-1][0] - points[0][0] < min_span:
        return Projection(0.0, latest, capacity, None)
    t0 = points[0][0]
    xs = [(t - t0).total_seconds() / 86400 for t, _ in points]
    ys = [float(v) for _, v in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    if capacity is None or slope <= 0:
        return Projection(slope, latest, capacity, None)
    days = max(0.0, (capacity - latest) / slope)
    return Projection(slope, latest, capacity, points[-1][0] + timedelta(days=days))
