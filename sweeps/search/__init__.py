"""What to search and how: the parameter space, the samplers and the pruners."""
