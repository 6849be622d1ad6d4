#!/usr/bin/env bash
# `niodoo-supervisor check` run the way the service runs `run`: the same program and config
# (from the unit's ExecStart=), as the service's user, with its environment file (which only
# root can read) and its sandbox (ProtectHome=, ProtectSystem=, ...), all taken from the
# installed unit and its drop-ins. Installed as /usr/local/sbin/niodoo-supervisor-check.
# Extra arguments go to `check` (--strict, --no-port). Exits with check's status.
set -euo pipefail

unit=niodoo-supervisor.service
properties=()
exec_start=""
section=""
while IFS= read -r line; do
    case "$line" in
        "["*"]") section="$line" ;;
    esac
    [ "$section" = "[Service]" ] || continue
    case "$line" in
        ExecStart=?*) exec_start="${line#ExecStart=}" ;;
        # Who runs it, with what environment, seeing which files, devices and system calls.
        # Not RuntimeDirectory= or RemoveIPC=: ending this one-off unit would remove the
        # running service's runtime folder or shared memory.
        User=* | Group=* | SupplementaryGroups=* | DynamicUser=* | Environment=* | \
            EnvironmentFile=* | UnsetEnvironment=* | WorkingDirectory=* | UMask=* | \
            CapabilityBoundingSet=* | NoNewPrivileges=* | Protect*=* | ReadWritePaths=* | \
            ReadOnlyPaths=* | InaccessiblePaths=* | BindPaths=* | BindReadOnlyPaths=* | \
            TemporaryFileSystem=* | PrivateTmp=* | PrivateDevices=* | PrivateMounts=* | \
            PrivateUsers=* | PrivateNetwork=* | DevicePolicy=* | DeviceAllow=* | \
            RestrictAddressFamilies=* | RestrictNamespaces=* | SystemCallFilter=* | \
            SystemCallArchitectures=* | SystemCallErrorNumber=* | StateDirectory=* | \
            LogsDirectory=* | CacheDirectory=* | *DirectoryMode=*)
            properties+=(-p "$line") ;;
    esac
done < <(systemctl cat "$unit")

if [ -z "$exec_start" ]; then
    echo "niodoo-supervisor-check: $unit has no ExecStart=; is it installed (systemctl cat $unit)?" >&2
    exit 1
fi
# ExecStart=PROGRAM run ARGS...  ->  PROGRAM check ARGS... EXTRA...
read -r -a command <<< "$exec_start"
if [ "${command[1]:-}" != run ]; then
    echo "niodoo-supervisor-check: ExecStart= of $unit is not 'PROGRAM run ...': ${exec_start}" >&2
    exit 1
fi
command[1]=check
exec systemd-run --quiet --pipe --wait --collect --service-type=exec \
    "${properties[@]}" -- "${command[@]}" "$@"
