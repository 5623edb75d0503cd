from services.codec.handlers import handlers
from services.codec.settings import CodecSettings
from services.runner import run
from wire.subjects import Service

settings = CodecSettings()
REPLY_HEADROOM = 64 * 1024  # report frame and headers next to the output


def factory(nc):
    cap = min(settings.transform_cap_bytes, nc.max_payload - REPLY_HEADROOM)
    return handlers(settings.inflate_cap_bytes, cap)


run(Service.CODEC, settings, factory)
