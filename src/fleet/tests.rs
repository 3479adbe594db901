//! Parsing of registries.conf and hosts.toml with the examples of their manuals, and the
//! routing a parsed configuration gives.

use std::path::Path;

use super::*;

/// The example of containers-registries.conf(5), "EXAMPLE" section (v2 format).
const REGISTRIES_CONF_EXAMPLE: &str = r#"
unqualified-search-registries = ["example.com"]

[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true
"#;

/// containerd docs/hosts.md, "Setup a Local Mirror for Docker" and the capabilities
/// example.
const HOSTS_TOML_EXAMPLE: &str = r#"
server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                   # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"                  # Or absolute path /etc/containerd/certs.d/docker.io/docker-mirror.crt
"#;

fn entries(text: &str) -> Vec<config::Entry> {
    config::parse(Path::new("/etc/containers/registries.conf"), text).unwrap()
}

#[test]
fn registries_conf_man_page_example_routes_to_its_mirrors_in_order() {
    let e = entries(REGISTRIES_CONF_EXAMPLE);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].prefix, "example.com/foo");
    assert_eq!(e[0].location, "internal-registry-for-example.com/bar");
    let plan = Plan::from_parts("example.com", vec![], e, vec![]);
    let route = plan.route("foo/myimage").unwrap();
    let got: Vec<(&str, &str, bool)> = route
        .iter()
        .map(|(m, r)| (m.host.as_str(), r.as_str(), m.insecure))
        .collect();
    assert_eq!(
        got,
        vec![
            ("example-mirror-0.local", "mirror-for-foo/myimage", false),
            ("example-mirror-1.local", "mirrors/foo/myimage", true),
        ]
    );
    // pull-from-mirror defaults to "all": tags and digests.
    assert!(route.iter().all(|(m, _)| m.usage.tags && m.usage.digests));
    // Outside the prefix: no mirror. `foobar` is not under `foo`.
    assert!(plan.route("other/x").unwrap().is_empty());
    assert!(plan.route("foobar/x").unwrap().is_empty());
}

#[test]
fn pull_from_mirror_decides_what_a_mirror_resolves() {
    let e = entries(
        r#"
[[registry]]
location = "r.example"
[[registry.mirror]]
location = "tags.example"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "digests.example"
pull-from-mirror = "digest-only"
[[registry]]
location = "old.example"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.example"
"#,
    );
    let use_of = |i: usize, j: usize| e[i].mirrors[j].usage;
    assert_eq!(
        use_of(0, 0),
        Use {
            tags: true,
            digests: false
        }
    );
    assert_eq!(
        use_of(0, 1),
        Use {
            tags: false,
            digests: true
        }
    );
    assert_eq!(
        use_of(1, 0),
        Use {
            tags: false,
            digests: true
        }
    );
}

