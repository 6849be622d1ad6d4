#!/usr/bin/env bash
# Prepare (or reuse) what the real-systemd test tier (tests/systemd) needs:
#   - systemd-nspawn and debootstrap on this machine (apt-get, when missing);
#   - two Debian root file systems that boot a real systemd in a container:
#       bookworm (systemd 252, Python 3.11): runs the installed unit with the supervisor;
#       bullseye (systemd 247): checks device access on a systemd older than 252;
#   - a folder of wheels (the project's dependencies and build requirements, built for the
#     bookworm root's Python) so the documented `pip install` runs offline in the container.
# Each root is cached as a tarball (and unpacked beside it) under
# ~/.cache/niodoo-supervisor/systemd/, keyed by a stamp of its package list, so clones and CI
# reuse it; the wheels are keyed by pyproject.toml's requirements. The first run takes a few
# minutes, later runs well under a second.
#
# Needs root. Prints "NAME PATH" lines (bookworm, bullseye, wheels) on stdout.
# Environment:
#   NIODOO_SYSTEMD_CACHE   where the roots live (default ~/.cache/niodoo-supervisor/systemd)
#   NIODOO_DEBIAN_MIRROR   the Debian mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail
shopt -s inherit_errexit

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${NIODOO_SYSTEMD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/niodoo-supervisor/systemd}"
mirror="${NIODOO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# procps provides /bin/kill, which the unit's ExecReload needs; python3-venv the documented
# install's `python3 -m venv`.
bookworm_packages="systemd,systemd-sysv,dbus,procps,python3,python3-venv"
bullseye_packages="systemd,systemd-sysv,dbus,procps,python3"

log() { echo "setup-systemd-env [${SECONDS}s]: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "needs root (debootstrap, systemd-nspawn)"
    exit 1
fi

install_tools() {
    if command -v systemd-nspawn > /dev/null && command -v debootstrap > /dev/null; then
        return
    fi
    if ! command -v apt-get > /dev/null; then
        log "install systemd-nspawn (package systemd-container) and debootstrap, then run again"
        exit 1
    fi
    log "installing systemd-container and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        systemd-container debootstrap >&2
}

stamp_of() { echo "$*" | sha256sum | cut -c1-12; }

# make_root SUITE PACKAGES: prints the unpacked root's path; builds or unpacks it when needed.
make_root() {
    local suite="$1" packages="$2"
    local name="$suite-$(stamp_of "$suite $packages $mirror")"
    local root="$cache/$name" tarball="$cache/$name.tar.gz"
    if [ -f "$root/.niodoo-ready" ]; then
        echo "$root"
        return
    fi
    rm -rf "$root.tmp"
    mkdir -p "$root.tmp"
    if [ -f "$tarball" ]; then
        log "unpacking $tarball"
        tar -xzf "$tarball" -C "$root.tmp"
    else
        log "debootstrap $suite into $root (about a minute)"
        debootstrap --variant=minbase --include="$packages" "$suite" "$root.tmp" "$mirror" \
            > "$cache/$name.debootstrap.log" 2>&1 \
            || { log "debootstrap failed, see $cache/$name.debootstrap.log"; exit 1; }
        rm -rf "$root.tmp"/var/cache/apt/archives/*.deb "$root.tmp"/var/lib/apt/lists/*
        # An empty machine-id: each boot gets a fresh one (the root is booted read-only).
        : > "$root.tmp/etc/machine-id"
        # Building the wheels binds the host's resolver configuration over this file.
        [ -e "$root.tmp/etc/resolv.conf" ] || : > "$root.tmp/etc/resolv.conf"
        tar -C "$root.tmp" -cf - . | gzip -1 > "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
    fi
    touch "$root.tmp/.niodoo-ready"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    echo "$root"
}

# make_wheels ROOT: wheels of pyproject.toml's dependencies and build requirements, built by
# the root's own Python (the container's) inside a private mount namespace.
make_wheels() {
    local root="$1"
    # Keyed by the root and by pyproject.toml's dependency and build-requirement lists.
    local requirements
    requirements="$(sed -n '/^dependencies = \[/,/^\]/p; /^requires = /p' "$repo/pyproject.toml")"
    local wheels="$cache/wheels-$(stamp_of "$(basename "$root") $requirements")"
    if [ -f "$wheels/.niodoo-ready" ]; then
        echo "$wheels"
        return
    fi
    log "building wheels for the container's Python into $wheels"
    rm -rf "$wheels.tmp"
    mkdir -p "$wheels.tmp"
    cp "$repo/pyproject.toml" "$wheels.tmp/pyproject.toml"
    # pip inside the root trusts what the host trusts (a proxy's CA, say): Debian's pip reads
    # /etc/ssl/certs/ca-certificates.crt, so the host's certs folder is bound over the root's.
    unshare --mount --fork sh -euc '
        root="$1" wheels="$2"
        mount --make-rprivate /
        mount -t tmpfs tmpfs "$root/tmp"
        mount -t proc proc "$root/proc"
        mkdir "$root/tmp/wheels"
        mount --bind "$wheels" "$root/tmp/wheels"
        mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
        if [ -d /etc/ssl/certs ] && [ -d "$root/etc/ssl/certs" ]; then
            mount --bind /etc/ssl/certs "$root/etc/ssl/certs"
        fi
        if [ -n "${PIP_CERT:-}" ] && [ ! -f "$root$PIP_CERT" ]; then unset PIP_CERT; fi
        unset PIP_FIND_LINKS  # folders of the host, absent in the root
        exec chroot "$root" sh -euc "
            python3 -m venv /tmp/venv
            /tmp/venv/bin/python - > /tmp/requirements.txt <<EOF
import tomllib
with open(\"/tmp/wheels/pyproject.toml\", \"rb\") as f:
    project = tomllib.load(f)
print(\"\\n\".join(project[\"project\"][\"dependencies\"] + project[\"build-system\"][\"requires\"]))
print(\"wheel\")
EOF
            /tmp/venv/bin/pip wheel --quiet --disable-pip-version-check --use-pep517 \
                --wheel-dir /tmp/wheels -r /tmp/requirements.txt
        "
    ' sh "$root" "$wheels.tmp" >&2
    rm "$wheels.tmp/pyproject.toml"
    touch "$wheels.tmp/.niodoo-ready"
    rm -rf "$wheels"
    mv "$wheels.tmp" "$wheels"
    echo "$wheels"
}

mkdir -p "$cache"
# One setup at a time: concurrent test runs wait here instead of building twice.
exec 9> "$cache/.lock"
flock -w 900 9 || { log "another setup has held $cache/.lock for 15 minutes"; exit 1; }

install_tools
# Both roots at once: debootstrap waits on the network as much as on the CPU.
make_root bookworm "$bookworm_packages" > "$cache/.bookworm.path" &
bookworm_job=$!
make_root bullseye "$bullseye_packages" > "$cache/.bullseye.path" &
bullseye_job=$!
wait "$bookworm_job"
wait "$bullseye_job"
bookworm="$(cat "$cache/.bookworm.path")"
bullseye="$(cat "$cache/.bullseye.path")"
wheels="$(make_wheels "$bookworm")"
echo "bookworm $bookworm"
echo "bullseye $bullseye"
echo "wheels $wheels"
