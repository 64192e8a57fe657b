#!/usr/bin/env bash
# Builds the .deb and checks it on this machine, as root (`make package-test`, part of
# `make test`):
#  1. build (packaging/build-deb.sh: cargo-deb, installed when missing);
#  2. lintian: no error; every remaining warning is explained in packaging/README.md;
#  3. dpkg -i, then the user, the group, libvirt membership, units, conffile, man pages,
#     completions, the state directory and the deb-systemd-helper state;
#  4. systemd-analyze verify on the installed units and security --offline=true on the
#     service (overall exposure <= 2.0);
#  5. the installed vmwardend as user vmwarden without systemd (PID 1 need not be systemd):
#     /run/vmwarden and /var/lib/vmwarden as RuntimeDirectory=/StateDirectory= make them,
#     UMask=0077, LimitCORE=0, and an approximation of the unit's sandbox (no new privileges,
#     the @system-service system call filter minus @privileged and @resources, refusing
#     write+execute memory); `vmwarden health` as root through /run/vmwarden/vmwarden.sock;
#     qemu-img creates a LUKS image in a drives directory under the same sandbox;
#  6. dpkg -r: state and conffile stay; dpkg -P: they go, the user and group stay.
# Leaves the machine as it found it (package purged, daemon stopped), so it can run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
step() { echo "== [$(($(date +%s) - t0))s] $*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i, a system user)"

PIDFILE=/run/vmwarden-package-test.pid
LOG=$(mktemp /tmp/vmwarden-package-test.XXXXXX.log)
SANDBOX=
SOCK=/run/vmwarden/vmwarden.sock

# installed, or removed with its conffiles left
pkg_known() { dpkg-query -W -f='${Status}' vmwarden 2>/dev/null | grep -qE 'install ok|config-files'; }

stop_daemon() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  # Only the daemon this script started: same pid and still vmwardend.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = vmwardend ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
  fi
  rm -f "$PIDFILE"
}
cleanup() {
  local rc=$?
  stop_daemon
  [ -z "$SANDBOX" ] || rm -f "$SANDBOX"
  if [ "$rc" != 0 ]; then
    echo "--- daemon log ($LOG)" >&2
    tail -n 40 "$LOG" >&2 || true
    # Do not leave a half-tested package behind for the next run.
    if pkg_known; then
      dpkg -P vmwarden >/dev/null 2>&1 || true
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT

step "tools"
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v man >/dev/null || missing+=(man-db)
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || missing+=(python3-seccomp)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A previous run that died half-way: its daemon and its package go first.
stop_daemon
if pkg_known; then
  step "purging a vmwarden package left behind"
  dpkg -P vmwarden
fi

step "build"
deb=$(bash packaging/build-deb.sh | tail -n 1)
[ -f "$deb" ] || fail "no package built"
echo "$deb: $(du -h "$deb" | cut -f1)"

step "lintian"
# lintian runs as root here (CI); it says so on stderr.
lint=$(lintian -I --fail-on none --no-tag-display-limit "$deb" 2>/dev/null || true)
echo "${lint:-(no tags)}"
if grep -q '^E: ' <<<"$lint"; then
  fail "lintian errors"
fi
for tag in $(grep '^W: ' <<<"$lint" | sed -E 's/^W: [^ ]+ ([a-z0-9-]+).*/\1/' | sort -u); do
  grep -q -- "$tag" packaging/README.md || fail "lintian warning $tag is not explained in packaging/README.md"
done
echo "lintian: no errors; $(grep -c '^W: ' <<<"$lint" || true) warning(s), all explained in packaging/README.md"

step "systemd-analyze security (source unit)"
exposure() {
  systemd-analyze security --offline=true --no-pager "$1" 2>&1 |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
e=$(exposure systemd/vmwarden.service)
[ -n "$e" ] || fail "no exposure level from systemd-analyze security"
echo "overall exposure: $e"
awk -v e="$e" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $e > 2.0"

step "dpkg -i"
dpkg -i "$deb" || {
  apt-get install -y -q -f --no-install-recommends
  dpkg -s vmwarden | grep -q "install ok installed" || fail "dpkg -i"
}

step "installed files, user, group"
getent group vmwarden >/dev/null || fail "no group vmwarden"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd vmwarden) || fail "no user vmwarden"
[ "$uid" -lt 1000 ] || fail "vmwarden is not a system user (uid $uid)"
[ "$(getent group "$gid" | cut -d: -f1)" = vmwarden ] || fail "primary group of vmwarden is not vmwarden"
[ "$home" = /var/lib/vmwarden ] || fail "home of vmwarden is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "shell of vmwarden is $shell"
if getent group libvirt >/dev/null; then
  id -nG vmwarden | tr ' ' '\n' | grep -qx libvirt || fail "vmwarden is not in group libvirt"
  echo "vmwarden: uid $uid, groups $(id -nG vmwarden)"
else
  echo "vmwarden: uid $uid, groups $(id -nG vmwarden) (no libvirt group on this host)"
fi
unitdir=
for d in /usr/lib/systemd/system /lib/systemd/system; do
  [ -f "$d/vmwarden.service" ] && unitdir=$d && break
done
[ -n "$unitdir" ] || fail "vmwarden.service not installed"
[ -f "$unitdir/vmwarden.socket" ] || fail "vmwarden.socket not installed"
for f in /usr/sbin/vmwardend /usr/bin/vmwarden; do [ -x "$f" ] || fail "$f missing"; done
[ -f /etc/vmwarden/config.toml ] || fail "config missing"
dpkg-query -W -f='${Conffiles}\n' vmwarden | grep -q '^ /etc/vmwarden/config.toml ' ||
  fail "/etc/vmwarden/config.toml is not a conffile"
verify_opts=()
if grep -qsE '^path-exclude[= ]+/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
  verify_opts=(--man=no)
  # Minimal images tell dpkg to skip man pages: check the package carries them.
  echo "note: dpkg excludes /usr/share/man on this host; checking the package contents"
  for m in man1/vmwarden.1.gz man8/vmwardend.8.gz man1/vmwarden-vm-start.1.gz; do
    dpkg -c "$deb" | grep -q "usr/share/man/$m" || fail "no $m in the package"
  done
else
  man -w vmwarden >/dev/null || fail "no man page vmwarden(1)"
  man -w 8 vmwardend >/dev/null || fail "no man page vmwardend(8)"
  man -w vmwarden-vm-start >/dev/null || fail "no man page vmwarden-vm-start(1)"
fi
for f in /usr/share/bash-completion/completions/vmwarden /usr/share/zsh/vendor-completions/_vmwarden \
  /usr/share/fish/vendor_completions.d/vmwarden.fish /usr/share/polkit-1/rules.d/60-vmwarden.rules; do
  [ -f "$f" ] || fail "$f missing"
done
bash -n /usr/share/bash-completion/completions/vmwarden || fail "bash completion does not parse"
[ "$(stat -c '%U:%G %a' /var/lib/vmwarden)" = "vmwarden:vmwarden 711" ] ||
  fail "/var/lib/vmwarden is $(stat -c '%U:%G %a' /var/lib/vmwarden)"
# deb-systemd-helper enabled the socket (symlinks are made even when systemd is not running).
[ -L /etc/systemd/system/sockets.target.wants/vmwarden.socket ] || fail "vmwarden.socket not enabled"
echo "units in $unitdir; conffile, man pages, completions, polkit rule in place; vmwarden.socket enabled"

step "systemd-analyze verify / security (installed units)"
systemd-analyze verify "${verify_opts[@]}" "$unitdir/vmwarden.service" "$unitdir/vmwarden.socket" ||
  fail "systemd-analyze verify"
e=$(exposure "$unitdir/vmwarden.service")
echo "verify: ok; overall exposure: $e"
awk -v e="$e" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $e > 2.0"

# $SANDBOX [--filter] [--listen PATH] PROGRAM ARGS... runs PROGRAM (exec, same pid) as
# vmwarden (initgroups: vmwarden, libvirt) with no new privileges and umask 0077.
# --listen PATH: first, as root, what vmwarden.socket does: bind PATH (root:vmwarden 0660),
#   listen, pass it as fd 3 with LISTEN_FDS=1, LISTEN_PID=<pid>.
# --filter: the unit's system call filter (@system-service minus @privileged and @resources,
#   expanded with systemd-analyze, EPERM for the rest) and no W+X memory (PR_SET_MDWE, the
#   kernel's MemoryDenyWriteExecute, when the kernel has it).
# An approximation of the unit for hosts where PID 1 is not systemd: the mount and network
# namespaces (ProtectSystem=, PrivateTmp=, PrivateNetwork=, ...) are not reproduced.
SANDBOX=$(mktemp /tmp/vmwarden-sandbox.XXXXXX.py)
cat >"$SANDBOX" <<'PY'
import ctypes, errno, grp, os, pwd, socket, subprocess, sys

def expand(group, seen=None):
    seen = set() if seen is None else seen
    out = set()
    text = subprocess.run(["systemd-analyze", "syscall-filter", group],
                          capture_output=True, text=True, check=True).stdout
    for line in text.splitlines()[1:]:
        w = line.strip()
        if not w or w.startswith("#"):
            continue
        if w.startswith("@"):
            if w not in seen:
                seen.add(w)
                out |= expand(w, seen)
        else:
            out.add(w)
    return out

args = sys.argv[1:]
use_filter = listen = None
while args and args[0].startswith("--"):
    opt = args.pop(0)
    if opt == "--filter":
        use_filter = True
    elif opt == "--listen":
        listen = args.pop(0)
env = dict(os.environ)
pw = pwd.getpwnam("vmwarden")
if listen:
    try:
        os.unlink(listen)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(listen)
    os.chown(listen, 0, pw.pw_gid)
    os.chmod(listen, 0o660)
    s.listen(128)
    fd = s.detach()
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    os.set_inheritable(3, True)
    env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="vmwarden.socket")