#[test]
fn the_longest_prefix_wins_and_wildcards_match_subdomains() {
    let e = entries(
        r#"
[[registry]]
prefix = "r.example"
[[registry.mirror]]
location = "wide.example"
[[registry]]
prefix = "r.example/team"
[[registry.mirror]]
location = "narrow.example/cache"
[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "corp-mirror.example"
"#,
    );
    let plan = Plan::from_parts("r.example", vec![], e.clone(), vec![]);
    let r = plan.route("team/app").unwrap();
    assert_eq!(r[0].0.host, "narrow.example");
    assert_eq!(r[0].1, "cache/app");
    assert_eq!(plan.route("other").unwrap()[0].0.host, "wide.example");
    let corp = Plan::from_parts("reg.corp.example", vec![], e, vec![]);
    assert_eq!(corp.route("a/b").unwrap()[0].1, "a/b");
}

#[test]
fn a_blocked_registry_is_refused_with_a_clear_message() {
    let e = entries("[[registry]]\nprefix = \"evil.example\"\nblocked = true\n");
    let plan = Plan::from_parts("evil.example", vec![], e, vec![]);
    let msg = plan.check(None).unwrap_err().to_string();
    assert!(
        msg.contains("evil.example") && msg.contains("blocked = true"),
        "{msg}"
    );
    assert!(msg.contains("/etc/containers/registries.conf"), "{msg}");
    assert!(plan.route("any/repo").is_err());
    // Blocking a namespace blocks only that namespace.
    let e = entries("[[registry]]\nprefix = \"r.example/bad\"\nblocked = true\n");
    let plan = Plan::from_parts("r.example", vec![], e, vec![]);
    assert!(plan.check(None).is_ok());
    assert!(plan.check(Some("bad/x")).is_err());
    assert!(plan.route("good/x").is_ok());
}

#[test]
fn a_malformed_file_names_the_file_and_the_line() {
    let p = Path::new("/tmp/registries.conf");
    let text = "[[registry]]\nprefix = \"a.example\"\n\n[[registry.mirror]]\nlocation = \n";
    let msg = config::parse(p, text).unwrap_err().to_string();
    assert!(msg.starts_with("/tmp/registries.conf:5: "), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    // A wrong type is reported where it is.
    let text = "[[registry]]\nprefix = \"a.example\"\nblocked = \"yes\"\n";
    let msg = config::parse(p, text).unwrap_err().to_string();
    assert!(msg.starts_with("/tmp/registries.conf:3: "), "{msg}");
    let text = "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n";
    let msg = config::parse(p, text).unwrap_err().to_string();
    assert!(msg.starts_with("/tmp/registries.conf:5: "), "{msg}");
    let h = Path::new("/etc/containerd/certs.d/r/hosts.toml");
    let msg = hosts::parse(h, "[host.\"https://m\"\ncapabilities = [\"pull\"]\n", "r")
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("/etc/containerd/certs.d/r/hosts.toml:1: "),
        "{msg}"
    );
}

#[test]
fn a_bad_entry_names_the_line_of_its_table() {
    let p = Path::new("/etc/containers/registries.conf");
    let text = "[[registry]]\nprefix = \"a\"\n\n[[registry]]\ninsecure = true\n";
    let msg = config::parse(p, text).unwrap_err().to_string();
    assert!(
        msg.starts_with("/etc/containers/registries.conf:4: "),
        "{msg}"
    );
    assert!(msg.contains("neither prefix nor location"), "{msg}");
    let text = "[[registry]]\nprefix = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\n\
                [[registry.mirror]]\nlocation = \"https://m2\"\n";
    let msg = config::parse(p, text).unwrap_err().to_string();
    assert!(
        msg.starts_with("/etc/containers/registries.conf:5: "),
        "{msg}"
    );
    let text =
        "[[registry]]\nprefix = \"a\"\n\n\n[[registry]]\nprefix = \"b\"\nlocation = \"http://b\"\n";
    let msg = config::parse(p, text).unwrap_err().to_string();
    assert!(
        msg.starts_with("/etc/containers/registries.conf:5: "),
        "{msg}"
    );
    let h = Path::new("/etc/containerd/certs.d/r/hosts.toml");
    let text = "server = \"https://r\"\n\n[host.\"https://a\"]\n\n[host.\"https://b/x\"]\n";
    let msg = hosts::parse(h, text, "r").unwrap_err().to_string();
    assert!(
        msg.starts_with("/etc/containerd/certs.d/r/hosts.toml:5: [host.\"https://b/x\"]"),
        "{msg}"
    );
    let text = "[host.\"https://a\"]\ncapabilities = \"pull\"\n";
    let msg = hosts::parse(h, text, "r").unwrap_err().to_string();
    assert!(
        msg.starts_with("/etc/containerd/certs.d/r/hosts.toml:1: "),
        "{msg}"
    );
}

#[test]
fn keys_orasfs_does_not_read_are_named_in_a_warning() {
    let p = Path::new("/etc/containers/registries.conf");
    let text = "unqualified-search-registries = [\"r.example\"]\nshort-name-mode = \"enforcing\"\n\
                [aliases]\nx = \"r.example/x\"\n\
                [[registry]]\nprefix = \"a\"\nlocaton = \"b\"\n\
                [[registry]]\nprefix = \"c\"\n[[registry.mirror]]\nlocation = \"m\"\n\
                pull-from-mirorr = \"digest-only\"\n";
    let (entries, warnings) = config::parse_with_warnings(p, text).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        warnings,
        [
            "/etc/containers/registries.conf: `registry[0].locaton` is not a registries.conf key; ignored",
            "/etc/containers/registries.conf: `registry[1].mirror[0].pull-from-mirorr` is not a registries.conf key; ignored",
        ]
    );
    let (_, warnings) = config::parse_with_warnings(p, REGISTRIES_CONF_EXAMPLE).unwrap();
    assert_eq!(warnings, Vec::<String>::new());

    let h = Path::new("/etc/containerd/certs.d/r/hosts.toml");
    let text = "server = \"https://r\"\ndial_timeout = \"3s\"\n\
                [host.\"https://m\"]\ncapabilites = [\"pull\"]\nclient = \"/c.pem\"\nskip_verify = true\n";
    let (hosts, warnings) = hosts::parse_with_warnings(h, text, "r").unwrap();
    assert_eq!(hosts.mirrors.len(), 1);
    assert_eq!(
        warnings,
        [
            "/etc/containerd/certs.d/r/hosts.toml: `dial_timeout` is not supported by orasfs; ignored",
            "/etc/containerd/certs.d/r/hosts.toml: [host.\"https://m\"] `capabilites` is not a hosts.toml key; ignored",
            "/etc/containerd/certs.d/r/hosts.toml: [host.\"https://m\"] `client` is not supported by orasfs; ignored",
        ]
    );
    let (_, warnings) = hosts::parse_with_warnings(h, HOSTS_TOML_EXAMPLE, "docker.io").unwrap();
    assert_eq!(warnings, Vec::<String>::new());
}

