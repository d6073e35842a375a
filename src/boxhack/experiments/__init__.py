"""Experiments: grids of independent jobs run as resumable campaigns into JSONL files.

Nothing is imported eagerly; import the submodule you need, e.g.
``from boxhack.infra.campaign import Job, run_campaign``.
"""
