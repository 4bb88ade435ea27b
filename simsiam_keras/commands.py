"""The command lines: each parses its flags into a config and calls one application.

    python scripts/pretrain.py ...      or  simsiam-pretrain ...      (apps.pretrain.run)
    python scripts/linear_eval.py ...   or  simsiam-linear-eval ...   (apps.linear_eval.run)
    python scripts/knn_eval.py ...      or  simsiam-knn-eval ...      (apps.knn_eval.run)
    python scripts/export.py ...        or  simsiam-export ...        (apps.export.run)
    python scripts/convert_checkpoint.py ... or simsiam-convert ...   (convert)

The `simsiam-*` commands are installed with the package (console entry points); the scripts
are the same commands, documented in their docstrings (`--help`). Flags are defined when a
command starts, from the config's fields (`config.define_flags`); the defaults are the paper's,
and a flagfile only overrides them (`configs/quickstart.cfg`: the offline quickstart). Every
command prints one JSON object as its last line, and fails with one line (`cli.run`).

This module imports neither TensorFlow nor Keras at import time.
"""

import json

from simsiam_keras import cli, config


def _start(config_class):
    cli.quiet_logs()  # before anything imports TensorFlow
    config.define_flags(config_class)


def pretrain():
    """Pretrains (or resumes) a SimSiam run: `apps.pretrain.run` on the flags."""
    _start(config.PretrainConfig)
    cli.run(_pretrain)


def _pretrain(argv):
    del argv
    from absl import flags

    from simsiam_keras import report
    from simsiam_keras.apps import pretrain

    workdir = flags.FLAGS.workdir or cli.default_workdir()
    summary = pretrain.run(config.from_flags(config.PretrainConfig, workdir=workdir))
    knn, rand, sets = (summary.get(k) for k in ("knn_top1", "random_init_knn_top1", "knn"))
    if knn is not None and sets:
        versus = f" vs random-init {rand:.1f}" if rand is not None else ""
        print(
            f"kNN top-1 (k={sets['k']}; memory: {sets['memory']}, {sets['memory_images']:,} "
            f"images; queries: {sets['queries']}, {sets['query_images']:,} images): "
            f"pretrained {knn:.1f}{versus}"
        )
    keys = (
        "train",
        "knn_top1",
        "random_init_knn_top1",
        "knn",
        "steps",
        "wall_s",
        "pairs_per_s",
        "export",
    )
    line = {"what": "pretrain", **{k: summary.get(k) for k in keys}}
    line["already_finished"] = bool(summary.get("already_finished"))
    print(report.json_line(line))


def linear_eval():
    """Linear evaluation of a frozen pretrained backbone: `apps.linear_eval.run` on the flags."""
    _start(config.LinearConfig)
    cli.run(_linear_eval)


def _linear_eval(argv):
    del argv
    from simsiam_keras import report
    from simsiam_keras.apps import linear_eval

    results = linear_eval.run(config.from_flags(config.LinearConfig))
    keys = ("protocol", "val_top1", "val_top5", "best_val_top1", "epochs")
    if results.get("chief") is False:  # a multi-worker run's other workers: the chief reports
        keys = ("protocol", "chief")
    print(report.json_line({"what": "linear_eval", **{k: results.get(k) for k in keys}}))


def knn_eval():
    """The kNN accuracy of a pretrained backbone: `apps.knn_eval.run` on the flags."""
    _start(config.KnnConfig)
    cli.run(_knn_eval)


def _knn_eval(argv):
    del argv
    from simsiam_keras import report
    from simsiam_keras.apps import knn_eval

    results = knn_eval.run(config.from_flags(config.KnnConfig))
    print(report.json_line({"what": "knn_eval", **results}))


