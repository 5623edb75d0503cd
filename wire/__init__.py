"""What crosses a process boundary in Switchboard.

Subjects (:mod:`wire.subjects`), header names (:mod:`wire.headers`), error codes
(:mod:`wire.errors`), the reply frame layout (:mod:`wire.frames`), metric definitions
(:mod:`wire.metrics`) and the NATS connection helper (:mod:`wire.natsconn`).
No service spells a subject or parses a payload by itself.
"""
