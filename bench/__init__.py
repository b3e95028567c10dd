"""The job-operator benchmark: `python -m bench.run` or `make bench`.

See docs/performance.md for what it measures and how to read the figures.
"""
