#!/usr/bin/env bash
# Install (or update) niodoo-supervisor as a systemd service from this checkout: the steps of
# README.md, "Installing the service". Run as root. Leaves an existing config and environment
# file alone; does not start the service.
#   /opt/niodoo-supervisor/venv                      the supervisor (pip install of this checkout)
#   /opt/niodoo-supervisor/README.md                 the unit's Documentation=
#   /usr/local/bin/niodoo-supervisor                 the command on PATH (render, check, status)
#   /usr/local/sbin/niodoo-supervisor-check          `check` run as the service would run it
#   /etc/niodoo-supervisor/niodoo.yaml               the config (config/niodoo.yaml the first time)
#   /etc/niodoo-supervisor/env                       NIODOO_API_KEY=... (root only, read by systemd)
#   /etc/systemd/system/niodoo-supervisor.service    the unit
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/niodoo-supervisor
etc=/etc/niodoo-supervisor

if [ "$(id -u)" != 0 ]; then
    echo "install-service: run as root (sudo $0)" >&2
    exit 1
fi
if ! id niodoo > /dev/null 2>&1; then
    useradd --system --home-dir /var/lib/niodoo-supervisor --no-create-home \
        --shell /usr/sbin/nologin niodoo
fi
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install --quiet --disable-pip-version-check "$src"
ln -sfn "$prefix/venv/bin/niodoo-supervisor" /usr/local/bin/niodoo-supervisor
install -m 0755 "$src/scripts/check-as-service.sh" /usr/local/sbin/niodoo-supervisor-check
install -m 0644 "$src/README.md" "$prefix/README.md"
install -d -m 0755 "$etc"
[ -e "$etc/niodoo.yaml" ] || install -m 0644 "$src/config/niodoo.yaml" "$etc/niodoo.yaml"
[ -e "$etc/env" ] || install -m 0600 /dev/null "$etc/env"
install -m 0644 "$src/systemd/niodoo-supervisor.service" /etc/systemd/system/
systemctl daemon-reload
echo "install-service: installed; edit $etc/niodoo.yaml and $etc/env, then run niodoo-supervisor-check" >&2
