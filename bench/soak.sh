#!/usr/bin/env bash
# Soak test: many readers against one orasfs mount for a long time, over blobs larger than
# the cache, every byte checked.
#
#   bench/soak.sh [--duration SECS] [--readers N] [--blobs N] [--blob-mib MIB]
#                 [--big-mib MIB] [--cache-size SIZE] [--kill ROUNDS] [-- ORASFS-MOUNT-ARGS...]
#
# Defaults: 600 s, 32 readers, 6 blobs of 48 MiB plus one of 160 MiB, --cache-size 128MiB
# (so the blobs do not fit, and one blob alone is bigger than the cache). Each reader loops:
# a whole sequential read of a random file (checked against its sha256) or 16 random preads
# of up to 1 MiB (checked against a local copy). Prints errors (expected: 0), the longest
# single read or open ("stall") with percentiles, throughput, the cache's size on disk, and
# the daemon's peak RSS sampled from /proc every 200 ms. Exits 1 on any error.
#
# --kill ROUNDS instead runs ROUNDS rounds of: mount over the same cache, up to 16 readers
# reading files whole, kill -9 of the daemon after a random 0.05–1 s; then one clean mount
# that reads everything (e.g. `bench/soak.sh --kill 20 --blobs 16 --blob-mib 32 --big-mib 0`). Every byte any reader got is checked, and the registry's own log
# tells how many bytes it served in all (intact chunks must be reused: well under 2x).
#
# Starts its own docker-registry on a free loopback port, builds and uses the release
# binary (ORASFS_BIN overrides), and removes everything it made on exit, even on ^C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${ORASFS_BIN:-}" ]; then
    cargo build --release --quiet
    ORASFS_BIN="$PWD/target/release/orasfs"
fi
export ORASFS_BIN
for tool in docker-registry fusermount3 python3; do
    command -v "$tool" >/dev/null || { echo "soak.sh: $tool is missing" >&2; exit 2; }
done

exec python3 - "$@" <<'PY'
import argparse, hashlib, json, os, random, shutil, signal, socket, subprocess, sys
import tempfile, threading, time, urllib.request

p = argparse.ArgumentParser(prog="bench/soak.sh")
p.add_argument("--duration", type=float, default=600)
p.add_argument("--readers", type=int, default=32)
p.add_argument("--blobs", type=int, default=6)
p.add_argument("--blob-mib", type=int, default=48)
p.add_argument("--big-mib", type=int, default=160)
p.add_argument("--cache-size", default="128MiB")
p.add_argument("--kill", type=int, default=0, metavar="ROUNDS")
p.add_argument("mount_args", nargs="*")
args = p.parse_args()
BIN = os.environ["ORASFS_BIN"]
MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


work = tempfile.mkdtemp(prefix="orasfs-soak-")
procs = []
mounts = []


def cleanup(*_):
    for m in mounts:
        subprocess.run(["fusermount3", "-uz", m], stderr=subprocess.DEVNULL)
    for pr in procs:
        if pr.poll() is None:
            pr.kill()
            pr.wait()
    shutil.rmtree(work, ignore_errors=True)


def on_signal(*_):
    cleanup()
    os._exit(130)


signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)


class Registry:
    def __init__(self):
        self.addr = f"127.0.0.1:{free_port()}"
        self.log = os.path.join(work, "registry.log")
        cfg = os.path.join(work, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: info\n  formatter: json\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {work}/registry-data\n"
                    f"http:\n  addr: {self.addr}\n")
        pr = subprocess.Popen(["docker-registry", "serve", cfg],
                              stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        procs.append(pr)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("soak.sh: the registry did not start")

    def push_blob(self, repo, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        r = urllib.request.urlopen(urllib.request.Request(
            f"http://{self.addr}/v2/{repo}/blobs/uploads/", method="POST", data=b""))
        loc = r.headers["Location"]
        if not loc.startswith("http"):
            loc = f"http://{self.addr}{loc}"
        loc += ("&" if "?" in loc else "?") + "digest=" + d
        urllib.request.urlopen(urllib.request.Request(loc, method="PUT", data=data,
                               headers={"Content-Type": "application/octet-stream"}))
        return d

    def push_artifact(self, repo, tag, files):
        cfg = self.push_blob(repo, b"{}")
        layers = [{"mediaType": "application/octet-stream", "digest": self.push_blob(repo, b),
                   "size": len(b), "annotations": {"org.opencontainers.image.title": n}}
                  for n, b in files]
        m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                   "digest": cfg, "size": 2}, "layers": layers}).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"http://{self.addr}/v2/{repo}/manifests/{tag}", method="PUT", data=m,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
        return [l["digest"] for l in layers]

    def bytes_served(self, digests):
        time.sleep(0.5)
        total = 0
        with open(self.log) as f:
            for line in f:
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                uri = v.get("http.request.uri", "")
                if v.get("http.request.method") == "GET" and any(d in uri for d in digests):
                    total += int(v.get("http.response.written", 0))
        return total


