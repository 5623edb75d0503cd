from services.chat.handlers import handlers
from services.chat.settings import ChatSettings
from services.runner import run
from wire.subjects import Service

run(Service.CHAT, ChatSettings(), lambda nc: handlers(nc.publish))
