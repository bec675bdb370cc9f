"""The ``rsign`` command line."""