#[test]
fn hosts_toml_example_keeps_file_order_and_capabilities() {
    let p = Path::new("/etc/containerd/certs.d/docker.io/hosts.toml");
    let h = hosts::parse(p, HOSTS_TOML_EXAMPLE, "docker.io").unwrap();
    assert!(
        h.server.is_none(),
        "registry-1.docker.io is docker.io itself"
    );
    let m = h.mirrors;
    let got: Vec<(&str, Use)> = m.iter().map(|m| (m.host.as_str(), m.usage)).collect();
    assert_eq!(
        got,
        vec![
            (
                "public-mirror.example.com",
                Use {
                    tags: false,
                    digests: true
                }
            ),
            (
                "docker-mirror.internal",
                Use {
                    tags: true,
                    digests: true
                }
            ),
        ]
    );
    // A relative path is relative to the file.
    assert_eq!(
        m[1].ca,
        vec![Path::new(
            "/etc/containerd/certs.d/docker.io/docker-mirror.crt"
        )]
    );
    assert_eq!(m[0].plain_http, Some(false));
    let plan = Plan::from_parts("docker.io", vec![], vec![], m);
    assert_eq!(plan.route("library/alpine").unwrap()[1].1, "library/alpine");
}

#[test]
fn hosts_toml_skip_verify_http_and_push_only_hosts() {
    let p = Path::new("hosts.toml");
    let text = r#"
[host."http://10.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
[host."https://push-only.example"]
  capabilities = ["push"]
[host."https://defaults.example"]
"#;
    let m = hosts::parse(p, text, "r.example").unwrap().mirrors;
    assert_eq!(m.len(), 2, "a push-only host serves no reads");
    assert_eq!(m[0].host, "10.0.0.1:5000");
    assert_eq!(m[0].plain_http, Some(true));
    assert!(m[0].insecure);
    assert_eq!(
        m[1].usage,
        Use {
            tags: true,
            digests: true
        }
    );
}

#[test]
fn mirror_flags_come_first_and_resolve_no_tags() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        "[[registry]]\nlocation = \"r.example\"\n[[registry.mirror]]\nlocation = \"conf.example\"\n",
    )
    .unwrap();
    let certs = dir.path().join("certs.d");
    std::fs::create_dir_all(certs.join("r.example")).unwrap();
    std::fs::write(
        certs.join("r.example/hosts.toml"),
        "[host.\"https://hosts.example\"]\ncapabilities = [\"pull\"]\n",
    )
    .unwrap();
    let settings = Settings {
        registries_conf: Some(conf),
        hosts_dir: Some(certs),
        mirrors: vec!["cli.example:5000/proxy".into()],
        home: None,
    };
    let plan = Plan::load(&settings, "r.example").unwrap();
    let r = plan.route("team/app").unwrap();
    let got: Vec<(&str, &str)> = r
        .iter()
        .map(|(m, r)| (m.host.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cli.example:5000", "proxy/team/app"),
            ("conf.example", "team/app"),
            ("hosts.example", "team/app"),
        ]
    );
    assert!(!r[0].0.usage.tags && r[0].0.usage.digests);
    // Another registry gets only the command-line mirror.
    let other = Plan::load(&settings, "elsewhere.example").unwrap();
    assert_eq!(other.route("x").unwrap().len(), 1);
    // A named file that does not exist is an error, not silence.
    let missing = Settings {
        registries_conf: Some(dir.path().join("nope.conf")),
        ..Settings::default()
    };
    let msg = Plan::load(&missing, "r.example").unwrap_err().to_string();
    assert!(msg.contains("nope.conf: no such file"), "{msg}");
    // /dev/null is an empty configuration (no entries, and no defaults read).
    let empty = Settings {
        registries_conf: Some("/dev/null".into()),
        home: Some(dir.path().to_path_buf()),
        ..Settings::default()
    };
    assert!(Plan::load(&empty, "r.example").is_ok());
    let a_dir = Settings {
        registries_conf: Some(dir.path().to_path_buf()),
        ..Settings::default()
    };
    let msg = Plan::load(&a_dir, "r.example").unwrap_err().to_string();
    assert!(
        msg.ends_with("is a directory, not a file (--registries-conf)"),
        "{msg}"
    );
    // A named hosts directory must be there, as a named file must.
    let no_hosts = Settings {
        hosts_dir: Some(dir.path().join("no-certs.d")),
        ..Settings::default()
    };
    let msg = Plan::load(&no_hosts, "r.example").unwrap_err().to_string();
    assert!(
        msg.contains("no-certs.d: no such directory (--hosts-dir)"),
        "{msg}"
    );
    let bad = Settings {
        mirrors: vec!["https://m.example".into()],
        ..Settings::default()
    };
    assert!(Plan::load(&bad, "r.example").is_err());
}

