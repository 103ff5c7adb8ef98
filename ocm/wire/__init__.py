"""The wire formats as pure functions and small value types: no sockets, no clock."""
