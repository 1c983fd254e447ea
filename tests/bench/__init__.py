"""Benchmarks (issue 7): ``make bench`` or ``python -m tests.bench`` writes docs/benchmarks.md.

No file here is named ``test_*.py``: pytest does not collect the benchmarks, and no timing is
asserted in the unit tests. Modules: ``bench_http`` (gunicorn + wrk, side by side with the floor
app ``floor_app``), ``bench_direct`` (the library without HTTP), ``bench_scale`` (latency and
memory as stored holds grow), ``fill`` (storing many holds fast with the library's script),
``report`` (the page and its plots), ``servers`` (gunicorn for any app, wrk, CPU accounting).
"""
