"""Model bundles: ``NAME.tflite`` plus ``NAME.json`` describing how to feed it.

The JSON is the contract between training and the daemon, and :class:`ModelBundle`
is its one reader and writer: the daemon gets one from :func:`load_bundle`,
``deepfer-train export`` builds one with :meth:`ModelBundle.create` and writes it,
and both go through the same checks (:meth:`ModelBundle.from_json`), so export
cannot write a bundle the daemon would refuse. Fields the daemon relies on:

- ``name``, ``version``: shown in stats and ``check``.
- ``labels``: class names in the model's output order.
- ``input_size``, ``channels``: the face tensor is input_size x input_size x channels.
- ``normalization``: ``"folded"`` (the graph normalises raw 0..255 pixels itself) —
  the only form the daemon feeds; anything else is refused with a clear error.
- ``crop_geometry``: per detector kind (``haar``, ``yunet``), how its box maps onto
  the training faces' framing: ``{"scale", "dx", "dy", "basis"}`` (see
  :class:`edge.preprocess.CropGeometry`; ``tools/fit_crop_geometry.py`` measures them).
- ``crop_margin``: for a detector the bundle has no geometry for (and bundles from
  before it existed), the margin added on each side of the box's longer side.
- ``output``: ``"probabilities"`` (what export writes) or ``"logits"`` (the daemon
  applies the softmax).
- ``metrics``, ``training_data``, ``created``, ``untrained``: informational;
  ``untrained: true`` marks a placeholder that ``check`` warns about.

Export also records how the bundle was made (``test_time_augmentation``,
``prior_correction``, ``input_dtype``, ``input_quantization``, ``output_dtype``,
``calibration``, ``recipe``, ``model``, ``latency_ms_per_face``, ``latency_host``,
``runtime``, ``edgetpu``, ``tflite_bytes``, ``sha256``); the daemon does not read
those, so they stay in :attr:`ModelBundle.meta` untyped and are written back as
they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edge.geometry import BASES, CropGeometry

DEFAULT_MODEL_NAME = "deepfer_fernet_int8"


class BundleError(ValueError):
    """A model bundle is missing or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class ModelBundle:
    """A bundle's ``.tflite`` and its checked ``.json``.

    ``meta`` is the whole JSON document, as read or as it will be written; the other
    fields are the checked, typed view of the part the daemon relies on. Build one
    with :meth:`from_json`, :meth:`create` or :meth:`with_fields` (never by hand,
    nor with ``dataclasses.replace``), so the two cannot disagree: :meth:`to_json`
    writes ``meta``, which keeps a load-then-write round trip byte for byte.
    """

    tflite: Path
    name: str
    version: str
    labels: tuple[str, ...]
    input_size: int
    channels: int
    crop_margin: float
    normalization: str = "folded"
    untrained: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    crop_geometry: dict[str, CropGeometry] = field(default_factory=dict)
    output: str = "probabilities"

    def geometry_for(self, detector: str) -> CropGeometry:
        """The framing for boxes of ``detector``: its fitted geometry, else the bundle's margin."""
        return self.crop_geometry.get(detector) or CropGeometry.from_margin(self.crop_margin)

    @property
    def edgetpu_tflite(self) -> Path:
        return self.tflite.with_name(self.tflite.stem + "_edgetpu.tflite")

    @property
    def json_path(self) -> Path:
        return self.tflite.with_suffix(".json")

    # --- reading ------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, meta: Any, tflite: Path, source: str | Path | None = None) -> ModelBundle:
        """Check a bundle's JSON document (``source`` names it in errors; default: the .json beside
        ``tflite``) and type the fields the daemon relies on; BundleError says what is wrong."""
        meta_path = Path(source) if source else Path(tflite).with_suffix(".json")
        try:
            labels = tuple(str(x) for x in meta["labels"])
            size = int(meta["input_size"])
            channels = int(meta.get("channels", 1))
            margin = float(meta.get("crop_margin", 0.1))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"model metadata {meta_path} lacks or mistypes a field ({exc}); needs labels, input_size, channels, crop_margin"
            ) from None
        if len(labels) < 2 or size < 8 or channels not in (1, 3) or not 0 <= margin < 1:
            raise BundleError(f"model metadata {meta_path}: labels, input_size, channels (1 or 3) or crop_margin out of range")
        norm = str(meta.get("normalization", "folded"))
        if norm != "folded":
            raise BundleError(f"model metadata {meta_path}: normalization {norm!r} is not supported; export with normalisation folded into the graph")
        geometry = _crop_geometry(meta.get("crop_geometry", {}), meta_path)
        return cls(
            tflite=Path(tflite),
            name=str(meta.get("name", Path(tflite).stem)),
            version=str(meta.get("version", "0")),
            labels=labels,
            input_size=size,
            channels=channels,
            crop_margin=margin,
            normalization=norm,
            untrained=bool(meta.get("untrained", False)),
            metrics=dict(meta.get("metrics", {})),
            meta=meta,
            crop_geometry=geometry,
            output=str(meta.get("output", "probabilities")),
        )

    # --- writing ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        tflite: Path,
        *,
        name: str,
        version: str,
        labels: tuple[str, ...] | list[str],
        input_size: int,
        channels: int,
        crop_margin: float,
        crop_geometry: dict[str, Any] | None = None,
        output: str = "probabilities",
        untrained: bool = False,
        **info: Any,
    ) -> ModelBundle:
        """A new bundle for ``tflite``, checked as :func:`load_bundle` checks one.

        ``crop_geometry`` is the document's form (detector kind -> ``{scale, dx, dy, basis, ...}``,
        notes on how it was fitted kept); ``info``: the informational fields, written after the
        contract in the order given. Nothing is written until :meth:`write`.
        """
        doc: dict[str, Any] = {
            "name": name,
            "version": version,
            "labels": list(labels),
            "input_size": int(input_size),
            "channels": int(channels),
            "normalization": "folded",  # the only form the daemon feeds
            "crop_margin": crop_margin,
            "crop_geometry": dict(crop_geometry or {}),
            "output": output,
            "untrained": untrained,
            **info,
        }
        return cls.from_json(doc, tflite)

    def with_fields(self, **fields: Any) -> ModelBundle:
        """This bundle with fields of its document added (at the end) or replaced (in place), checked again."""
        return type(self).from_json({**self.meta, **fields}, self.tflite)

    def to_json(self) -> str:
        """The document as ``NAME.json`` holds it: two-space indent, a final newline."""
        return json.dumps(self.meta, indent=2) + "\n"

    def write(self, path: str | Path | None = None) -> Path:
        """Write the document to ``path`` (default: the .json beside the .tflite); returns the path."""
        out = Path(path) if path else self.json_path
        out.write_text(self.to_json())
        return out


