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
# Printed with three decimals; the other targets with two.
RATIO_TARGETS = ('catchup_a_over_e', 'catchup_b_over_c', 'reads_ratio',
                 'reads_cpu_ratio')


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    return sorted_values[max(1, math.ceil(p / 100.0 * len(sorted_values)))
                         - 1]


def percentiles(values, prefix='', ps=(50, 90, 99), top='max'):
    """{prefix + 'pN': ..., prefix + top: the largest (unless None)} of
    `values`."""
    values = sorted(values)
    out = {'%sp%d' % (prefix, p): percentile(values, p) for p in ps}
    if top:
        out[prefix + top] = values[-1] if values else None
    return out


def summary(values):
    """median, min, max (and the values) of the non-None `values`."""
    values = [v for v in values if v is not None]
    if values:
        return dict(median=statistics.median(values), min=min(values),
                    max=max(values), values=values)


def summaries(runs, names):
    """{name: summary of run.get(name) over `runs`} for each name."""
    return {name: summary([run.get(name) for run in runs]) for name in names}


def ratio_rounds(first, second, key, invert=False):
    """Per-round ratios first/second of `key` (rounds matched by index)."""
    return summary([b[key] / a[key] if invert else a[key] / b[key]
                    for a, b in zip(first, second)
                    if a.get(key) and b.get(key)])


class Targets(list):
    """The target lines of a summary, in the order they are added."""

    def add(self, name, label, value, worst=None):
        """A target of TARGETS: `value` is the median, `worst` the worst
        round; met is None without a value."""
        op, limit = TARGETS[name].split()
        met = None if value is None else (
            value >= float(limit) if op == '>=' else value <= float(limit))
        self.append(dict(name=name, label=label, value=value, worst=worst,
                         target=TARGETS[name], met=met))

    def add_stat(self, name, label, stat, worst):
        """A target on the median of a `summary()`; `worst` is 'min' or
        'max'."""
        self.add(name, label, stat and stat['median'], stat and stat[worst])

    def failed(self, name, label, value, target):
        """A condition that failed outright (e.g. missing commits)."""
        self.append(dict(name=name, label=label, value=value,
                         target=target, met=False, worst=None))


def fmt(value, digits=2):
    return '-' if value is None else '%.*f' % (digits, value)


def median(stat, digits=2):
    """The median of a `summary()`, formatted, or '-'."""
    return fmt(stat and stat['median'], digits)


def fmt_range(stat, digits=2):
    """'median (min-max)' of a `summary()`, or '-'."""
    if not stat:
        return '-'
    return '%s (%s-%s)' % tuple(fmt(stat[k], digits)
                                for k in ('median', 'min', 'max'))
