"""``deepfer-train``: fit a model, evaluate it, export it as the daemon's bundle.

TensorFlow is imported only inside the commands, so ``--help`` works without
the [train] extra installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ARCHS = ("fernet", "mobilenetv2", "mobilenetv3small", "mobilenetv3large")
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad arguments or recipe: exit status 2."""


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from train.fit import LR_SCHEDULES  # numpy only: --help stays TensorFlow-free

    p = argparse.ArgumentParser(
        prog="deepfer-train",
        description="Train the DeepFER emotion model, evaluate it and export the int8 bundle the daemon runs.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    f = sub.add_parser("fit", help="train a model into a run folder (resumable)",
                       description="Train into --out. Settings: defaults < --recipe TOML < flags; saved as RUN/recipe.json.")
    f.add_argument("--data", metavar="PATH", help="training data: Kaggle fer2013 .csv, .npz (x, y) or a folder per class")
    f.add_argument("--val-data", metavar="PATH", help="validation data (default: the CSV's PublicTest split, else a held-out share of --data)")
    f.add_argument("--out", required=True, type=Path, metavar="RUN", help="run folder (recipe, checkpoints, history, models)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    f.add_argument("--recipe", type=Path, metavar="TOML", help="TOML file of recipe settings (keys as in recipe.json)")
    f.add_argument("--epochs", type=_positive_int, metavar="N")
    f.add_argument("--arch", choices=ARCHS)
    f.add_argument("--width", type=_positive_float, metavar="W", help="width multiplier (channels x W)")
    f.add_argument("--weights", metavar="none|imagenet|PATH",
                   help="backbone weights for keras.applications archs: none, imagenet or a .h5/.weights.h5 path")
    f.add_argument("--batch-size", type=_positive_int, metavar="N")
    f.add_argument("--lr", type=_positive_float, metavar="LR", help="peak learning rate")
    f.add_argument("--lr-schedule", choices=tuple(LR_SCHEDULES),
                   help="cosine (default): decay to 1%% of --lr; constant: --lr after the warmup, for --swa-epochs")
    f.add_argument("--limit", type=int, metavar="N", help="use at most N training faces (0 = all; for smoke runs)")
    f.add_argument("--seed", type=int, metavar="N")
    f.add_argument("--swa-epochs", type=int, metavar="N", help="also average the weights of the last N epochs into RUN/swa.keras "
                   "(BatchNorm statistics measured again; compare its val accuracy in RUN/swa.json with best.keras')")
    f.add_argument("--bn-faces", type=int, metavar="N",
                   help="plain (un-augmented) training faces BatchNorm statistics are measured on after each epoch and for "
                        "--swa-epochs, so they match the faces the daemon feeds (default 12800; 0 = keep the augmented "
                        "batches' moving averages)")
    f.add_argument("--mixup", type=float, metavar="ALPHA",
                   help="blend pairs of training faces and their targets, share ~ Beta(ALPHA, ALPHA) (e.g. 0.2; 0 = off)")
    f.add_argument("--teacher", metavar="NPZ",
                   help="distil: soft targets for the --data faces, row for row (tools/teacher_targets.py writes them); "
                        "'ferplus': the FER+ crowd votes stored in the --data .npz")
    f.add_argument("--seen-faces", metavar="NPZ",
                   help="the --data faces as the daemon frames them, row for row (tools/seen_faces.py writes them)")
    f.add_argument("--seen-share", type=float, metavar="S",
                   help="share of each batch drawn from --seen-faces instead of the plain crops, 0..1 (default 0.5)")
    f.add_argument("--teacher-weight", type=float, metavar="W",
                   help="share of the teacher's probabilities in each target, 0..1 (default 0.5; the rest is the label)")
    f.add_argument("--init-from", metavar="MODEL", help="start from this model's weights (same architecture): a .keras model, "
                   "e.g. runs/a/best.keras, or an exported bundle's .tflite, e.g. edge/models/deepfer_fernet_int8.tflite")
    f.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="Keras output: 0 none, 1 progress bar, 2 one line per epoch (default 1)")

    e = sub.add_parser("evaluate", help="metrics of a .keras model or a .tflite bundle on a labelled split")
    e.add_argument("model", type=Path, help="a .keras model or a bundle's .tflite (its .json beside it)")
    e.add_argument("--data", required=True, metavar="PATH", help="labelled data (.csv, .npz or folder)")
    e.add_argument("--split", default="val", help="split of a CSV or split folder: train, val or test (default val)")
    e.add_argument("--out", type=Path, metavar="DIR", help="write metrics.json, plots and model_card.md here")

    x = sub.add_parser("export", help="convert a run's model into NAME.tflite + NAME.json for the daemon")
    x.add_argument("run", type=Path, help="run folder (uses best.keras, else model.keras) or a .keras file")
    x.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the bundle (e.g. edge/models)")
    x.add_argument("--name", required=True, help="bundle name, e.g. deepfer_fernet_int8")
    x.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="full-integer model with uint8 input/output (default); --no-int8 writes a float32 model")
    x.add_argument("--calibration", type=_positive_int, default=500, metavar="N", help="training faces used to calibrate int8 ranges (default 500)")
    x.add_argument("--data", metavar="PATH", help="training data for calibration (default: the run's recipe)")
    x.add_argument("--val-data", metavar="PATH", help="validation data to compare float and int8 (default: the run's recipe)")
    x.add_argument("--version", help="bundle version (default: today's date, YYYY.MM.DD)")
    x.add_argument("--max-int8-drop", type=float, default=1.0, metavar="POINTS",
                   help="fail when int8 top-1 is more than this many points below float (default 1.0)")
    x.add_argument("--prior-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="undo the recipe's class weights in the logits, so scores are posteriors for the training "
                        "class mix (default on; no effect when class_weight_power is 0)")
    x.add_argument("--flip-tta", action="store_true",
                   help="average each face with its mirror image inside the model: about +1 point top-1, twice the time per face")
    x.add_argument("--latency-runs", type=int, default=300, metavar="N", help="invokes for the latency median (0 = skip)")
    return p


