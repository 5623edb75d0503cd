from services.binary.handlers import build
from services.binary.settings import BinarySettings
from services.runner import run
from wire.subjects import Service

settings = BinarySettings()
run(Service.BINARY, settings, lambda nc: build(nc, settings))