allowed = expand("@system-service") - expand("@privileged") - expand("@resources") if use_filter else None
os.setgroups(os.getgrouplist("vmwarden", pw.pw_gid))
os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
os.umask(0o077)
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_NO_NEW_PRIVS) failed")
if use_filter:
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("note: no PR_SET_MDWE on this kernel; W+X memory not refused", file=sys.stderr)
    import seccomp
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in sorted(allowed):
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (ValueError, RuntimeError, OSError):
            pass  # not a system call of this architecture
    f.load()
os.execve(args[0], args, env)
PY

# start_daemon SANDBOX-OPTIONS...: the installed vmwardend, in the background, pid in $PIDFILE.
# LimitCORE=0, LimitMEMLOCK=32M; env execs python3, which execs vmwardend: one pid.
start_daemon() {
  : >"$LOG"
  (
    ulimit -c 0
    # Raising the hard limit needs CAP_SYS_RESOURCE, which root may lack in a container.
    ulimit -l 32768 2>/dev/null || echo "note: LimitMEMLOCK=32M not reproducible here; memlock stays $(ulimit -l) KiB"
    cd /
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin RUST_LOG=info VMWARDEN_LOG=stderr \
      /usr/bin/python3 "$SANDBOX" "$@" /usr/sbin/vmwardend --config /etc/vmwarden/config.toml >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
  )
  local pid
  pid=$(cat "$PIDFILE")
  # Up when it answers (a passed socket exists before the daemon runs).
  for _ in $(seq 1 100); do
    # 0 ok, 6 degraded (libvirt refuses the user): either way the daemon answers.
    rc=0; vmwarden --socket "$SOCK" health >/dev/null 2>&1 || rc=$?
    { [ "$rc" = 0 ] || [ "$rc" = 6 ]; } && break
    [ -d "/proc/$pid" ] || fail "the daemon exited"
    sleep 0.1
  done
  [ "$(cat "/proc/$pid/comm")" = vmwardend ] || fail "pid $pid is not vmwardend"
  echo "vmwardend pid $pid: user,group,groups: $(ps -o user=,group=,supgrp= -p "$pid" | tr -s ' ')"
  echo "  $(grep -E '^(NoNewPrivs|Seccomp|CapEff):' "/proc/$pid/status" | tr -s '\t\n' '  ')"
  echo "  socket: $(stat -c '%U:%G %a' "$SOCK")"
  [ "$(stat -c '%G %a' "$SOCK")" = "vmwarden 660" ] || fail "socket is $(stat -c '%U:%G %a' "$SOCK")"
  [ "$(stat -c '%a' /var/lib/vmwarden/state.db)" = 600 ] || fail "state.db is not 0600"
  rc=0; health=$(vmwarden --socket "$SOCK" --json health) || rc=$?
  { [ "$rc" = 0 ] || [ "$rc" = 6 ]; } || fail "vmwarden health failed ($rc): $health"
  health=$(tr -d ' \n' <<<"$health")
  echo "  vmwarden health: $health"
  grep -qE '"status":"(ok|degraded)"' <<<"$health" || fail "health: $health"
  if grep -q '"status":"ok"' <<<"$health"; then
    echo "  hypervisor reachable as user vmwarden"
  else
    echo "  NOTE: libvirt refuses user vmwarden here: $(grep -m1 -oE 'Cannot connect to qemu.*' "$LOG" || echo 'see the log')"
    echo "        (expected where libvirtd checks polkit but no system bus runs; see packaging/README.md)"
  fi
}