/// containerd docs/hosts.md, the `[host]` example of "hosts.toml Content Description"
/// (the hosts with client certificates only are left out: orasfs has no client
/// certificates).
const HOSTS_TOML_HOST_EXAMPLE: &str = r#"
[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]

[host."https://non-compliant-mirror.registry/v2/upstream"]
  capabilities = ["pull"]
  override_path = true
"#;

#[test]
fn hosts_toml_headers_several_cas_and_override_path() {
    let p = Path::new("/etc/containerd/certs.d/r.example/hosts.toml");
    let m = hosts::parse(p, HOSTS_TOML_HOST_EXAMPLE, "r.example")
        .unwrap()
        .mirrors;
    let hosts: Vec<&str> = m.iter().map(|m| m.host.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "mirror.registry",
            "mirror.registry",
            "test-1.registry",
            "non-compliant-mirror.registry"
        ]
    );
    assert_eq!(
        m[0].headers,
        vec![
            ("x-custom-2".to_string(), "value1".to_string()),
            ("x-custom-2".to_string(), "value2".to_string())
        ]
    );
    assert_eq!(m[0].ca, vec![Path::new("/etc/certs/mirror.pem")]);
    assert_eq!(m[1].plain_http, Some(true));
    assert!(m[1].headers.is_empty(), "headers belong to their own host");
    assert_eq!(
        m[2].ca,
        vec![
            Path::new("/etc/certs/test-1-ca.pem"),
            Path::new("/etc/certs/special.pem")
        ]
    );
    // override_path with /v2/upstream: the API root is /v2/upstream, which is
    // repository prefix `upstream` under /v2.
    assert_eq!(m[3].prefix, "upstream");
    let plan = Plan::from_parts("r.example", vec![], vec![], m);
    let r = plan.route("team/app").unwrap();
    assert_eq!(r[3].1, "upstream/team/app");
}

#[test]
fn host_paths_orasfs_cannot_follow_are_refused_with_the_way_out() {
    let p = Path::new("hosts.toml");
    // containerd's example `https://mirror-bak.registry/us` means the API root /us/v2.
    let text = "[host.\"https://mirror-bak.registry/us\"]\n  capabilities = [\"pull\"]\n";
    let msg = hosts::parse(p, text, "r").unwrap_err().to_string();
    assert!(
        msg.contains("/us") && msg.contains("override_path"),
        "{msg}"
    );
    let text = "[host.\"https://m/api/v1\"]\noverride_path = true\n";
    let msg = hosts::parse(p, text, "r").unwrap_err().to_string();
    assert!(msg.contains("/api/v1"), "{msg}");
    // A plain /v2 path is the standard root.
    let text = "[host.\"https://m/v2\"]\n";
    assert_eq!(hosts::parse(p, text, "r").unwrap().mirrors[0].prefix, "");
}

