"""The model card: a bundle's (or an evaluation's) metrics, data, recipe and limits, in Markdown.

Export writes ``NAME.md`` beside each bundle, ``deepfer-train evaluate --out`` a
``model_card.md``; both come from :func:`model_card`, so the wording of what a
model does and does not measure lives in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RESPONSIBLE_USE = """\
- **What it measures.** A visible facial expression: how the muscles of one face look in
  one 48x48 grayscale crop, sorted into seven labels. That is not a person's inner state.
  People smile while sad and look neutral while afraid, and expressions differ between
  cultures, ages and people with facial differences or paralysis. Read a "happy" score
  as "the face looks like the faces labelled happy in FER2013", nothing more.
- **Not for decisions about people.** Do not use it to judge, rank, screen or monitor
  individuals: hiring, grading, credit, policing, border control, health or insurance.
- **Prohibited uses in the EU.** Since 2 February 2025 the EU AI Act (Regulation (EU)
  2024/1689, Article 5(1)(f)) prohibits AI systems that infer the emotions of people in
  the workplace or in education institutions, except for medical or safety reasons.
  DeepFER does not support such deployments: do not install it to watch employees,
  pupils or students. Elsewhere, emotion recognition is a high-risk or regulated use in
  many jurisdictions; check the law where the camera is.
- **People in view.** Anyone the camera sees is being analysed. Tell them (a visible
  notice), keep the device's no-image-leaves-the-device design, and keep only the
  aggregate events you need.
"""

LIMITATIONS = """\
- **Data bias.** FER2013 was scraped from web image searches: mostly posed or staged
  expressions, skewed towards young adults and light skin, few children or elderly
  people, and little variety in head pose, occlusion (glasses, masks) or lighting.
  Accuracy on other people and settings is likely lower than the numbers above.
- **Label noise.** FER2013 labels are single crowd judgements; FER+ re-labelling found
  roughly one in ten disagreeing with a 10-annotator majority. Human agreement on the
  7 classes is itself only about 65-70%.
- **Class imbalance.** *disgust* has ~1.5% of the training faces; its scores are the
  least reliable. *fear* and *sad* are commonly confused with each other and *neutral*.
- **What it measures.** The model labels the visible facial expression of a 48x48
  grayscale crop. It does not read a person's emotional state, intent or truthfulness,
  and must not be used to make decisions about individuals.
