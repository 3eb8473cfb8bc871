"""The benchmarks: speed and memory against what the machine allows (docs/benchmarks.md).
Each runs from the repository root as a module: `python -m bench.bench_train`, ..."""
