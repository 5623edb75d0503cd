from services.binary.handlers import handlers
from services.binary.settings import BinarySettings
from services.runner import run
from wire.subjects import Service

run(Service.BINARY, BinarySettings(), lambda nc: handlers())
