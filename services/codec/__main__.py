from concurrent.futures import ThreadPoolExecutor

from services.codec.handlers import handlers
from services.codec.settings import CodecSettings
from services.runner import SlowOps, run
from wire.subjects import Op, Service

settings = CodecSettings()
REPLY_HEADROOM = 64 * 1024  # report frame and headers next to the output


# A transform may take half a second (zstd level 19 on 1 MiB), an inflation to the cap
# tens of milliseconds: both go through a scheduler each (services/scheduler.py) and run
# in these threads, as many as the schedulers run at once.
slow = SlowOps(frozenset({Op.TRANSFORM, Op.INFLATE}), settings.concurrency, settings.queue_bytes)
threads = ThreadPoolExecutor(len(slow.ops) * settings.concurrency, thread_name_prefix="codec")


def factory(nc):
    cap = min(settings.transform_cap_bytes, nc.max_payload - REPLY_HEADROOM)
    return handlers(settings.inflate_cap_bytes, cap, threads)


run(Service.CODEC, settings, factory, slow)