class Mount:
    def __init__(self, source, cache, extra):
        self.dir = tempfile.mkdtemp(dir=work, prefix="mnt-")
        self.log = open(os.path.join(self.dir + ".log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "mount", "--foreground", "--cache-dir", cache, *extra, source, self.dir],
            stdout=subprocess.DEVNULL, stderr=self.log)
        procs.append(self.proc)
        mounts.append(self.dir)
        for _ in range(200):
            if self.mounted():
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"soak.sh: orasfs exited: {open(self.log.name).read()}")
            time.sleep(0.05)
        raise SystemExit("soak.sh: not mounted within 10 s")

    def mounted(self):
        with open("/proc/mounts") as f:
            return any(l.split()[1] == self.dir for l in f)

    def rss_kib(self, field="VmRSS"):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for l in f:
                    if l.startswith(field + ":"):
                        return int(l.split()[1])
        except OSError:
            pass
        return 0

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["fusermount3", "-uz", self.dir], stderr=subprocess.DEVNULL)

    def stop(self):
        subprocess.run(["fusermount3", "-u", self.dir], stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill9()


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.errors = []
        self.reads = 0
        self.bytes = 0
        self.whole = 0
        self.longest = 0.0
        self.times = []

    def error(self, msg):
        with self.lock:
            self.errors.append(msg)

    def timed(self, f):
        t = time.monotonic()
        try:
            return f()
        finally:
            dt = time.monotonic() - t
            with self.lock:
                self.reads += 1
                self.longest = max(self.longest, dt)
                self.times.append(dt)


def whole_read(path, local, digest, t, stop_on_error=False):
    try:
        fd = t.timed(lambda: os.open(path, os.O_RDONLY))
    except OSError as e:
        return t.error(f"open {path}: {e}")
    h, at = hashlib.sha256(), 0
    with open(local, "rb") as ref:
        try:
            while True:
                b = t.timed(lambda: os.read(fd, MIB))
                if not b:
                    break
                if ref.read(len(b)) != b:
                    return t.error(f"{path}: wrong bytes at {at}")
                h.update(b)
                at += len(b)
                with t.lock:
                    t.bytes += len(b)
        except OSError as e:
            if not stop_on_error:
                t.error(f"{path} at {at}: {e}")
            return
        finally:
            close(fd)
    if "sha256:" + h.hexdigest() != digest:
        return t.error(f"{path}: sha256 mismatch after {at} bytes")
    with t.lock:
        t.whole += 1


def random_reads(path, local, size, rng, t):
    try:
        fd = t.timed(lambda: os.open(path, os.O_RDONLY))
    except OSError as e:
        return t.error(f"open {path}: {e}")
    try:
        with open(local, "rb") as ref:
            for _ in range(16):
                n, off = rng.randint(1, MIB), rng.randrange(size)
                try:
                    b = t.timed(lambda: os.pread(fd, n, off))
                except OSError as e:
                    return t.error(f"{path} pread {n} at {off}: {e}")
                ref.seek(off)
                if not b or ref.read(len(b)) != b:
                    return t.error(f"{path}: wrong bytes in pread {n} at {off}")
                with t.lock:
                    t.bytes += len(b)
    finally:
        close(fd)


def close(fd):
    try:
        os.close(fd)
    except OSError:
        pass  # the daemon was killed under it


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def main():
    reg = Registry()
    data_dir = os.path.join(work, "data")
    os.mkdir(data_dir)
    sizes = [args.blob_mib * MIB + 4099 * i for i in range(args.blobs)]
    if args.big_mib:
        sizes.append(args.big_mib * MIB + 7)
    files = []
    for i, n in enumerate(sizes):
        name = f"f{i:02}.bin"
        with open(os.path.join(data_dir, name), "wb") as f:
            f.write(os.urandom(n))
        files.append((name, n))
    print(f"soak: pushing {len(files)} blobs, {sum(sizes) / MIB:.0f} MiB")
    blobs = [(n, open(os.path.join(data_dir, n), "rb").read()) for n, _ in files]
    digests = reg.push_artifact("soak/data", "v1", blobs)
    del blobs
    source = f"{reg.addr}/soak/data:v1"
    cache = os.path.join(work, "cache")
    total = sum(sizes)
    if args.kill:
        return kill_rounds(reg, source, cache, files, digests, total)

    m = Mount(source, cache, ["--cache-size", args.cache_size, *args.mount_args])
    t, stop = Tally(), time.monotonic() + args.duration
    peak, cache_peak = [0], [0]

    def reader(k):
        rng = random.Random(k)
        while time.monotonic() < stop:
            i = rng.randrange(len(files))
            name, size = files[i]
            path, local = os.path.join(m.dir, name), os.path.join(data_dir, name)
            if rng.random() < 0.3:
                whole_read(path, local, digests[i], t)
            else:
                random_reads(path, local, size, rng, t)

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(args.readers)]
    start = time.monotonic()
    for th in threads:
        th.start()
    next_du, next_report = 0, start + 60
    while any(th.is_alive() for th in threads):
        peak[0] = max(peak[0], m.rss_kib())
        now = time.monotonic()
        if now >= next_du:
            cache_peak[0] = max(cache_peak[0], du(cache))
            next_du = now + 2
        if now >= next_report:
            print(f"  {now - start:5.0f} s: {t.reads} reads, {t.bytes / MIB:.0f} MiB, "
                  f"{len(t.errors)} errors, RSS {m.rss_kib() / 1024:.0f} MiB", flush=True)
            next_report = now + 60
        if m.proc.poll() is not None:
            t.error("the daemon exited")
            break
        time.sleep(0.2)
    took = time.monotonic() - start
    hwm = m.rss_kib("VmHWM")
    m.stop()
    print(f"soak: {args.readers} readers, {took:.0f} s, {t.reads} reads ({t.whole} whole files), "
          f"{t.bytes / MIB:.0f} MiB read ({t.bytes / MIB / took:.1f} MiB/s)")
    print(f"soak: blobs {total / MIB:.0f} MiB, --cache-size {args.cache_size}, "
          f"cache peak on disk {cache_peak[0] / MIB:.1f} MiB")
    print(f"soak: errors {len(t.errors)}")
    for e in t.errors[:10]:
        print(f"  {e}")
    ts = sorted(t.times) or [0.0]
    pct = lambda q: ts[min(len(ts) - 1, int(q * len(ts)))] * 1000
    print(f"soak: longest stall {t.longest * 1000:.0f} ms (opens and reads: p50 {pct(0.5):.1f} ms, "
          f"p99 {pct(0.99):.1f} ms, p99.9 {pct(0.999):.0f} ms)")
    print(f"soak: daemon peak RSS {max(peak[0], hwm) / 1024:.1f} MiB (sampled every 200 ms; VmHWM {hwm / 1024:.1f} MiB)")
    return 1 if t.errors else 0


