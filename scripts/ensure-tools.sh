#!/usr/bin/env bash
# Install the Debian packages listed in scripts/debian-packages.txt that are missing
# (only those of the commands given as arguments, if any: `make run` asks for promtool's,
# Prometheus, alone). Idempotent and quick when everything is there. Needs root (as on CI) for apt-get;
# without it, it says what to install and carries on (tests that need a tool then fail
# with a clear message).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
missing=()
while read -r cmd pkg; do
  [[ -z "${cmd:-}" || "$cmd" == \#* ]] && continue
  [[ $# -gt 0 && " $* " != *" $cmd "* ]] && continue
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done < "$here/debian-packages.txt"
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "ensure-tools: please install these Debian packages: ${missing[*]}" >&2
  exit 0
fi
echo "ensure-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
