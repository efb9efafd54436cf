"""jobs: the ``fastgen`` command; each subcommand parses, loads config, calls one pipelines function, reports."""
