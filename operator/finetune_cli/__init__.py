"""The ``ftj`` command line: run, validate and inspect FineTuneJobs (also ``kubectl ftj``)."""
