"""Tools people run again on a GPU machine: ``python -m tools.record_cslt_fixtures``, ``python -m tools.sass_count``."""
