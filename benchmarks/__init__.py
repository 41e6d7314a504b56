"""Benchmarks of the paper's four models (Figure 6) in lantern_stage and its peers.

- `benchmarks.spec`      hyper-parameters and paper units of the four models
- `benchmarks.data`      the shared data (numpy only, generated when the files are absent)
- `benchmarks.weights`   the shared initial weights (numpy, PyTorch names and layouts)
- `benchmarks.frameworks`  one module per framework, all with the same interface
- `benchmarks.run`       the harness: ``python -m benchmarks.run --help``
"""
