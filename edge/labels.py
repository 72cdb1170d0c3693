"""Emotion labels in FER2013 order, the order of the shipped model's outputs."""

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
