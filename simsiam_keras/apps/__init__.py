"""The applications: one `run` per command, each owning a workdir, its files and progress.

Each also owns the signals and the errors that the command line turns into exit codes.

`pretrain.run(PretrainConfig)`, `linear_eval.run(LinearConfig)`, `knn_eval.run(KnnConfig)` and
`export.run(workdir)` are what `scripts/*.py` and the `simsiam-*` commands call
(`simsiam_keras/commands.py`). They import the library (`simsiam_keras.*`) and `config`; the
library never imports them (docs/architecture.md, "Layers"; `tests/test_layers.py`).
"""
