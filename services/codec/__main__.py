from services.codec.handlers import handlers
from services.codec.settings import CodecSettings
from services.runner import run
from wire.subjects import Service

settings = CodecSettings()
run(Service.CODEC, settings, lambda nc: handlers(settings.inflate_cap_bytes))