stop_daemon_checked() {
  local pid
  pid=$(cat "$PIDFILE")
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  [ -d "/proc/$pid" ] && fail "the daemon did not stop"
  rm -f "$PIDFILE"
  grep -q "shutting down" "$LOG" || fail "no clean shutdown in the log"
}

# What RuntimeDirectory=vmwarden (0755, owned by the user) and StateDirectory=vmwarden
# (0711) do before ExecStart; the postinst made the state directory already.
install -d -o vmwarden -g vmwarden -m 0755 /run/vmwarden
install -d -o vmwarden -g vmwarden -m 0711 /var/lib/vmwarden

step "vmwardend as user vmwarden, binding its own socket (no systemd)"
start_daemon
stop_daemon_checked
[ -e "$SOCK" ] && fail "the daemon left its socket behind"

step "vmwardend socket-activated, under the unit's system call filter and W^X"
start_daemon --filter --listen "$SOCK"
grep -q 'activated=true' "$LOG" || fail "the daemon did not take the passed socket"

step "qemu-img under the same filter"
drives=/var/lib/vmwarden/drives-package-test
install -d -o vmwarden -g vmwarden -m 0711 "$drives"
# The command line of src/hypervisor/image.rs: the passphrase on stdin, through a pipe the
# sandboxed user made (as the daemon's own pipe to its child).
/usr/bin/python3 "$SANDBOX" --filter /bin/sh -c 'printf %s package-test-passphrase |
  exec /usr/bin/qemu-img create -q -f qcow2 --object secret,id=sec0,file=/dev/stdin \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 "$0" 16M' "$drives/t.qcow2" ||
  fail "qemu-img create under the sandbox"
