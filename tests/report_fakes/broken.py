"""A fake experiment whose run() always raises (and says which extra options it was given)."""

from __future__ import annotations

NAME = "broken"
TITLE = "Broken on purpose"


def run(out_dir, *, quick=False, n_jobs=None, scheduler=None, seed=0, progress=True,
        models_root=None, **options):
    raise RuntimeError(f"broken on purpose; options={sorted(options)}")


def summarise(out_dir):
    raise RuntimeError("nothing to summarise")
