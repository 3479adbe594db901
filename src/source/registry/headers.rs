//! Parsers for the HTTP headers a registry conversation depends on: `WWW-Authenticate`
//! challenges, `Link` pagination, `Content-Range` and `Retry-After`. They take untrusted
//! text and never panic.

use std::collections::HashMap;
use std::time::Duration;

/// An authentication challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse `WWW-Authenticate`. Returns `None` for schemes we do not speak or a Bearer
/// challenge without a realm.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = match value.find(char::is_whitespace) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    };
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic {
            realm: params.get("realm").cloned(),
        }),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// Parse `key=value, key="quoted, value"` lists; keys are lowercased.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        if chars.next() != Some('=') {
            if chars.peek().is_none() {
                break;
            }
            continue;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), val.trim().to_string());
    }
    out
}

/// The target of the `rel="next"` entry of a `Link` header, if any.
pub fn parse_link_next(value: &str) -> Option<String> {
    for part in value.split(',') {
        let part = part.trim();
        let Some(rest) = part.strip_prefix('<') else {
            continue;
        };
        let Some(end) = rest.find('>') else { continue };
        let target = &rest[..end];
        let is_next = rest[end + 1..].split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if is_next {
            return Some(target.to_string());
        }
    }
    None
}

/// A parsed `Content-Range: bytes START-END/TOTAL` (END inclusive; TOTAL may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end_inclusive: u64,
    pub total: Option<u64>,
}

pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end_inclusive: u64 = end.trim().parse().ok()?;
    if end_inclusive < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end_inclusive >= t {
                return None;
            }
            Some(t)
        }
    };
    Some(ContentRange {
        start,
        end_inclusive,
        total,
    })
}

/// `Retry-After` as seconds or an HTTP date, capped at five minutes.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = httpdate::parse_http_date(v).ok()?;
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic {
                realm: Some("Registry Realm".into())
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        // Unquoted values end at the next comma.
        assert_eq!(
            parse_challenge("Bearer realm=https://a/t,service=reg"),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("reg".into()),
                scope: None,
            })
        );
        // A parameter with no name is skipped, not the end of the list.
        assert_eq!(
            parse_challenge(r#"Bearer =junk, realm="https://a/t""#),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        for junk in [
            "",
            "Bearer",
            "Bearer realm",
            "Bearer realm=\"",
            "Bearer ,,,=,=\"\\",
        ] {
            let _ = parse_challenge(junk);
        }
    }

    #[test]
    fn links() {
        assert_eq!(
            parse_link_next(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(parse_link_next(r#"<x>; rel="prev""#), None);
        assert_eq!(parse_link_next("garbage"), None);
        // An empty target (the `>` right after `<`) and a later entry.
        assert_eq!(parse_link_next(r#"<>; rel="next""#).as_deref(), Some(""));
        assert_eq!(
            parse_link_next(r#"<a>; rel="prev", <b>; rel=next"#).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some(ContentRange {
                start: 0,
                end_inclusive: 9,
                total: Some(100)
            })
        );
        assert_eq!(parse_content_range("bytes 5-9/*").unwrap().total, None);
        // One byte (START == END), and the last byte of the blob.
        assert_eq!(
            parse_content_range("bytes 5-5/10"),
            Some(ContentRange {
                start: 5,
                end_inclusive: 5,
                total: Some(10)
            })
        );
        assert!(parse_content_range("bytes 0-9/10").is_some());
        for bad in [
            "bytes 9-5/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes -1/2",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(300)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