qemu-img info "$drives/t.qcow2" | grep -q 'encrypt' || fail "image is not encrypted"
echo "LUKS qcow2 created, $(stat -c '%U %a' "$drives/t.qcow2")"
rm -rf "$drives"

step "stop"
stop_daemon_checked
# A passed socket stays for the next activation; stopping vmwarden.socket removes it.
[ -S "$SOCK" ] || fail "the passed socket is gone"
rm -f "$SOCK"

step "dpkg -r"
dpkg -r vmwarden
[ ! -e /usr/sbin/vmwardend ] || fail "binary left after remove"
[ ! -e "$unitdir/vmwarden.service" ] || fail "unit left after remove"
[ -f /etc/vmwarden/config.toml ] || fail "remove took the conffile"
[ -f /var/lib/vmwarden/state.db ] || fail "remove took the state"
getent passwd vmwarden >/dev/null || fail "remove took the user"
dpkg-query -W -f='${Status}\n' vmwarden | grep -q 'deinstall ok config-files' || fail "not in config-files state"
echo "removed: binaries and units gone; config.toml and /var/lib/vmwarden kept"

step "dpkg -P"
dpkg -P vmwarden
[ ! -e /etc/vmwarden ] || fail "/etc/vmwarden left after purge"
[ ! -e /var/lib/vmwarden ] || fail "/var/lib/vmwarden left after purge"
[ ! -e /run/vmwarden ] || fail "/run/vmwarden left after purge"
[ ! -e /etc/systemd/system/sockets.target.wants/vmwarden.socket ] || fail "enablement left after purge"
getent passwd vmwarden >/dev/null || fail "purge removed the user (it should stay)"
getent group vmwarden >/dev/null || fail "purge removed the group (it should stay)"
pkg_known && fail "package still known to dpkg"
echo "purged: conffile, state, runtime directory and enablement gone; user and group kept"

rm -f "$LOG"
step "package test passed"