# --- fit ------------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"--recipe {path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--recipe {path}: not valid TOML ({exc})") from None


FLAG_FIELDS = {"data": "data", "val_data": "val_data", "epochs": "epochs", "arch": "arch", "width": "width",
               "weights": "weights", "batch_size": "batch_size", "lr": "lr", "lr_schedule": "lr_schedule", "limit": "limit", "seed": "seed",
               "init_from": "init_from", "swa_epochs": "swa_epochs", "mixup": "mixup", "bn_faces": "bn_faces",
               "teacher": "teacher", "teacher_weight": "teacher_weight", "seen_faces": "seen_faces", "seen_share": "seen_share"}


def recipe_from_args(args: argparse.Namespace):
    """Recipe defaults, then the TOML file's values, then the flags given."""
    from train.fit import Recipe

    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    values: dict[str, Any] = {}
    if args.recipe:
        raw = _read_toml(args.recipe)
        # A [recipe] table is accepted too, so the file can hold other tables later.
        raw = raw.get("recipe", raw) if isinstance(raw.get("recipe"), dict) else raw
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise UsageError(f"--recipe {args.recipe}: unknown keys {unknown}; known: {sorted(fields)}")
        default = Recipe()
        for k, v in raw.items():
            want = type(getattr(default, k))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise UsageError(f"--recipe {args.recipe}: {k} = {v!r} should be a {want.__name__}")
            values[k] = v
    for attr, field_name in FLAG_FIELDS.items():
        v = getattr(args, attr)
        if v is not None:
            values[field_name] = v
    from train.fit import RecipeError

    try:
        recipe = Recipe(**values)
    except RecipeError as exc:
        raise UsageError(str(exc)) from None
    if not recipe.data:
        raise UsageError("fit needs training data: --data PATH (or data = \"...\" in --recipe)")
    return recipe


