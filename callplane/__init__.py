"""callplane: put a voice AI agent on the phone network and the web."""

__version__ = "0.1.0"
