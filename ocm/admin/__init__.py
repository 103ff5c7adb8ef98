"""The operator's admin socket: its protocol, the daemon's side, and ocm-admin."""
