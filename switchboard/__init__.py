"""Switchboard tooling that is not a running service: the local stack runner."""
