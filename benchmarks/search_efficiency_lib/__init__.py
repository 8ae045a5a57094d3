"""The search-efficiency benchmark behind benchmarks/search_efficiency.py (its docstring describes it):
tasks, methods, training, grid, analysis, reference, figure and cli, one module each."""
