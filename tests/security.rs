//! Security properties of a real mount: read-only at every layer (mount options, every
//! mutating system call), and pagination links that point at another origin are not
//! followed (so neither requests nor credentials go there). Auth secrets in trace logs
//! and Authorization on cross-host blob redirects are covered in tests/registry.rs.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::*;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The result of a libc call: `Ok(())` or the errno.
fn sys(r: i32) -> Result<(), i32> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

#[track_caller]
fn assert_erofs(what: &str, r: Result<(), i32>) {
    assert_eq!(r, Err(EROFS), "{what} must fail with EROFS");
}

/// The mount is read-only at every layer: `/proc/mounts` shows `ro` and the FUSE options
/// include `default_permissions`, `nosuid` and `nodev`; every mutating call — setxattr,
/// removexattr, truncate (by path and by descriptor), chmod, chown, utimes, link, symlink,
/// mknod, mkfifo, mkdir, rename, unlink, rmdir, open for write or with O_CREAT|O_TRUNC —
/// fails with EROFS, on files, directories and orasfs's own files; and nothing changed.
#[test]
fn the_mount_is_read_only_at_every_layer() {
    let reg = Registry::start();
    let big = random_bytes(5 * 1024 * 1024, 1);
    reg.push_artifact(
        "sec/ro",
        "v1",
        &[
            ("a.txt", b"alpha"),
            ("sub/b.txt", b"beta"),
            ("big.bin", &big),
        ],
    );
    let m = Launch::new(&format!("{}/sec/ro", reg.addr()))
        .mount()
        .expect("mount");
    let mnt = m.path().to_path_buf();
    let line = fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
        .expect("the mount in /proc/mounts")
        .to_string();
    let opts: Vec<&str> = line.split(' ').nth(3).unwrap().split(',').collect();
    eprintln!("{line}");
    for want in ["ro", "nosuid", "nodev", "default_permissions"] {
        assert!(opts.contains(&want), "{want} missing from {opts:?}");
    }
    assert!(!opts.contains(&"rw"), "{opts:?}");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[0], format!("{}/sec/ro", reg.addr()), "{line}");
    assert_eq!(fields[2], "fuse.orasfs", "{line}");

    let dir = mnt.join("v1");
    let a = dir.join("a.txt");
    let sub = dir.join("sub");
    let targets = [
        a.clone(),
        sub.clone(),
        dir.join("big.bin"),
        dir.join(".manifest.json"),
        dir.clone(),
        mnt.clone(),
    ];
    for p in &targets {
        let cp = c(p);
        let what = |op: &str| format!("{op} {}", p.display());
        let name = c(Path::new("user.x"));
        // SAFETY: valid NUL-terminated strings and buffers of the sizes given.
        unsafe {
            assert_erofs(
                &what("setxattr"),
                sys(libc::setxattr(
                    cp.as_ptr(),
                    name.as_ptr(),
                    b"1".as_ptr().cast(),
                    1,
                    0,
                )),
            );
            let oci = c(Path::new("user.oci.digest"));
            assert_erofs(
                &what("setxattr over an existing attribute"),
                sys(libc::setxattr(
                    cp.as_ptr(),
                    oci.as_ptr(),
                    b"1".as_ptr().cast(),
                    1,
                    0,
                )),
            );
            assert_erofs(
                &what("removexattr"),
                sys(libc::removexattr(cp.as_ptr(), oci.as_ptr())),
            );
            assert_erofs(&what("chmod"), sys(libc::chmod(cp.as_ptr(), 0o777)));
            assert_erofs(&what("chown"), sys(libc::chown(cp.as_ptr(), 0, 0)));
            assert_erofs(
                &what("utimes"),
                sys(libc::utimes(cp.as_ptr(), std::ptr::null())),
            );
            assert_erofs(
                &what("utimensat"),
                sys(libc::utimensat(
                    libc::AT_FDCWD,
                    cp.as_ptr(),
                    std::ptr::null(),
                    0,
                )),
            );
        }
    }
    let file = c(&a);
    // SAFETY: as above; descriptors are closed where they were opened.
    unsafe {
        assert_erofs("truncate", sys(libc::truncate(file.as_ptr(), 0)));
        assert_erofs(
            "truncate to grow",
            sys(libc::truncate(file.as_ptr(), 1 << 20)),
        );
        let fd = libc::open(file.as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0);
        let r = sys(libc::ftruncate(fd, 0));
        assert!(
            matches!(r, Err(e) if e == EROFS || e == libc::EINVAL || e == libc::EBADF),
            "ftruncate on a read-only fd: {r:?}"
        );
        assert_erofs("fchmod", sys(libc::fchmod(fd, 0o777)));
        libc::close(fd);
        for flags in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_APPEND,
        ] {
            let fd = libc::open(file.as_ptr(), flags, 0o644);
            let r = if fd >= 0 {
                libc::close(fd);
                Ok(())
            } else {
                sys(-1)
            };
            assert_erofs(&format!("open(a.txt, {flags:#x})"), r);
        }
        for (name, op) in [
            ("link", 0),
            ("symlink", 1),
            ("mknod", 2),
            ("mkfifo", 3),
            ("mkdir", 4),
            ("creat", 5),
            ("rename", 6),
            ("unlink", 7),
            ("rmdir", 8),
        ] {
            let new = c(&dir.join(format!("new-{name}")));
            let r = match op {
                0 => sys(libc::link(file.as_ptr(), new.as_ptr())),
                1 => sys(libc::symlink(file.as_ptr(), new.as_ptr())),
                2 => sys(libc::mknod(new.as_ptr(), libc::S_IFREG | 0o644, 0)),
                3 => sys(libc::mkfifo(new.as_ptr(), 0o644)),
                4 => sys(libc::mkdir(new.as_ptr(), 0o755)),
                5 => {
                    let fd = libc::creat(new.as_ptr(), 0o644);
                    if fd >= 0 {
                        libc::close(fd);
                        Ok(())
                    } else {
                        sys(-1)
                    }
                }
                6 => sys(libc::rename(file.as_ptr(), new.as_ptr())),
                7 => sys(libc::unlink(file.as_ptr())),
                _ => sys(libc::rmdir(c(&sub).as_ptr())),
            };
            assert_erofs(name, r);
        }
    }
    // Nothing changed.
    assert_eq!(
        common::names(&dir),
        [".config.json", ".manifest.json", "a.txt", "big.bin", "sub"]
    );
    assert_eq!(fs::read(&a).unwrap(), b"alpha");
    assert_eq!(fs::read(sub.join("b.txt")).unwrap(), b"beta");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&a).unwrap().permissions().mode() & 0o7777,
        0o444
    );
}

