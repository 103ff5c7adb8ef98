"""Operations: metrics, systemd readiness, the operator's admin socket."""