def kill_rounds(reg, source, cache, files, digests, total):
    data_dir = os.path.join(work, "data")
    bad = []
    for r in range(args.kill):
        m = Mount(source, cache, list(args.mount_args))
        left = os.listdir(os.path.join(cache, "v1", "tmp"))
        if left:
            bad.append(f"round {r}: temp files left: {left}")
        t = Tally()
        pick = random.Random(r).sample(range(len(files)), min(16, len(files)))
        threads = [threading.Thread(target=whole_read, daemon=True,
                                    args=(os.path.join(m.dir, files[i][0]),
                                          os.path.join(data_dir, files[i][0]), digests[i], t, True))
                   for i in pick]
        for th in threads:
            th.start()
        time.sleep(random.uniform(0.05, 1.0))
        m.kill9()
        for th in threads:
            th.join()
        wrong = [e for e in t.errors if "wrong" in e or "mismatch" in e]
        bad += [f"round {r}: {e}" for e in wrong]
        print(f"  round {r}: {t.bytes / MIB:.0f} MiB read and checked before kill -9, {len(wrong)} wrong")
    m = Mount(source, cache, list(args.mount_args))
    t = Tally()
    for i, (name, _) in enumerate(files):
        whole_read(os.path.join(m.dir, name), os.path.join(data_dir, name), digests[i], t)
    m.stop()
    bad += t.errors
    served = reg.bytes_served(digests)
    print(f"soak --kill: {args.kill} rounds of kill -9; final read of every file: {t.whole}/{len(files)} right")
    print(f"soak --kill: registry served {served / MIB:.0f} MiB for {total / MIB:.0f} MiB of blobs ({served / total:.2f}x)")
    print(f"soak --kill: errors {len(bad)}")
    for e in bad[:10]:
        print(f"  {e}")
    if served >= 2 * total:
        print("soak --kill: intact chunks were not reused (served >= 2x)")
        return 1
    return 1 if bad else 0


try:
    rc = main()
finally:
    cleanup()
sys.exit(rc)
PY
