#!/usr/bin/env bash
# The systemd units under a real systemd: a Debian bookworm root filesystem (debootstrap
# from the mirror apt uses, built once and reused under the build directory) booted with
# systemd-nspawn, with the binary and units installed as `make install` does, against a
# docker-registry on the host's loopback holding an artifact pushed by the ORAS Python
# client. Prints one PASS or FAIL line per check and exits non-zero if any failed.
#
#   tests/systemd/check.sh        (as root; scripts/test.sh runs it)
#
# Needs: debootstrap, systemd-container (installed --no-install-recommends: the
# recommended libnss-mymachines edits the host's /etc/nsswitch.conf), docker-registry,
# util-linux (nsenter), python3 with the `oras` package (PYTHON=... to use another
# interpreter), /dev/fuse and /dev/autofs. The container boots on an overlay of the
# rootfs, so every run starts from the same clean tree; the host's /etc is not touched
# (checked). Whatever happens, everything it started is stopped by PID and unmounted.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
WORK=$TARGET_DIR/systemd-check
ROOTFS=$WORK/rootfs-bookworm
ROOTFS_PKGS=systemd,systemd-sysv,dbus,fuse3
ROOTFS_STAMP="bookworm minbase $ROOTFS_PKGS"
PYTHON=${PYTHON:-python3}
T0=$(date +%s)

failed=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failed=$((failed + 1)); }
die() { printf 'FAIL %s\n' "$*"; exit 1; }
note() { printf '  .. %s\n' "$*"; }

# --- preconditions: a missing tool fails and names its apt package --------------------
[ "$(id -u)" -eq 0 ] || die "systemd check: must run as root (systemd-nspawn, mount)"
need() { command -v "$1" >/dev/null 2>&1 || die "systemd check: $1 not found (apt package $2)"; }
need systemd-nspawn systemd-container
need debootstrap debootstrap
need docker-registry docker-registry
need nsenter util-linux
need journalctl systemd
need "$PYTHON" python3
"$PYTHON" -c 'import oras.client' 2>/dev/null || die "systemd check: $PYTHON cannot import oras (pip package oras)"
[ -c /dev/fuse ] || die "systemd check: /dev/fuse missing (modprobe fuse)"
[ -c /dev/autofs ] || modprobe autofs4 2>/dev/null || true
[ -c /dev/autofs ] || die "systemd check: /dev/autofs missing (modprobe autofs4)"
mkdir -p "$WORK"

etc_state() { find /etc -xdev -printf '%p %y %s %m %T@ %l\n' 2>/dev/null | sort | sha256sum; }
ETC_BEFORE=$(etc_state)

