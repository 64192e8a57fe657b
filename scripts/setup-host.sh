#!/usr/bin/env bash
# Installs what vmwarden needs on a Debian 12 host (libvirt and QEMU from the same
# backports suite as the shipped qemu-utils; PostgreSQL for the store's tests) and starts virtlogd and libvirtd when
# they are not running (PID 1 may not be systemd). Idempotent.
set -euo pipefail

pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-secret libvirt-clients libvirt-dev qemu-system-x86 pkg-config)
sources=/etc/apt/sources.list.d/debian.sources

need_install=0
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_install=1
done
for t in sqlite3 python3 socat tini setpriv; do command -v "$t" >/dev/null || need_install=1; done
# The contract tests' virtualenv (schemathesis, openapi-python-client) needs venv and pip.
python3 -c 'import ensurepip, venv' 2>/dev/null || need_install=1
# The store's tests start a throwaway PostgreSQL cluster (initdb, postgres) of their own.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_install=1

if [ "$need_install" = 1 ]; then
  if [ -f "$sources" ] && ! grep -q 'bookworm-backports' "$sources"; then
    # Add the suite to the first Suites line only (the main archive entry).
    sed -i '0,/^Suites:/{s/^Suites:\(.*\)$/Suites:\1 bookworm-backports/}' "$sources"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q -t bookworm-backports --no-install-recommends "${pkgs[@]}"
  apt-get install -y -q --no-install-recommends sqlite3 socat python3 python3-venv tini util-linux postgresql
fi

if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  pgrep -x virtlogd >/dev/null || virtlogd -d
  # libvirt reports a dead QEMU only once the process is reaped. QEMU daemonizes, so its
  # parent is the nearest subreaper or PID 1. Without systemd as PID 1 (containers), init may
  # reap late and delay lifecycle events by seconds; tini -s reaps libvirtd's orphans at once.
  if ! pgrep -x libvirtd >/dev/null; then
    setsid -f tini -s -- libvirtd </dev/null >/dev/null 2>&1
  fi
  for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
virsh -c qemu:///system version >/dev/null

# Without udev (containers, minimal images) /dev/kvm keeps mode 0600 root:root, and QEMU,
# which libvirt runs as libvirt-qemu (group kvm), cannot open it. Apply what Debian's udev
# rule does on a normal host.
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  if [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ] && [ "$(stat -c %a /dev/kvm)" != "666" ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
fi
