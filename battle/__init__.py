"""framesync battle: UDP wire protocol and the room core."""

__version__ = "0.1.0"
