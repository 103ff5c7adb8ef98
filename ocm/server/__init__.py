"""The daemon: the room service, what it uses, the front desk and the listeners."""
