from services.codec.handlers import handlers
from services.codec.settings import CodecSettings
from services.runner import SlowOps, run
from wire.subjects import Op, Service

settings = CodecSettings()
REPLY_HEADROOM = 64 * 1024  # report frame and headers next to the output


def factory(nc):
    cap = min(settings.transform_cap_bytes, nc.max_payload - REPLY_HEADROOM)
    return handlers(settings.inflate_cap_bytes, cap)


# A transform may take half a second (zstd level 19 on 1 MiB): see services/scheduler.py
slow = SlowOps(frozenset({Op.TRANSFORM}), settings.concurrency, settings.queue_bytes)
run(Service.CODEC, settings, factory, slow)
