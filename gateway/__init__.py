"""The Switchboard gateway: WebSocket in, NATS out, replies relayed back in order."""
