from prometheus_client import CollectorRegistry

from services.chat.service import build
from services.chat.settings import ChatSettings
from services.runner import OrderedOps, SlowOps, run
from wire.subjects import Op, Service

settings = ChatSettings()
registry = CollectorRegistry()  # the runner's, with chat's own metrics too
# History pages read JetStream (a page of 500 events: ~12 ms): one at a time, a few
# connections asking for many would hold up everyone's (services/scheduler.py). The
# ordered operations (joins, leaves, publishes) run in order per connection, many
# connections' at once, taking turns: each mostly waits for JetStream.
READS = frozenset({Op.HISTORY, Op.PRESENCE})
run(
    Service.CHAT,
    settings,
    lambda nc: build(nc, settings, registry),
    SlowOps(READS, settings.concurrency, settings.queue_bytes),
    OrderedOps(settings.ordered_concurrency, settings.ordered_queue_bytes),
    registry,
)
