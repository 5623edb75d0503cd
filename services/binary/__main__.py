from services.binary.handlers import build
from services.binary.settings import BinarySettings
from services.runner import SlowOps, run
from wire.subjects import Op, Service

settings = BinarySettings()
# File requests wait on JetStream and on each other's owners (an upload's sync asks the
# replica that owns it, up to 2 s): one at a time, one user's slow request would hold up
# every other user's on this replica (services/scheduler.py).
FILE_OPS = frozenset({Op.FILE_UPLOAD, Op.FILE_READ, Op.FILE_INFO, Op.FILE_LIST, Op.FILE_DELETE})
slow = SlowOps(FILE_OPS, settings.concurrency, settings.queue_bytes)
run(Service.BINARY, settings, lambda nc: build(nc, settings), slow)
