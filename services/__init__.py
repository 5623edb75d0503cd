"""Switchboard workers: each a nats.micro service started with ``python -m services.<name>``."""
