"""DeepFER edge: facial emotion recognition on the device, events over MQTT."""

# The one version source of the package (pyproject reads it); the model's version lives in its bundle.
__version__ = "0.5.0"
