"""Tiny experiment modules following the experiment contract, for tests/test_report.py and
tests/test_reproduce.py (a package, so `reproduce(experiments=["report_fakes.fake"])` imports
them by dotted path once the tests directory is on sys.path)."""