# --- cleanup, whatever happens ----------------------------------------------------------
RUN=$(mktemp -d "$WORK/run.XXXXXX")
M=$RUN/merged
NSPAWN=""
LEADER=""
REGISTRY=""
cleanup() {
    local rc=$?
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        kill -TERM "$NSPAWN" 2>/dev/null # nspawn powers the container off
        for _ in $(seq 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$NSPAWN" 2>/dev/null; then
            [ -n "$LEADER" ] && kill -KILL "$LEADER" 2>/dev/null
            kill -KILL "$NSPAWN" 2>/dev/null
        fi
        wait "$NSPAWN" 2>/dev/null
    fi
    if [ -n "$REGISTRY" ]; then
        kill -TERM "$REGISTRY" 2>/dev/null
        wait "$REGISTRY" 2>/dev/null
    fi
    if mountpoint -q "$M" 2>/dev/null; then
        umount "$M" 2>/dev/null || umount -l "$M"
    fi
    rm -rf "$RUN"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the root filesystem, built once ------------------------------------------------------
apt_mirror() {
    # The Debian mirror apt on this machine uses for bookworm's main suite.
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
        | awk '$2 == "bookworm" { print $1; exit }'
}
if [ "$(cat "$ROOTFS/.orasfs-rootfs" 2>/dev/null)" != "$ROOTFS_STAMP" ]; then
    mirror=$(apt_mirror)
    mirror=${mirror:-http://deb.debian.org/debian/}
    note "building the bookworm rootfs from $mirror (once; reused from $ROOTFS)"
    rm -rf "$ROOTFS" "$ROOTFS.new"
    if ! debootstrap --variant=minbase --include="$ROOTFS_PKGS" bookworm "$ROOTFS.new" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1; then
        grep "$ROOTFS.new" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l
        tail -5 "$WORK/debootstrap.log"
        die "debootstrap of bookworm failed (log: $WORK/debootstrap.log)"
    fi
    echo "$ROOTFS_STAMP" >"$ROOTFS.new/.orasfs-rootfs"
    mv "$ROOTFS.new" "$ROOTFS"
fi
mkdir -p "$RUN/upper" "$RUN/work" "$M"
mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$RUN/upper,workdir=$RUN/work" "$M" \
    || die "cannot mount an overlay over $ROOTFS"

# --- the registry and the artifact --------------------------------------------------------
PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$RUN/registry/storage" "$RUN/push"
cat >"$RUN/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $RUN/registry/storage
http:
  addr: 127.0.0.1:$PORT
EOF
docker-registry serve "$RUN/registry/config.yml" >"$RUN/registry/log" 2>&1 &
REGISTRY=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 || die "docker-registry did not answer on 127.0.0.1:$PORT"
head -c 3000017 /dev/urandom >"$RUN/push/scene.bin"
echo "orasfs under systemd" >"$RUN/push/readme.txt"
SUM=$(sha256sum <"$RUN/push/scene.bin" | cut -d' ' -f1)
SOURCE=127.0.0.1:$PORT/eo/products:v1
(cd "$RUN/push" && NO_PROXY='*' "$PYTHON" - "$SOURCE" <<'EOF') || die "oras push of $SOURCE failed"
import sys, oras.client
target = sys.argv[1]
c = oras.client.OrasClient(hostname=target.split("/")[0], insecure=True)
r = c.push(target=target, files=["scene.bin", "readme.txt"], quiet=True)
if r.status_code not in (200, 201):
    sys.exit(f"push failed: {r.status_code} {r.text}")
EOF

# --- install as `make install` does, and configure ----------------------------------------
# ORASFS_CHECK_BIN runs the checks on another build (to watch them fail on an old one).
BIN=${ORASFS_CHECK_BIN:-$TARGET_DIR/debug/orasfs}
if [ -z "${ORASFS_CHECK_BIN:-}" ]; then
    cargo build -q --bin orasfs || die "cargo build failed"
fi
make -s install-files DESTDIR="$M" BIN="$BIN" || die "make install-files failed"
cat >"$M/etc/orasfs/eo.conf" <<EOF
ORASFS_SOURCE=$SOURCE
ORASFS_MOUNTPOINT=/mnt/eo-svc
ORASFS_OPTIONS=-v
EOF
# A service that cannot start (a layout that is not there): the start limit must end its
# retries. RestartSec is shortened to 3 s, still too slow for systemd's default limit
# (5 starts in 10 s) to trip: only the unit's own limit can stop it.
cat >"$M/etc/orasfs/broken.conf" <<EOF
ORASFS_SOURCE=/srv/no-such-layout:v1
ORASFS_MOUNTPOINT=/mnt/broken
EOF
mkdir -p "$M/etc/systemd/system/orasfs@broken.service.d"
printf '[Service]\nRestartSec=3s\n' >"$M/etc/systemd/system/orasfs@broken.service.d/faster.conf"
sed "s|^What=.*|What=$SOURCE|" systemd/mnt-eo.mount >"$M/etc/systemd/system/mnt-eo.mount"
echo "$SOURCE /mnt/auto orasfs ro,_netdev,x-systemd.automount,x-systemd.mount-timeout=10s,cache_dir=/var/cache/orasfs 0 0" \
    >>"$M/etc/fstab"

# --- the container ------------------------------------------------------------------------
boot() {
    systemd-nspawn -q -D "$M" --register=no --keep-unit --link-journal=no \
        --bind=/dev/fuse --bind=/dev/autofs --console=read-only -b \
        >"$RUN/console.$1.log" 2>&1 &
    NSPAWN=$!
    LEADER=""
    for _ in $(seq 100); do
        LEADER=$(pgrep -P "$NSPAWN" | head -1)
        [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
        LEADER=""
        sleep 0.1
    done
    [ -n "$LEADER" ] || { tail -20 "$RUN/console.$1.log"; die "boot $1: no systemd in the container"; }
    # systemctl fails until PID 1 listens on /run/systemd/private; then --wait waits for
    # the boot to finish.
    local state=""
    for _ in $(seq 300); do
        state=$(timeout 60 nsenter -t "$LEADER" -a systemctl is-system-running --wait 2>/dev/null)
        case "$state" in
            running | degraded | maintenance | stopping | offline) break ;;
        esac
        sleep 0.1
    done
    case "$state" in
        running) ;;
        degraded) note "boot $1: degraded: $(in_ct systemctl --failed --no-legend --plain | tr '\n' ' ')" ;;
        *) die "boot $1: the system did not come up (state '$state')" ;;
    esac
}
in_ct() { nsenter -t "$LEADER" -a "$@"; }
prop() { in_ct systemctl show -p "$2" --value "$1"; }
# Wait for the container to power off; its status goes to $1's variable name.
poweroff() {
    in_ct systemctl poweroff >/dev/null 2>&1
    local i
    for i in $(seq 300); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$NSPAWN" 2>/dev/null; then
        fail "boot $1: the container did not power off within 30 s"
        return 1
    fi
    wait "$NSPAWN"
    local rc=$?
    NSPAWN=""
    LEADER=""
    return "$rc"
}
# FUSE mounts in the container, named the old way (fuse) or the new (fuse.orasfs).
orasfs_mounts_in_ct() { in_ct findmnt -rn -t fuse,fuse.orasfs -o TARGET,FSTYPE,SOURCE; }
now_ms() { date +%s%3N; }
journal_of_last_boot() {
    journalctl -D "$M/var/log/journal" -b -0 -o short-monotonic --no-pager "$@" 2>/dev/null
}

