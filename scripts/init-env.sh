#!/usr/bin/env bash
# Write .env from .env.example with fresh random secrets (make env). Refuses to
# overwrite an existing .env. Secrets start with a letter and use [A-Za-z0-9] only, as
# nats-server's configuration parser needs for the NATS passwords.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-.env}
if [[ -e "$target" ]]; then
  echo "init-env: $target exists; not touching it (delete it to start over)" >&2
  exit 1
fi
umask 077
python3 - .env.example "$target" <<'PY'
import secrets
import string
import sys

source, target = sys.argv[1], sys.argv[2]
alphabet = string.ascii_letters + string.digits
lengths = {"JWT_SECRET": 48}


def secret(n: int) -> str:
    return secrets.choice(string.ascii_letters) + "".join(
        secrets.choice(alphabet) for _ in range(n - 1)
    )


out = []
for line in open(source).read().splitlines():
    name, sep, value = line.partition("=")
    if sep and not line.startswith("#") and value == "" and (
        name.endswith("_PASSWORD") or name.endswith("_SECRET")
    ):
        line = f"{name}={secret(lengths.get(name, 32))}"
    out.append(line)
open(target, "w").write("\n".join(out) + "\n")
PY
echo "init-env: wrote $target with new secrets (Grafana: user admin, password GRAFANA_ADMIN_PASSWORD)"