def default_bundle_path() -> Path:
    return Path(str(resources.files("edge") / "models" / f"{DEFAULT_MODEL_NAME}.tflite"))


def _bundle_in(folder: Path) -> Path:
    """The one bundle's .tflite in ``folder`` (an export directory); BundleError when there is none or several."""
    found = sorted(t for t in folder.glob("*.tflite") if not t.name.endswith("_edgetpu.tflite") and t.with_suffix(".json").is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise BundleError(f"classifier.model {folder} is a folder without a model bundle (NAME.tflite with NAME.json beside it); "
                          "point it at a bundle's .tflite")
    raise BundleError(f"classifier.model {folder} holds several bundles ({', '.join(t.name for t in found)}); "
                      "point it at one of the .tflite files")


def load_bundle(path: str | Path | None = None) -> ModelBundle:
    """Load a bundle from its ``.tflite`` or ``.json`` path, or the folder holding it (None = the shipped default)."""
    p = Path(path) if path else default_bundle_path()
    if p.is_dir():
        p = _bundle_in(p)
    tflite = p.with_suffix(".tflite") if p.suffix == ".json" else p
    if tflite.name.endswith("_edgetpu.tflite"):
        tflite = tflite.with_name(tflite.name.replace("_edgetpu.tflite", ".tflite"))
    meta_path = tflite.with_suffix(".json")
    if not tflite.is_file():
        raise BundleError(f"model file {tflite} does not exist; set classifier.model to a bundle's .tflite (with its .json beside it)")
    if not meta_path.is_file():
        raise BundleError(f"model metadata {meta_path} is missing; a bundle is NAME.tflite plus NAME.json (deepfer-train export writes both)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"model metadata {meta_path} is not valid JSON: {exc}") from None
    return ModelBundle.from_json(meta, tflite, meta_path)


def _crop_geometry(raw: Any, meta_path: Path) -> dict[str, CropGeometry]:
    """``crop_geometry`` of a bundle's JSON: detector kind -> CropGeometry (entries that are not objects,
    such as a note on how they were fitted, are skipped)."""
    if not isinstance(raw, dict):
        raise BundleError(f"model metadata {meta_path}: crop_geometry must map detector kinds to {{scale, dx, dy, basis}}")
    out: dict[str, CropGeometry] = {}
    for kind, g in raw.items():
        if not isinstance(g, dict):
            continue
        try:
            geometry = CropGeometry(float(g["scale"]), float(g.get("dx", 0.0)), float(g.get("dy", 0.0)),
                                    str(g.get("basis", "geomean")))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"model metadata {meta_path}: crop_geometry.{kind} lacks or mistypes a field ({exc}); "
                              "needs scale, and optionally dx, dy, basis") from None
        if not 0.3 <= geometry.scale <= 4.0 or abs(geometry.dx) > 1 or abs(geometry.dy) > 1 or geometry.basis not in BASES:
            raise BundleError(f"model metadata {meta_path}: crop_geometry.{kind} = {g} is out of range "
                              f"(scale 0.3..4, |dx|, |dy| <= 1, basis one of {', '.join(BASES)}); refit it with "
                              "tools/fit_crop_geometry.py")
        out[str(kind)] = geometry
    return out
