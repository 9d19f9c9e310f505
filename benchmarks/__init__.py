"""skfusion's benchmarks, one module per benchmark, each run from the repository root as
``python -m benchmarks.<name>`` (writes ``benchmarks/results/<name>.{json,md}``).

Shared code lives in the private modules: ``_bench`` (timing, result files, bootstrap,
plots and the ``Bench`` scorer), ``_features`` (the debian-packages data and embedding
caches) and ``_models`` (members and decoder settings built once). A benchmark imports
only those, never another benchmark.
"""
