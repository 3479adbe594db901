#!/usr/bin/env python3
"""orasfs benchmarks: each case against a baseline measured in the same run.

Starts its own docker-registry on a free loopback port, makes its own data, runs each case
a few times, and prints medians and ratios. Registry bytes are read from the registry's own
log (http.response.written), never from orasfs's counters.

Usage: bench/run.py [--runs N] [--size-mib N] [--out docs/benchmarks.md] [--plot docs/benchmarks.png]
"""
import argparse, hashlib, json, os, random, re, shutil, signal, socket, statistics, subprocess
import sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "orasfs")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, work):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = os.path.join(work, "registry.log")
        cfg = os.path.join(work, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"""version: 0.1
log:
  level: info
  formatter: json
storage:
  filesystem:
    rootdirectory: {work}/registry-data
http:
  addr: {self.addr}
""")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("registry did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def bytes_served(self, digest):
        """Sum of http.response.written for blob GETs of `digest` so far."""
        total = 0
        time.sleep(0.3)
        with open(self.log) as f:
            for line in f:
                if digest not in line or '"http.response.written"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("http.request.method") == "GET" and "/blobs/" in rec.get("http.request.uri", ""):
                    total += int(rec.get("http.response.written", 0))
        return total

    def push_blob(self, repo, path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        digest = "sha256:" + h.hexdigest()
        size = os.path.getsize(path)
        req = urllib.request.Request(f"http://{self.addr}/v2/{repo}/blobs/uploads/", method="POST")
        loc = urllib.request.urlopen(req).headers["Location"]
        if loc.startswith("/"):
            loc = f"http://{self.addr}{loc}"
        sep = "&" if "?" in loc else "?"
        with open(path, "rb") as f:
            req = urllib.request.Request(f"{loc}{sep}digest={digest}", data=f, method="PUT",
                                         headers={"Content-Length": str(size),
                                                  "Content-Type": "application/octet-stream"})
            urllib.request.urlopen(req)
        return {"mediaType": "application/octet-stream", "digest": digest, "size": size}

    def push_artifact(self, repo, tag, files):
        layers = []
        for title, path, mt in files:
            d = self.push_blob(repo, path)
            d["mediaType"] = mt
            d["annotations"] = {"org.opencontainers.image.title": title}
            layers.append(d)
        empty = os.path.join(os.path.dirname(files[0][1]), "empty.json")
        with open(empty, "w") as f:
            f.write("{}")
        cfg = self.push_blob(repo, empty)
        cfg["mediaType"] = "application/vnd.oci.empty.v1+json"
        m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": cfg, "layers": layers}).encode()
        req = urllib.request.Request(f"http://{self.addr}/v2/{repo}/manifests/{tag}", data=m, method="PUT",
                                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        urllib.request.urlopen(req)
        return {l["annotations"]["org.opencontainers.image.title"]: l for l in layers}


OPEN_MOUNTS = []


class Mount:
    def __init__(self, source, cache, work, extra=()):
        OPEN_MOUNTS.append(self)
        self.mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
        self.proc = subprocess.Popen([BIN, "mount", "--foreground", "--cache-dir", cache, *extra, source, self.mnt],
                                     stderr=open(os.path.join(work, "orasfs.log"), "a"))
        for _ in range(200):
            if self.mounted():
                return
            if self.proc.poll() is not None:
                raise SystemExit("orasfs failed to mount; see orasfs.log")
            time.sleep(0.05)
        raise SystemExit("orasfs did not mount")

    def mounted(self):
        with open("/proc/mounts") as f:
            return any(l.split()[1] == self.mnt for l in f)

    def peak_rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for l in f:
                if l.startswith("VmHWM:"):
                    return int(l.split()[1])
        return 0

    def close(self):
        subprocess.run(["fusermount3", "-u", self.mnt], stderr=subprocess.DEVNULL)
        if self.mounted():
            subprocess.run(["fusermount3", "-uz", self.mnt], stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="orasfs-bench-")
    reg = Registry(work)
    rows = []
    try:
        print(f"# work dir {work}, registry {reg.addr}, {args.runs} runs per case", flush=True)
        big = os.path.join(work, "big.bin")
        with open(big, "wb") as f:
            rnd = random.Random(1)
            for _ in range(args.size_mib):
                f.write(rnd.randbytes(1 << 20))
        mid = os.path.join(work, "mid.bin")
        with open(mid, "wb") as f:
            rnd = random.Random(2)
            for _ in range(256):
                f.write(rnd.randbytes(1 << 20))
        # A ~100 MB COG: a noisy 3-band raster (noise keeps DEFLATE from shrinking it away).
        cog = os.path.join(work, "imagery.tif")
        raw = os.path.join(work, "raw.bin")
        # Raw noise described by an ENVI header, so GDAL reads it without Python bindings.
        with open(raw, "wb") as f:
            rnd = random.Random(3)
            for _ in range(3 * 6000):
                f.write(rnd.randbytes(6000))
        with open(raw[:-4] + ".hdr", "w") as f:
            f.write("ENVI\nsamples = 6000\nlines = 6000\nbands = 3\nheader offset = 0\n"
                    "data type = 1\ninterleave = bsq\nbyte order = 0\n")
        subprocess.run(["gdal_translate", "-q", "-of", "COG", "-co", "COMPRESS=DEFLATE", "-a_srs", "EPSG:32633",
                        "-a_ullr", "500000", "5860000", "560000", "5800000", raw, cog], check=True)
        layers = reg.push_artifact("bench/data", "v1", [("big.bin", big, "application/octet-stream"),
                                                        ("mid.bin", mid, "application/octet-stream"),
                                                        ("imagery.tif", cog, "image/tiff")])
        url = lambda name: f"http://{reg.addr}/v2/bench/data/blobs/{layers[name]['digest']}"
        source = f"{reg.addr}/bench/data:v1"

        # 1. cold sequential: cat through the mount / curl of the same blob.
        mount_t, curl_t = [], []
        for _ in range(args.runs):
            drop_caches()
            curl_t.append(timed(["curl", "-sf", "-o", "/dev/null", url("big.bin")]))
            cache = tempfile.mkdtemp(prefix="cache-", dir=work)
            m = Mount(source, cache, work)
            drop_caches()
            mount_t.append(timed(["sh", "-c", f"cat {m.mnt}/big.bin > /dev/null"]))
            m.close()
            if _ < args.runs - 1:
                shutil.rmtree(cache)
        size = os.path.getsize(big)
        r = median(curl_t) / median(mount_t)
        rows.append(("cold sequential", f"{size/median(mount_t)/2**20:.0f} MiB/s vs curl {size/median(curl_t)/2**20:.0f} MiB/s",
                     f"{r:.2f}", "≥ 0.8", r >= 0.8))

        # 2. warm sequential: remount over the same cache / cat of a local copy.
        warm_t, local_t = [], []
        for _ in range(args.runs):
            m = Mount(source, cache, work)
            drop_caches()
            warm_t.append(timed(["sh", "-c", f"cat {m.mnt}/big.bin > /dev/null"]))
            m.close()
            drop_caches()
            local_t.append(timed(["sh", "-c", f"cat {big} > /dev/null"]))
        r = median(local_t) / median(warm_t)
        rows.append(("warm sequential", f"{size/median(warm_t)/2**20:.0f} MiB/s vs local {size/median(local_t)/2**20:.0f} MiB/s",
                     f"{r:.2f}", "≥ 0.8", r >= 0.8))

        # 3/4. GDAL overview and window, from the mount vs /vsicurl/ on the blob URL.
        dig = layers["imagery.tif"]["digest"]
        for name, gargs in (("GDAL overview", ["-outsize", "256", "256"]),
                            ("GDAL window", ["-srcwin", "2048", "2048", "512", "512"])):
            out = os.path.join(work, "out.tif")
            before = reg.bytes_served(dig)
            env = dict(os.environ, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
            vs = median([timed(["gdal_translate", "-q", *gargs, f"/vsicurl/{url('imagery.tif')}", out], env=env)
                         for _ in range(args.runs)])
            vs_bytes = (reg.bytes_served(dig) - before) / args.runs
            before = reg.bytes_served(dig)
            cold = []
            for _ in range(args.runs):
                cache = tempfile.mkdtemp(prefix="cache-", dir=work)
                m = Mount(source, cache, work)
                cold.append(timed(["gdal_translate", "-q", *gargs, f"{m.mnt}/imagery.tif", out]))
                m.close()
            cold_bytes = (reg.bytes_served(dig) - before) / args.runs
            m = Mount(source, cache, work)
            warm = median([timed(["gdal_translate", "-q", *gargs, f"{m.mnt}/imagery.tif", out]) for _ in range(args.runs)])
            m.close()
            br = cold_bytes / max(vs_bytes, 1)
            tr = median(cold) / vs
            ok = br <= 2 and tr <= 1.5 and warm < vs
            rows.append((name, f"bytes {cold_bytes/2**20:.1f} MiB vs /vsicurl/ {vs_bytes/2**20:.1f} MiB; "
                               f"time cold {median(cold):.2f}s, warm {warm:.2f}s vs /vsicurl/ {vs:.2f}s",
                         f"bytes {br:.2f}, time {tr:.2f}", "bytes ≤ 2, time ≤ 1.5, warm faster", ok))

        # 5. random 4 KiB preads, cold: p50 latency vs curl -r of the same ranges.
        rnd = random.Random(5)
        offs = [rnd.randrange(0, size - 4096) // 4096 * 4096 for _ in range(40)]
        cache = tempfile.mkdtemp(prefix="cache-", dir=work)
        m = Mount(source, cache, work)
        lat = []
        fd = os.open(os.path.join(m.mnt, "big.bin"), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for o in offs:
            t = time.perf_counter()
            os.pread(fd, 4096, o)
            lat.append(time.perf_counter() - t)
        os.close(fd)
        m.close()
        curl_lat = [timed(["curl", "-sf", "-o", "/dev/null", "-r", f"{o}-{o+4095}", url("big.bin")]) for o in offs]
        r = median(lat) / median(curl_lat)
        rows.append(("random 4 KiB preads", f"p50 {median(lat)*1e3:.1f} ms vs curl -r {median(curl_lat)*1e3:.1f} ms",
                     f"{r:.2f}", "≤ 1.5", r <= 1.5))

        # 6. 8 concurrent cold readers of one 256 MiB blob.
        dig = layers["mid.bin"]["digest"]
        before = reg.bytes_served(dig)
        cache = tempfile.mkdtemp(prefix="cache-", dir=work)
        m = Mount(source, cache, work)
        want = hashlib.sha256(open(mid, "rb").read()).hexdigest()
        results = []
        def reader():
            h = hashlib.sha256()
            with open(os.path.join(m.mnt, "mid.bin"), "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            results.append(h.hexdigest() == want)
        ts = [threading.Thread(target=reader) for _ in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        m.close()
        served = (reg.bytes_served(dig) - before) / os.path.getsize(mid)
        ok = served <= 1.1 and all(results) and len(results) == 8
        rows.append(("8 concurrent readers", f"registry served {served:.2f}× the blob; digests right: {sum(results)}/8",
                     f"{served:.2f}", "≤ 1.1, all digests right", ok))

        # 7. memory: peak RSS while streaming the big blob cold.
        cache = tempfile.mkdtemp(prefix="cache-", dir=work)
        m = Mount(source, cache, work)
        subprocess.run(["sh", "-c", f"cat {m.mnt}/big.bin > /dev/null"], check=True)
        rss = m.peak_rss_kib() / 1024
        m.close()
        rows.append(("memory", f"peak RSS {rss:.0f} MiB streaming {size >> 20} MiB", f"{rss:.0f} MiB", "< 100 MiB", rss < 100))
    finally:
        for m in OPEN_MOUNTS:
            if m.mounted() or m.proc.poll() is None:
                m.close()
        reg.stop()

    lines = ["| case | measured | ratio | target | met |", "|---|---|---|---|---|"]
    for name, detail, ratio, target, ok in rows:
        lines.append(f"| {name} | {detail} | {ratio} | {target} | {'yes' if ok else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed; no plot", file=sys.stderr)
            return
        names = [r[0] for r in rows if r[0] in ("cold sequential", "warm sequential")]
        vals = []
        for r in rows:
            if r[0] in names:
                vals.append([float(x) for x in re.findall(r"(\d+) MiB/s", r[1])])
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [v[0] for v in vals], 0.4, label="orasfs mount")
        ax.bar([x + 0.2 for x in xs], [v[1] for v in vals], 0.4, label="baseline (curl / local cat)")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("MiB/s")
        ax.set_title("Sequential read throughput by pattern")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
