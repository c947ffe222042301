"""moesif-sniffer's I/O shell: capture sources, Kong leg joining, Moesif events and delivery, CLI."""

__version__ = "0.1.0"
