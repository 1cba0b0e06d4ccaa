"""hatcam: a wearable Raspberry Pi camera that never loses footage."""

__version__ = "0.1.0"
