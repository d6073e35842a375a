"""A second fake experiment (the fake one under another name), so a report has two sections."""

from __future__ import annotations

from report_fakes import fake

EXPERIMENT, PRESENTER = fake.declare("other", "Another fake experiment")
