"""Reports: figures and tables. Import the submodules directly (e.g.
``boxhack.report.projection``); this package imports nothing itself."""
