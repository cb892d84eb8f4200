"""The statistics that may decide a float output (--check-stat), apart from judge.py, which
computes them (judge.stat_passes), so that the CLI lists them without importing numpy."""

CHECK_STATS = ("elementwise", "max", "mean", "median", "cosine")