- **Input assumptions.** Frontal-ish faces of at least ~40 px, cropped the daemon's way
  (square box with the bundle's ``crop_margin``). Profile faces, heavy blur and very
  dark frames fall outside what it was trained on.
"""


def _pct(v: float | None) -> str:
    return "\N{EN DASH}" if v is None else f"{100 * v:.1f}%"


RECIPE_KEYS = ("arch", "width", "input_size", "weights", "epochs", "batch_size", "lr", "lr_schedule", "label_smoothing",
               "class_weight_power", "seed", "limit")
RECIPE_KEYS_WHEN_SET = ("mixup", "teacher", "teacher_weight", "swa_epochs", "bn_faces")  # shown when on


def model_card(
    name: str,
    metrics: dict[str, dict[str, Any]],
    recipe: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
    eval_data: str = "",
    images: dict[str, str] | None = None,
    latency_ms: float | None = None,
    agreement: float | None = None,
    bundle: dict[str, Any] | None = None,
    training_time: tuple[int, float] | None = None,
    host: str = "",
) -> str:
    """Markdown model card. ``metrics`` maps a model kind (e.g. ``keras-float``,
    ``tflite-int8``) to full metrics from :func:`train.evaluate.compute_metrics`;
    ``images`` maps ``confusion`` / ``curves`` to file names beside the card."""
    out = [f"# Model card: {name}", ""]
    if bundle:
        out += [
            f"Version {bundle.get('version', '?')}, created {bundle.get('created', '?')}. "
            f"Input {bundle.get('input_size')}x{bundle.get('input_size')}x{bundle.get('channels')} "
            f"{bundle.get('input_dtype', '')} raw pixels (normalisation folded into the graph), "
            f"crop margin {bundle.get('crop_margin')}, output: {bundle.get('output')} over "
            f"{', '.join(bundle.get('labels', []))}."
            + (" Each face is scored together with its mirror image inside the model (flip test-time augmentation, "
               "two passes of the network)." if bundle.get("test_time_augmentation") == "flip" else ""),
            "",
        ]
    out += ["## Data", ""]
    td = training_data or {}
    if td:
        out.append(f"- Training: `{td.get('source', '?')}`" + (f", {td['n_train']} faces" if "n_train" in td else ""))
        if td.get("val_source"):
            out.append(f"- Validation: `{td['val_source']}`" + (f", {td['n_val']} faces" if "n_val" in td else ""))
        if td.get("class_counts"):
            out.append("- Training faces per class: " + ", ".join(f"{k} {v}" for k, v in td["class_counts"].items()))
    if eval_data:
        out.append(f"- Evaluated on: `{eval_data}`")
    out.append("")
    if recipe:
        out += ["## Recipe", "", "| setting | value |", "|---|---|"]
        out += [f"| {k} | {recipe[k]} |" for k in RECIPE_KEYS if k in recipe]
        out += [f"| {k} | {recipe[k]} |" for k in RECIPE_KEYS_WHEN_SET
                if recipe.get(k) and (k != "teacher_weight" or recipe.get("teacher"))]
        trained = (bundle or {}).get("model") or {}
        if trained.get("epoch"):
            held = (f"the average of epochs {trained['averaged_epochs'][0]}-{trained['averaged_epochs'][-1]}"
                    if trained.get("averaged_epochs") else f"epoch {trained['epoch']}")
            out.append(f"| epochs run | {trained.get('epochs_run', '?')}; this model is {held} |")
        prior = (bundle or {}).get("prior_correction")
        if isinstance(prior, dict):
            out.append(f"| prior correction | logits + {prior['class_weight_power']} x log(training class prior), "
                       "undoing the class weights (folded into the logits bias) |")
        warm = (recipe.get("extra") or {}).get("warm_start")
        if warm:
            before = warm.get("epochs_before")
            this_run = int(trained.get("epoch") or recipe.get("epochs", 0))
            total = f" ({before} epochs before this run, {before + this_run} in all)" if before else ""
            out.append(f"| warm start | weights of {warm.get('from')}{total} |")
        if training_time is not None:
            n, seconds = training_time
            hours, minutes = divmod(round(seconds / 60), 60)
            took = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
            out.append(f"| training time | {n} epochs in {took}" + (f" on {host}" if host else "") + " |")
        # Free-text provenance a run's recipe carries in "extra" (e.g. the command, how its float model was recovered).
        out += [f"| {k.replace('_', ' ')} | {v} |" for k, v in (recipe.get("extra") or {}).items() if isinstance(v, str)]
        out.append("")
    out += ["## Metrics", "", "| model | n | top-1 | top-2 | macro-F1 | weighted-F1 | ECE (15 bins) |", "|---|---|---|---|---|---|---|"]
    for kind, m in metrics.items():
        out.append(
            f"| {kind} | {m['n']} | {_pct(m['accuracy'])} | {_pct(m['top2_accuracy'])} | {m['macro']['f1']:.3f} | "
            f"{m['weighted']['f1']:.3f} | {m['ece']:.3f} |"
        )
    out.append("")
    kinds = list(metrics)
    if len(kinds) == 2:
        a, b = (metrics[k] for k in kinds)
        out.append(
            f"{kinds[1]} vs {kinds[0]}: top-1 {100 * (b['accuracy'] - a['accuracy']):+.2f} points"
            + (f", same top-1 class on {_pct(agreement)} of faces" if agreement is not None else "")
            + "."
        )
        out.append("")
    if latency_ms is not None:
        host = (bundle or {}).get("latency_host", "the export machine, 1 thread")
        out += [f"Latency: {latency_ms:.2f} ms per face (median, through the daemon's classifier) on {host}.", ""]
    last = metrics[kinds[-1]]
    out += [f"### Per class ({kinds[-1]})", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, row in last["per_class"].items():
        out.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    out.append("")
    if images:
        out += ["## Plots", ""]
        if "confusion" in images:
            out += [f"![confusion matrix, rows normalised]({images['confusion']})", ""]
        if "curves" in images:
            out += [f"![training curves]({images['curves']})", ""]
    out += ["## Limitations", "", LIMITATIONS, "## Responsible use", "", RESPONSIBLE_USE]
    return "\n".join(out)


def write_bundle_card(folder: Path, meta: dict[str, Any], metrics: dict[str, dict[str, Any]],
                      agreement: float | None, history: Path | None,
                      training_time: tuple[int, float] | None = None, host: str = "") -> Path:
    """``NAME.md`` for the bundle whose JSON document is ``meta``, with its confusion matrix (of the
    exported model, the last kind in ``metrics``) and, when the run has a ``history``, its
    training curves, all written into ``folder``."""
    from train import report

    name = meta["name"]
    kinds = list(metrics)
    images = {"confusion": report.plot_confusion({**metrics[kinds[-1]], "model": name, "kind": kinds[-1]},
                                                 folder / f"{name}_confusion.png").name}
    if history is not None:
        images["curves"] = report.plot_history(history, folder / f"{name}_curves.png").name
    card = model_card(
        name=name,
        metrics=metrics,
        recipe=meta.get("recipe"),
        training_data=meta.get("training_data"),
        eval_data=meta["metrics"].get("val_source", ""),
        images=images,
        latency_ms=meta.get("latency_ms_per_face"),
        agreement=agreement,
        bundle=meta,
        training_time=training_time,
        host=host,
    )
    path = folder / f"{name}.md"
    path.write_text(card)
    return path
