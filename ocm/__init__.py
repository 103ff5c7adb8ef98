"""ocm, the Online Chat Messenger: a small chat daemon and its client."""

__version__ = "0.1.0"
