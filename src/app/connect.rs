//! Registry clients as the command line configures them: transport, credentials (never
//! one host's for another), and the mirrors in front of a registry.

use crate::app::config::RegistryConfig;
use crate::error::SourceError;
use crate::fleet::source::FleetSource;
use crate::source::registry::adapter::RegistrySource;
use crate::source::registry::{credentials, Client, ClientConfig, Credentials};

/// The credentials given on the command line (`--username` with `--password-stdin`),
/// reading the password now.
pub fn login(cfg: &RegistryConfig) -> Result<Option<Credentials>, String> {
    match &cfg.username {
        Some(u) => Ok(Some(Credentials::new(
            u.clone(),
            credentials::password_from_stdin()?,
            "--username and --password-stdin",
        ))),
        None => Ok(None),
    }
}

/// A client for one registry. `plain` is the scheme a SOURCE URL named (`Some(true)` for
/// `http://`, `Some(false)` for `https://`); without one, loopback hosts and
/// `--plain-http` mean plain HTTP.
pub fn client(
    cfg: &RegistryConfig,
    registry: &str,
    explicit: Option<Credentials>,
    plain: Option<bool>,
) -> Result<Client, SourceError> {
    let mut c = ClientConfig::new(registry);
    c.plain_http = plain.unwrap_or(c.plain_http || cfg.plain_http);
    c.insecure = cfg.insecure;
    c.ca_file = cfg.ca_file.clone();
    c.connect_timeout = cfg.connect_timeout;
    c.read_timeout = cfg.read_timeout;
    c.retries = cfg.retries;
    c.credentials = resolve(cfg, registry, explicit)?;
    if cfg.insecure {
        log::warn!("--insecure: TLS certificates of {registry} are not verified");
    }
    Client::new(c)
}

fn resolve(
    cfg: &RegistryConfig,
    host: &str,
    explicit: Option<Credentials>,
) -> Result<Option<Credentials>, SourceError> {
    credentials::resolve(host, explicit, cfg.auth_file.as_deref()).map_err(|detail| {
        SourceError::Protocol {
            what: format!("credentials for {host}"),
            detail,
        }
    })
}

/// The registry behind the mirrors configured for it (see [`crate::fleet`]), checked to
/// answer; refused when the configuration blocks it (or `repo`).
pub fn connect(
    cfg: &RegistryConfig,
    registry: &str,
    repo: Option<&str>,
    explicit: Option<Credentials>,
    plain: Option<bool>,
) -> Result<FleetSource, SourceError> {
    let mut settings = cfg.mirrors.clone();
    settings.home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let refused = |e: crate::fleet::FleetError| SourceError::Unsupported(e.to_string());
    let plan = crate::fleet::Plan::load(&settings, registry).map_err(refused)?;
    plan.check(repo).map_err(refused)?;
    let origin = RegistrySource::new(client(cfg, registry, explicit, plain)?);
    // A mirror gets its own client: its own credentials (never the origin's), the
    // mount's timeouts, and one retry, since the next source is there to serve.
    let make = |m: &crate::fleet::MirrorSpec| {
        let mut c = ClientConfig::new(&m.host);
        c.plain_http = m.plain_http.unwrap_or(c.plain_http);
        c.insecure = m.insecure;
        c.extra_ca = m.ca.clone();
        c.headers = crate::source::registry::Headers(m.headers.clone());
        c.connect_timeout = cfg.connect_timeout;
        c.read_timeout = cfg.read_timeout;
        c.retries = cfg.retries.min(1);
        c.credentials = resolve(cfg, &m.host, None)?;
        Ok(RegistrySource::new(Client::new(c)?))
    };
    let fleet = FleetSource::new(
        origin,
        plan,
        cfg.mirror_cooldown,
        cfg.mirror_fill_wait,
        &make,
    )?;
    fleet.ping(repo)?;
    Ok(fleet)
}