boot 1
# Runs in the background while the other checks run; looked at before poweroff.
in_ct systemctl start --no-block orasfs@broken.service

# --- orasfs@.service -----------------------------------------------------------------------
if in_ct systemctl start orasfs@eo.service; then
    got=$(in_ct sha256sum /mnt/eo-svc/scene.bin | cut -d' ' -f1)
    shown=$(in_ct findmnt -rn -o FSTYPE,SOURCE /mnt/eo-svc)
    if [ "$got" = "$SUM" ] && [ "$shown" = "fuse.orasfs $SOURCE" ]; then
        pass "service: orasfs@eo starts (creating /mnt/eo-svc), reads right, mount is '$shown'"
    else
        fail "service: read $got (want $SUM), mount shown as '$shown'"
    fi
else
    fail "service: orasfs@eo did not start: $(in_ct journalctl -u orasfs@eo -n 5 --no-pager -o cat)"
fi
in_ct systemctl stop orasfs@eo.service
res=$(prop orasfs@eo.service Result) left=$(orasfs_mounts_in_ct)
if [ "$res" = success ] && [ -z "$left" ]; then
    pass "service: stop gives Result=success and leaves no mount"
else
    fail "service: stop gave Result=$res; mounts left: ${left:-none}"
fi

# Stop while busy: a process with its working directory in the mount.
in_ct systemctl start orasfs@eo.service
in_ct systemd-run -q --unit=busy-cwd -p WorkingDirectory=/mnt/eo-svc /bin/sleep 300
t=$(now_ms)
in_ct systemctl stop orasfs@eo.service
took=$(($(now_ms) - t))
res=$(prop orasfs@eo.service Result) status=$(prop orasfs@eo.service ExecMainStatus) left=$(orasfs_mounts_in_ct)
if [ "$res" = success ] && [ "$status" = 0 ] && [ -z "$left" ] && [ "$took" -lt 15000 ]; then
    pass "service: stop while busy gives Result=success, exit 0, no mount left, in ${took} ms"
else
    fail "service: stop while busy gave Result=$res status=$status in ${took} ms; mounts left: ${left:-none}"
fi
in_ct systemctl stop busy-cwd.service 2>/dev/null


# --- the .mount unit -------------------------------------------------------------------------
if in_ct systemctl start mnt-eo.mount; then
    got=$(in_ct sha256sum /mnt/eo/scene.bin | cut -d' ' -f1)
    [ "$got" = "$SUM" ] && pass "mount unit: mnt-eo.mount starts and reads right" \
        || fail "mount unit: read $got, want $SUM"
else
    fail "mount unit: mnt-eo.mount did not start: $(in_ct journalctl -u mnt-eo.mount -n 5 --no-pager -o cat)"
fi
in_ct systemctl daemon-reload
before=$(prop mnt-eo.mount Before)
case " $before " in
    *" remote-fs.target "*" local-fs.target "* | *" local-fs.target "*) fail "mount unit: after daemon-reload, Before=$before (local-fs.target: _netdev lost)" ;;
    *" remote-fs.target "*) pass "mount unit: after daemon-reload still ordered before remote-fs.target, not local-fs.target" ;;
    *) fail "mount unit: after daemon-reload, Before=$before" ;;