/// containerd docs/hosts.md, "Setup Default Mirror for All Registries": a `server` that
/// is not the registry replaces it ("only the mirror is utilised and the upstream not
/// consulted"), with the file's top-level `ca` and `header`.
#[test]
fn a_hosts_toml_server_of_another_host_replaces_the_origin() {
    let p = Path::new("/etc/containerd/certs.d/_default/hosts.toml");
    let text =
        "server = \"https://registry.example.com\"\nca = \"ca.pem\"\n[header]\n  x-team = \"eo\"\n";
    let h = hosts::parse(p, text, "docker.io").unwrap();
    let s = h.server.clone().unwrap();
    assert_eq!(s.host, "registry.example.com");
    assert_eq!(
        s.ca,
        vec![Path::new("/etc/containerd/certs.d/_default/ca.pem")]
    );
    assert_eq!(s.headers, vec![("x-team".into(), "eo".into())]);
    let plan = Plan::from_parts("docker.io", vec![], vec![], h.mirrors).with_server(h.server);
    let (to, repo) = plan.relocate(Some("library/alpine")).unwrap();
    assert_eq!(
        (to.host.as_str(), repo.as_str()),
        ("registry.example.com", "library/alpine")
    );
    // The registry's own server moves nothing.
    let same = hosts::parse(p, "server = \"https://docker.io\"\n", "docker.io").unwrap();
    assert!(same.server.is_none());
}

#[test]
fn a_hosts_toml_for_a_host_with_a_port_is_found_as_containerd_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(hosts::file_for(d, "r.example:5000"), None);
    std::fs::create_dir_all(d.join("_default")).unwrap();
    std::fs::write(d.join("_default/hosts.toml"), "").unwrap();
    assert_eq!(
        hosts::file_for(d, "r.example:5000"),
        Some(d.join("_default/hosts.toml"))
    );
    std::fs::create_dir_all(d.join("r.example:5000")).unwrap();
    std::fs::write(d.join("r.example:5000/hosts.toml"), "").unwrap();
    assert_eq!(
        hosts::file_for(d, "r.example:5000"),
        Some(d.join("r.example:5000/hosts.toml"))
    );
    std::fs::create_dir_all(d.join("r.example_5000_")).unwrap();
    std::fs::write(d.join("r.example_5000_/hosts.toml"), "").unwrap();
    assert_eq!(
        hosts::file_for(d, "r.example:5000"),
        Some(d.join("r.example_5000_/hosts.toml"))
    );
}

/// containers-registries.conf(5), the example: `location` moves the prefix's
/// repositories ("example.com/foo/myimage:latest" is pulled from
/// "internal-registry-for-example.com/bar/myimage:latest" after the mirrors).
#[test]
fn a_registries_conf_location_moves_the_origin() {
    let e = entries(REGISTRIES_CONF_EXAMPLE);
    let plan = Plan::from_parts("example.com", vec![], e, vec![]);
    let (to, repo) = plan.relocate(Some("foo/myimage")).unwrap();
    assert_eq!(
        (to.host.as_str(), repo.as_str()),
        ("internal-registry-for-example.com", "bar/myimage")
    );
    assert!(to.usage.tags && to.usage.digests);
    assert!(
        plan.relocate(Some("other/x")).is_none(),
        "outside the prefix"
    );
    assert!(plan.relocate(None).is_none(), "the prefix is a namespace");
    // A whole registry moved, and `location` equal to the prefix moves nothing.
    let e = entries(
        "[[registry]]\nprefix = \"quay.io\"\nlocation = \"quay-cache.corp:5000/quay\"\ninsecure = true\n[[registry]]\nlocation = \"r.example\"\n",
    );
    let plan = Plan::from_parts("quay.io", vec![], e.clone(), vec![]);
    let (to, repo) = plan.relocate(None).unwrap();
    assert_eq!(
        (to.host.as_str(), repo.as_str(), to.insecure),
        ("quay-cache.corp:5000", "quay", true)
    );
    assert_eq!(plan.relocate(Some("a/b")).unwrap().1, "quay/a/b");
    let plan = Plan::from_parts("r.example", vec![], e, vec![]);
    assert!(plan.relocate(Some("a/b")).is_none());
}
