"""calopsctl: the ``calops`` command line."""
