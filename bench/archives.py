#!/usr/bin/env python3
"""Archives: orasfs's own directory view of a tar / tar+gzip layer against ratarmount
opening the raw archive file through an orasfs mount.

Makes a directory of N files (default 2,000 files, 200 MiB, random content; the file in
the middle is 1 MiB), packs it as tar+gzip and as tar, pushes each as an ORAS directory
layer (title `data`, annotated io.deis.oras.content.unpack) to its own docker-registry,
and measures, cold then warm:

- list: `find DIR -type f` over every file (for ratarmount this includes mounting it,
  which is when it reads the archive);
- read: reading the 1 MiB member in the middle;
- the registry's bytes for each (from its log).

Then `orasfs index` publishes each layer's archive index, and the orasfs view is measured
once more on an empty cache ("indexed"): bytes are every blob byte the registry served
(the archive index's head and windows, and the member's compressed span).

Cold: a fresh orasfs cache, no ratarmount index, page caches dropped. Warm: new mounts
over the same orasfs cache and the ratarmount index the cold run left, page caches
dropped. Needs: docker-registry, ratarmount (pip), a release build of orasfs.

    python3 bench/archives.py [--files 2000] [--mib 200] [--bin PATH]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (Registry, Mount, drop_caches)


def push_dir_layer(reg, repo, tag, path, media_type):
    d = reg.push_blob(repo, path)
    d["mediaType"] = media_type
    d["annotations"] = {"org.opencontainers.image.title": "data",
                        "io.deis.oras.content.unpack": "true"}
    empty = os.path.join(os.path.dirname(path), "empty.json")
    with open(empty, "w") as f:
        f.write("{}")
    cfg = reg.push_blob(repo, empty)
    cfg["mediaType"] = "application/vnd.oci.empty.v1+json"
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg, "layers": [d]}).encode()
    import urllib.request
    req = urllib.request.Request(f"http://{reg.addr}/v2/{repo}/manifests/{tag}", data=m, method="PUT",
                                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    urllib.request.urlopen(req)
    return d["digest"]


def make_data(root, files, mib):
    data = os.path.join(root, "data")
    os.makedirs(data)
    size = mib * (1 << 20) // files
    middle = files // 2
    for i in range(files):
        sub = os.path.join(data, f"d{i % 20:02d}")
        os.makedirs(sub, exist_ok=True)
        n = (1 << 20) if i == middle else size
        with open(os.path.join(sub, f"f{i:05d}.bin"), "wb") as f:
            f.write(os.urandom(n))
    return f"data/d{middle % 20:02d}/f{middle:05d}.bin"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def find_files(d):
    out = subprocess.run(["find", d, "-type", "f"], check=True, capture_output=True, text=True).stdout
    return len(out.splitlines())


def read_file(p):
    with open(p, "rb") as f:
        return len(f.read())


def ratarmount_mount(archive, mnt, index_dir):
    subprocess.run(["ratarmount", "--index-folders", index_dir, archive, mnt], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ratarmount_unmount(mnt):
    subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL)


def case(reg, work, source, digest, member, files, kind, temperature, cache, rindex):
    """One row pair (orasfs view, ratarmount) at one temperature."""
    rows = []
    # orasfs's own directory view.
    drop_caches()
    before = reg.bytes_served(digest)
    m = run.Mount(source, cache, work)
    try:
        t_list, n = timed(lambda: find_files(os.path.join(m.mnt, "data")))
        assert n == files, f"orasfs listed {n} files"
        listed = reg.bytes_served(digest)
        t_read, got = timed(lambda: read_file(os.path.join(m.mnt, member)))
        assert got == 1 << 20
        read = reg.bytes_served(digest)
    finally:
        m.close()
    rows.append(("orasfs view", kind, temperature, t_list, listed - before, t_read, read - listed))
    # ratarmount over the raw archive file in an orasfs mount (--unpack none).
    drop_caches()
    before = reg.bytes_served(digest)
    m = run.Mount(source, cache + "-raw", work, extra=["--unpack", "none"])
    rmnt = tempfile.mkdtemp(prefix="ratar-", dir=work)
    try:
        # The raw layer is the file `data` (no unpacking): give ratarmount a name it likes.
        raw = os.path.join(m.mnt, "data")
        link = os.path.join(work, f"data.{kind}")
        if not os.path.lexists(link):
            os.symlink(raw, link)
        else:
            os.remove(link)
            os.symlink(raw, link)

        def listing():
            ratarmount_mount(link, rmnt, rindex)
            return find_files(rmnt)
        t_list, n = timed(listing)
        assert n == files, f"ratarmount listed {n} files"
        listed = reg.bytes_served(digest)
        t_read, got = timed(lambda: read_file(os.path.join(rmnt, member[len("data/"):])
                                              if not os.path.exists(os.path.join(rmnt, member))
                                              else os.path.join(rmnt, member)))
        assert got == 1 << 20
        read = reg.bytes_served(digest)
    finally:
        ratarmount_unmount(rmnt)
        m.close()
    rows.append(("ratarmount", kind, temperature, t_list, listed - before, t_read, read - listed))
    return rows


def indexed(reg, work, source, member, files, kind):
    """The orasfs view on an empty cache, with an archive index from `orasfs index`."""
    drop_caches()
    cache = tempfile.mkdtemp(prefix="cache-indexed-", dir=work)
    before = reg.bytes_served("")  # every blob GET
    m = run.Mount(source, cache, work)
    try:
        t_list, n = timed(lambda: find_files(os.path.join(m.mnt, "data")))
        assert n == files, f"orasfs listed {n} files"
        listed = reg.bytes_served("")
        t_read, got = timed(lambda: read_file(os.path.join(m.mnt, member)))
        assert got == 1 << 20
        read = reg.bytes_served("")
    finally:
        m.close()
    return ("orasfs view", kind, "indexed, empty", t_list, listed - before, t_read, read - listed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--bin", default=run.BIN)
    args = ap.parse_args()
    run.BIN = args.bin
    if not shutil.which("ratarmount"):
        raise SystemExit("ratarmount missing: pip install ratarmount")
    work = tempfile.mkdtemp(prefix="orasfs-archives-")
    reg = run.Registry(work)
    rows = []
    try:
        member = make_data(work, args.files, args.mib)
        tgz = os.path.join(work, "data.tar.gz")
        tar = os.path.join(work, "data.tar")
        subprocess.run(["tar", "czf", tgz, "-C", work, "data"], check=True)
        subprocess.run(["tar", "cf", tar, "-C", work, "data"], check=True)
        shutil.rmtree(os.path.join(work, "data"))
        for kind, path, mt in [("tar.gz", tgz, "application/vnd.oci.image.layer.v1.tar+gzip"),
                               ("tar", tar, "application/vnd.oci.image.layer.v1.tar")]:
            repo = "bench/" + kind.replace(".", "")
            digest = push_dir_layer(reg, repo, "v1", path, mt)
            source = f"{reg.addr}/{repo}:v1"
            cache = os.path.join(work, f"cache-{repo.replace('/', '-')}")
            rindex = os.path.join(work, f"ratar-index-{kind}")
            os.makedirs(rindex)
            for temperature in ["cold", "warm"]:
                rows += case(reg, work, source, digest, member, args.files, kind, temperature,
                             cache, rindex)
            subprocess.run([run.BIN, "index", source], check=True, stdout=subprocess.DEVNULL)
            rows.append(indexed(reg, work, source, member, args.files, kind))
    finally:
        for m in list(run.OPEN_MOUNTS):
            m.close()
        reg.stop()
    mib = lambda b: f"{b / (1 << 20):.1f} MiB"
    print("| tool | archive | cache | list every file | registry bytes (list) | read 1 MiB member | registry bytes (read) |")
    print("|---|---|---|---|---|---|---|")
    for tool, kind, temp, tl, bl, tr, br in rows:
        print(f"| {tool} | {kind} | {temp} | {tl:.2f} s | {mib(bl)} | {tr * 1000:.0f} ms | {mib(br)} |")
    shutil.rmtree(work, ignore_errors=True)


def drop_caches():
    run.drop_caches()


if __name__ == "__main__":
    main()