esac
in_ct systemctl stop mnt-eo.mount
res=$(prop mnt-eo.mount Result) state=$(prop mnt-eo.mount ActiveState) left=$(orasfs_mounts_in_ct)
if [ "$res" = success ] && [ "$state" = inactive ] && [ -z "$left" ]; then
    pass "mount unit: stop leaves it inactive, Result=success, no mount"
else
    fail "mount unit: stop gave $state, Result=$res; mounts left: ${left:-none}"
fi

# --- fstab x-systemd.automount ------------------------------------------------------------------
state=$(prop mnt-auto.automount ActiveState)
t=$(now_ms)
listing=$(in_ct timeout 5 ls /mnt/auto 2>&1)
took=$(($(now_ms) - t))
if [ "$state" = active ] && [ "$took" -lt 2000 ] && printf '%s\n' "$listing" | grep -qx scene.bin; then
    pass "automount: the first ls of /mnt/auto mounts it in ${took} ms"
else
    fail "automount: (automount $state) the first ls took ${took} ms and gave: $(echo $listing)"
fi
in_ct systemctl stop mnt-auto.automount mnt-auto.mount 2>/dev/null

# --- the start limit ---
# systemd 252 keeps Result=exit-code when the limit stops an automatic restart; it logs
# "Start request repeated too quickly" and leaves the unit failed.
limited() {
    [ "$(prop orasfs@broken.service ActiveState)" = failed ] \
        && in_ct journalctl -u orasfs@broken.service -o cat --no-pager | grep -q 'Start request repeated too quickly'
}
for _ in $(seq 300); do limited && break; sleep 0.1; done
n=$(prop orasfs@broken.service NRestarts) state=$(prop orasfs@broken.service ActiveState)/$(prop orasfs@broken.service SubState)
if limited; then
    pass "service: one that cannot start stops retrying at its start limit ($n restarts, then failed)"
else
    fail "service: one that cannot start is $state after $n restarts, not stopped by the start limit"
fi
in_ct systemctl reset-failed orasfs@broken.service 2>/dev/null

# --- at boot --------------------------------------------------------------------------------------
in_ct systemctl enable -q orasfs@eo.service mnt-eo.mount
poweroff 1 || fail "boot 1: the container exited with status $?"

boot 2
ok=1
for u in orasfs@eo.service mnt-eo.mount; do
    [ "$(prop $u ActiveState)" = active ] || { ok=0; note "$u is $(prop $u ActiveState)"; }
done
for f in /mnt/eo-svc/scene.bin /mnt/eo/scene.bin; do
    [ "$(in_ct sha256sum "$f" 2>/dev/null | cut -d' ' -f1)" = "$SUM" ] || { ok=0; note "$f does not read right"; }
done
[ "$ok" = 1 ] && pass "boot: orasfs@eo and mnt-eo.mount are active at boot and read right" \
    || fail "boot: the enabled units are not active and readable"
online=$(prop network-online.target ActiveEnterTimestampMonotonic)
for u in orasfs@eo.service mnt-eo.mount; do
    started=$(prop $u InactiveExitTimestampMonotonic)
    if [ "${online:-0}" -gt 0 ] && [ "${started:-0}" -ge "$online" ]; then
        pass "boot: $u started after network-online.target (+$(((started - online) / 1000)) ms)"
    else
        fail "boot: $u started at $started, network-online.target reached at $online"
    fi
done
poweroff 2
rc=$?
shutdown=$(journal_of_last_boot -u orasfs@eo.service -u mnt-eo.mount)
bad=$(printf '%s\n' "$shutdown" | grep -Ei 'failed|timed out|killing|transport endpoint|error' || true)
if [ "$rc" = 0 ] && printf '%s\n' "$shutdown" | grep -q 'orasfs@eo.service: Deactivated successfully' \
    && printf '%s\n' "$shutdown" | grep -q 'Unmounted mnt-eo.mount' && [ -z "$bad" ]; then
    pass "boot: poweroff stops orasfs@eo and unmounts mnt-eo.mount cleanly"
else
    fail "boot: poweroff (container status $rc): ${bad:-no clean stop of the units in the journal}"
fi

# --- the host -----------------------------------------------------------------------------------
[ "$(etc_state)" = "$ETC_BEFORE" ] && pass "host: /etc untouched" || fail "host: /etc changed during the run"

elapsed=$(($(date +%s) - T0))
if [ "$failed" -eq 0 ]; then
    echo "systemd check: all passed in ${elapsed} s"
else
    echo "systemd check: $failed failed (${elapsed} s); journals in the container are gone with it, rerun by hand to look"
    exit 1
fi
