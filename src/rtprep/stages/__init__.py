"""The data stages, one module each: merge, split, coverage, cap, attach, rt_csv."""