/// A tag list or catalog page whose `Link: rel="next"` points at another origin is
/// refused: the other origin never sees a request, the failure is one clear line (for a
/// repository mount) or an error on the listing (for a registry mount), and with Basic
/// auth in play no credential is sent anywhere but the registry.
#[test]
fn pagination_links_to_another_origin_are_not_followed() {
    let reg = Registry::start();
    reg.push_artifact("sec/link", "v1", &[("a.txt", b"alpha")]);
    let proxy = FaultProxy::start(reg.addr());
    let elsewhere = FaultProxy::start(reg.addr());
    let other = format!("http://{}", elsewhere.addr());
    // The registry sends no Link for a short list; the proxy adds one, then the rewrite
    // points it at the other origin.
    proxy.add(
        Rule::get(
            "/tags/list",
            Fault::AddLink {
                target: format!("{other}/v2/sec/link/tags/list?last=v1&n=1000"),
            },
        )
        .always(),
    );
    proxy.add(
        Rule::get(
            "/_catalog",
            Fault::AddLink {
                target: format!("{other}/v2/_catalog?last=sec/link&n=1000"),
            },
        )
        .always(),
    );
    let basic = "Basic dXNlcjpodW50ZXIy"; // user:hunter2
    proxy.require_authorization(basic, r#"Basic realm="orasfs-test""#);
    elsewhere.require_authorization(basic, r#"Basic realm="orasfs-test""#);

    let f = Launch::new(&format!("{}/sec/link", proxy.addr()))
        .args(&["--username", "user", "--password-stdin"])
        .stdin(b"hunter2\n")
        .env("RUST_LOG", "trace")
        .fail();
    assert!(!f.status.success());
    let last = f.stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("orasfs: ") && last.contains("another origin"),
        "{}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("hunter2") && !f.stderr.contains("dXNlcjpodW50ZXIy"),
        "a secret in the log"
    );

    let mut m = Launch::new(proxy.addr())
        .args(&["--username", "user", "--password-stdin"])
        .stdin(b"hunter2\n")
        .mount()
        .expect("a registry mount");
    let listing = fs::read_dir(m.path())
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .map(|v| v.len());
    assert!(
        listing.as_ref().map_or(true, |n| *n == 0),
        "the root listing followed the link: {listing:?}"
    );
    if let Err(e) = &listing {
        assert_eq!(errno(e), libc::EIO, "{e}");
    }
    assert!(m.alive());
    assert!(m.stderr().contains("another origin"), "{}", m.stderr());
    drop(m);
    assert!(
        elsewhere.log().is_empty(),
        "the other origin was asked: {:?}",
        elsewhere.log()
    );
    assert!(
        proxy.log().iter().any(|r| r.had_authorization),
        "the registry got the credentials"
    );
}
