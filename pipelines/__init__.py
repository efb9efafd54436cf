"""pipelines: Ray Data stages, Ray Train loops, storage I/O and typed config loading around fast_core objects."""