def cmd_fit(args: argparse.Namespace) -> int:
    from train.allocator import preload_hint
    from train.fit import fit

    if hint := preload_hint():
        log.info("%s", hint)

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in FLAG_FIELDS if getattr(args, k) is not None]
        if given or args.recipe:
            log.warning("--resume continues %s with its saved recipe.json; ignoring %s", args.out,
                        " ".join(given + (["--recipe"] if args.recipe else [])))
        from train.fit import Recipe

        recipe = Recipe()
    else:
        recipe = recipe_from_args(args)
        # The card names the command that made the model (the recipe alone omits the run folder).
        recipe.extra.setdefault("command", "deepfer-train " + shlex.join(args.argv))
        # Fail before TensorFlow starts (seconds) rather than after.
        from train.data import FERPLUS_TEACHER, DataError

        teacher = "" if recipe.teacher == FERPLUS_TEACHER else recipe.teacher
        for flag, path in (("--data", recipe.data), ("--val-data", recipe.val_data), ("--teacher", teacher),
                           ("--seen-faces", recipe.seen_faces)):
            if path and not Path(path).exists():
                raise DataError(f"{flag} {path}: no such file or folder")
    best = fit(recipe, args.out, resume=args.resume, verbose=args.verbose)
    log.info("best model: %s", best)
    print(best)
    return 0


# --- evaluate -------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from train.data import load
    from train.evaluate import evaluate, evaluate_to_dir, format_table, load_predictor

    pred = load_predictor(args.model)
    data = load(args.data, args.split, pred.input_size)
    if args.out:
        metrics = evaluate_to_dir(pred, data, args.out)
        log.info("wrote the evaluation (metrics.json, model_card.md and any plots) to %s", args.out)
    else:
        metrics = evaluate(pred, data)
    print(format_table(metrics))
    return 0


# --- export ---------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from train.calibration import calibration_set
    from train.export import ExportOptions, export
    from train.fit import Recipe, load_splits
    from train.runs import resolve_model, run_recipe

    model_path = resolve_model(args.run)
    saved = run_recipe(model_path)
    known = {f.name for f in dataclasses.fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in saved.items() if k in known})
    if args.data:
        recipe.data = args.data
    if args.val_data:
        recipe.val_data = args.val_data
    if not recipe.data:
        raise UsageError(f"{model_path}: no recipe.json beside it names the training data; pass --data (and --val-data)")
    train_set, val = load_splits(recipe)
    calib = calibration_set(train_set, args.calibration, recipe.seed) if args.int8 else None
    training_data = {
        "source": str(recipe.data),
        "n_train": len(train_set),
        "class_counts": {k: int(v) for k, v in zip(_labels(), train_set.class_counts())},
    }
    options = ExportOptions(int8=args.int8, version=args.version, max_drop=args.max_int8_drop,
                            prior_correction=args.prior_correction, flip_tta=args.flip_tta,
                            latency_runs=args.latency_runs)
    out = export(model_path, args.out, args.name, calib, val=val, training_data=training_data, options=options)
    print(out)
    return 0


def _labels() -> tuple[str, ...]:
    from edge.labels import EMOTIONS

    return EMOTIONS


COMMANDS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's C++ start-up chatter (CPU features, oneDNN) buries the useful lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edge.bundle import BundleError
    from edge.protocols import MissingExtra
    from train.data import DataError
    from train.errors import ExportError

    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"deepfer-train {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if exc.name in ("tensorflow", "keras", "matplotlib"):
            print(f"deepfer-train {args.command}: {exc.name} is not installed; pip install 'deepfer[train]'", file=sys.stderr)
            return EXIT_FAILURE
        raise
    except (DataError, BundleError, ExportError, MissingExtra, FileNotFoundError, FileExistsError, ValueError) as exc:
        # ValueError: a resumed run's recipe.json with unknown keys, a face size that does not fit the model.
        print(f"deepfer-train {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
