from services.chat.service import build
from services.chat.settings import ChatSettings
from services.runner import run
from wire.subjects import Service

settings = ChatSettings()
run(Service.CHAT, settings, lambda nc: build(nc, settings))
