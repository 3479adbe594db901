//! `mount.orasfs SOURCE MOUNTPOINT -o OPTIONS`: the mount(8) helper form. It turns the
//! `-o` list into the long options of `orasfs mount`, dropping the options that belong to
//! mount(8) and systemd.

/// Options that mount(8), fstab or systemd use and orasfs has nothing to do with.
fn ignored(opt: &str) -> bool {
    matches!(
        opt,
        "ro" | "_netdev"
            | "nofail"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "defaults"
            | "dev"
            | "nodev"
            | "suid"
            | "nosuid"
            | "exec"
            | "noexec"
            | "atime"
            | "noatime"
            | "relatime"
            | "async"
            | "rw_check"
    ) || opt.starts_with("x-systemd.")
        || opt.starts_with("x-")
        || opt.starts_with("comment=")
}

/// The long options of `orasfs mount`, each with whether it takes a value.
fn mount_options() -> Vec<(String, bool)> {
    use clap::CommandFactory;
    let cli = crate::app::cli::Cli::command();
    let Some(mount) = cli.find_subcommand("mount") else {
        return Vec::new();
    };
    mount
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_string(), a.get_action().takes_values())))
        .collect()
}

/// Translate helper arguments (after argv[0]) into `orasfs mount ...` arguments.
pub fn translate(args: &[String]) -> Result<Vec<String>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(it.next().ok_or("-o needs an option list")?.clone()),
            // mount(8) names the type of a `type.subtype` mount (fuse.orasfs) with -t.
            "-t" => {
                it.next().ok_or("-t needs a type")?;
            }
            // mount(8) may pass these: no mtab, sloppy, fake, verbose.
            "-n" | "-s" | "-f" | "-v" => {}
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') => return Err(format!("unknown helper flag {s}")),
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        return Err("usage: mount.orasfs SOURCE MOUNTPOINT [-o OPTIONS]".into());
    };
    let known = mount_options();
    let mut out = vec!["orasfs".to_string(), "mount".to_string()];
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        if ignored(opt) {
            continue;
        }
        if opt == "rw" {
            return Err("orasfs mounts are read-only; drop 'rw' from the options".into());
        }
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!("bad mount option {opt:?}"));
        }
        let long = name.replace('_', "-");
        match (known.iter().find(|(k, _)| *k == long), value) {
            (None, _) => return Err(format!("unknown mount option {name}")),
            (Some((_, true)), None) => {
                return Err(format!("mount option {name} needs a value: {name}=VALUE"))
            }
            (Some((_, false)), Some(_)) => {
                return Err(format!("mount option {name} takes no value: {name}"))
            }
            _ => {}
        }
        out.push(format!("--{long}"));
        if let Some(v) = value {
            out.push(v.to_string());
        }
    }
    out.push(source.clone());
    out.push(mountpoint.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn fstab_options_become_long_options() {
        let got = translate(&s(&[
            "127.0.0.1:5000/eo/products:v1",
            "/mnt/eo",
            "-o",
            "ro,_netdev,nofail,allow_other,uid=1000,cache_dir=/var/cache/x,cache_size=2GiB,plain_http,verify=strict,metadata_ttl=5m,x-systemd.automount,noauto",
        ]))
        .unwrap();
        assert_eq!(
            got,
            s(&[
                "orasfs",
                "mount",
                "--allow-other",
                "--uid",
                "1000",
                "--cache-dir",
                "/var/cache/x",
                "--cache-size",
                "2GiB",
                "--plain-http",
                "--verify",
                "strict",
                "--metadata-ttl",
                "5m",
                "127.0.0.1:5000/eo/products:v1",
                "/mnt/eo",
            ])
        );
    }

    #[test]
    fn bad_helper_input_is_refused() {
        assert!(translate(&s(&["only-one"])).is_err());
        assert!(translate(&s(&["a", "b", "-o", "rw"])).is_err());
        assert!(translate(&s(&["a", "b", "-o"])).is_err());
        assert!(translate(&s(&["a", "b", "-o", "x;rm=1"])).is_err());
    }

    #[test]
    fn unknown_or_misused_options_are_named() {
        let err = |o: &str| translate(&s(&["a", "b", "-o", o])).unwrap_err();
        assert_eq!(err("ro,bogus_opt"), "unknown mount option bogus_opt");
        assert_eq!(
            err("cache_size"),
            "mount option cache_size needs a value: cache_size=VALUE"
        );
        assert_eq!(
            err("allow_other=1"),
            "mount option allow_other takes no value: allow_other"
        );
        assert!(translate(&s(&["a", "b", "-o", "nonempty,verbose"])).is_ok());
        assert_eq!(
            translate(&s(&["a", "b", "-o", "ro", "-t", "fuse.orasfs"])).unwrap(),
            s(&["orasfs", "mount", "a", "b"])
        );
        assert_eq!(
            translate(&s(&["a", "b", "-x"])).unwrap_err(),
            "unknown helper flag -x"
        );
    }
}