def export():
    """Exports a pretraining run's backbone as a SavedModel: `apps.export.run` on the flags."""
    import os

    cli.quiet_logs()
    from absl import flags

    main = {"module_name": config.main_module_name()}  # --helpshort lists them
    config.start_command_flags(("workdir", "out", "checkpoint"))
    flags.DEFINE_string("workdir", None, "A pretraining workdir.", required=True, **main)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export/backbone).", **main)
    flags.DEFINE_bool("checkpoint", False, "Export the last step checkpoint.", **main)

    def main(argv):
        del argv
        import keras

        fv = flags.FLAGS
        if keras.backend.backend() not in ("tensorflow", "jax"):
            raise cli.UsageError(
                "Export needs KERAS_BACKEND=tensorflow or jax (the weights load on every backend)."
            )
        if not os.path.isdir(fv.workdir):
            raise cli.UsageError(f"--workdir: not a directory: {fv.workdir!r}")
        from simsiam_keras.apps import export as export_app

        path, size = export_app.run(fv.workdir, fv.out, fv.checkpoint)
        print(json.dumps({"what": "export", "path": path, "image_size": size}))

    cli.run(main)


def convert():
    """Converts one checkpoint, PyTorch <-> Keras: `convert.from_torch` / `convert.to_torch`."""
    from absl import flags

    cli.quiet_logs()  # before anything imports TensorFlow
    module = {"module_name": config.main_module_name()}  # --helpshort lists them
    config.start_command_flags(("from_torch", "to_torch", "output", "image_size", "overwrite"))
    from_help = "An official .pth.tar (main_simsiam.py, main_lincls.py) or ResNet state dict."
    flags.DEFINE_string("from_torch", None, from_help, **module)
    to_help = "A .keras file (SimSiam, LinearClassifier, backbone) or a workdir with model.keras."
    flags.DEFINE_string("to_torch", None, to_help, **module)
    out_help = "The file to write: .keras (--from_torch) or .pth.tar (--to_torch)."
    flags.DEFINE_string("output", None, out_help, required=True, **module)
    size_help = "--from_torch: the Keras model's fixed input size (default: any size)."
    flags.DEFINE_integer("image_size", None, size_help, lower_bound=1, **module)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output.", **module)
    cli.run(_convert, tensorflow=False)


def _convert(argv):
    del argv
    import dataclasses
    import importlib.util
    import os

    from absl import flags

    from simsiam_keras import convert as lib

    fv = flags.FLAGS
    if (fv.from_torch is None) == (fv.to_torch is None):
        raise cli.UsageError("give exactly one of --from_torch and --to_torch.")
    source, output = fv.from_torch or fv.to_torch, fv.output
    flag = "--from_torch" if fv.from_torch else "--to_torch"
    if fv.from_torch and not os.path.isfile(source):
        raise cli.UsageError(f"--from_torch: no such file: {source!r}")
    if fv.to_torch and not (
        os.path.isfile(os.path.join(source, "model.keras"))
        or (os.path.isfile(source) and source.endswith(".keras"))
    ):
        raise cli.UsageError(
            f"--to_torch: not a .keras file or a workdir with model.keras: {source!r}"
        )
    if fv.from_torch and not output.endswith(".keras"):
        raise cli.UsageError(f"--output: a Keras model file ends in .keras: {output!r}")
    if fv.to_torch and fv.image_size is not None:
        raise cli.UsageError("--image_size applies to --from_torch only.")
    if os.path.exists(output) and not fv.overwrite:
        raise cli.UsageError(f"--output exists: {output!r} (--overwrite to replace it).")
    model_file = os.path.join(source, "model.keras") if os.path.isdir(source) else source
    if os.path.exists(output) and os.path.samefile(output, model_file):
        raise cli.UsageError(f"--output is what {flag} reads: {output!r}.")
    if importlib.util.find_spec("torch") is None:
        raise cli.UsageError(lib.TORCH_HINT)
    cli.import_tensorflow()  # quietly, when Keras will use it
    if fv.from_torch:
        state, architecture = lib.load_official(source)
        model = lib.build_keras(state, architecture, fv.image_size)
        lib.write_atomically(output, model.save, suffix=".keras")
    else:
        architecture = lib.to_torch(source, output)
    line = {
        "what": "convert",
        "direction": flag[2:],
        "input": os.path.abspath(source),
        "output": os.path.abspath(output),
        **dataclasses.asdict(architecture),
    }
    print(json.dumps({k: v for k, v in line.items() if v not in (None, ())}))
