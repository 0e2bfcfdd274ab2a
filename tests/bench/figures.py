"""Turning measurements into figures: percentiles, medians over rounds,
per-round ratios, the targets and how figures are printed."""
import math
import statistics

TARGETS = {
    'catchup_a_over_e': '>= 0.9',
    'catchup_b_over_c': '>= 3',
    'lag_500_p99_ms': '<= 2',
    'lag_500_max_ms': '<= 15',
    'reads_ratio': '>= 0.95',
    'reads_cpu_ratio': '<= 1.05',
    'memory_mb': '<= 150',
}

# Targets on ratios are printed with three decimals, the others with two.
RATIO_TARGETS = ('catchup_a_over_e', 'catchup_b_over_c', 'reads_ratio',
                 'reads_cpu_ratio')


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values):
    """median, min, max (and the values) of the non-None `values`."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return dict(median=statistics.median(values), min=min(values),
                max=max(values), values=values)


def ratio_rounds(first, second, key, invert=False):
    """Per-round ratios first/second of `key` (rounds matched by index)."""
    values = []
    for a, b in zip(first, second):
        if a.get(key) and b.get(key):
            values.append(b[key] / a[key] if invert else a[key] / b[key])
    return summary(values)


def met(value, target):
    """Whether `value` meets a target such as '>= 0.9' (None: no value)."""
    if value is None:
        return None
    op, limit = target.split()
    limit = float(limit)
    return value >= limit if op == '>=' else value <= limit


class Targets(list):
    """The target lines of a summary, in the order they are added."""

    def add(self, name, label, value, worst=None):
        """A target of TARGETS: `value` is the median, `worst` the worst
        round."""
        spec = TARGETS[name]
        self.append(dict(name=name, label=label, value=value, worst=worst,
                         target=spec, met=met(value, spec)))

    def failed(self, name, label, value, target):
        """A condition that failed outright (e.g. missing commits)."""
        self.append(dict(name=name, label=label, value=value,
                         target=target, met=False, worst=None))


def fmt(value, digits=2):
    if value is None:
        return '-'
    return '%.*f' % (digits, value)


def fmt_range(stat, digits=2, scale=1.0):
    """'median (min-max)' of a `summary()`, or '-'."""
    if not stat:
        return '-'
    return '%s (%s-%s)' % (fmt(stat['median'] * scale, digits),
                           fmt(stat['min'] * scale, digits),
                           fmt(stat['max'] * scale, digits))
