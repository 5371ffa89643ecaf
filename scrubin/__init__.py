"""scrubin: the command line and the composition root that wires imaging, registration,
headset_bridge and mentor into a theatre session."""

__version__ = "0.1.0"
