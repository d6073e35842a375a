"""A second fake experiment (the fake one under another name), so a report has two sections."""

from __future__ import annotations

from report_fakes import fake

NAME = "other"
TITLE = "Another fake experiment"


def run(out_dir, **kwargs):
    return fake.run_as(NAME, out_dir, **kwargs)


def summarise(out_dir):
    return fake.summarise_as(NAME, out_dir)
