//! Support for the reliability and security tests: a scriptable fault-injecting HTTP/1.1
//! proxy that sits between orasfs and a real `docker-registry` on loopback, and a launcher
//! for `orasfs mount --foreground` that controls the working directory, the environment
//! and standard input, and always cleans up.
//!
//! The proxy is plain `std`: one acceptor thread (non-blocking, polling a stop flag) and one
//! thread per client connection. Each request is forwarded on a fresh upstream connection
//! (`Connection: close`), the whole upstream response is read, a scripted [`Fault`] (if one
//! matches) is applied, and the response is re-framed with a `Content-Length` and sent back
//! on the client's keep-alive connection. Everything stops when the [`FaultProxy`] is dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{is_mounted, wait_for};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

/// What to do to one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// XOR one byte of the body (at `at`, clamped to the body) with 0x01.
    FlipByte { at: u64 },
    /// Send the headers and `after` bytes of the body, then close cleanly (FIN).
    Truncate { after: u64 },
    /// Send the headers and `after` bytes of the body, then reset (SO_LINGER 0).
    Reset { after: u64 },
    /// Send the headers and `after` bytes, then send nothing for `stall`, then reset.
    Stall { after: u64, stall: Duration },
    /// Answer with this status without asking upstream (`Retry-After` if given).
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    /// Drop the request's `Range` header, so upstream answers 200 with the whole body.
    IgnoreRange,
    /// Move the start of the `Content-Range` by this many bytes (the body is unchanged).
    ShiftContentRange { by: i64 },
    /// Serve a body `delta` bytes longer (0xAA appended) or shorter (cut), with a
    /// `Content-Length` that matches what is sent.
    BodyLength { delta: i64 },
    /// Advertise a `Content-Length` `delta` bytes off from the body actually sent, then
    /// close the connection after the body (the framing lies).
    LyingLength { delta: i64 },
    /// Answer `307 Temporary Redirect` to `base` + the request's path and query.
    Redirect { base: String },
    /// Rewrite the response's `Link` header to point at `base` + its path.
    RewriteLink { base: String },
    /// Add `Link: <target>; rel="next"` to the response.
    AddLink { target: String },
}

/// A scripted fault: applies to requests whose method and path match, skipping the first
/// `skip` matches, then to at most `times` of them.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<String>,
    pub path_contains: String,
    pub skip: usize,
    pub times: usize,
    pub fault: Fault,
    seen: usize,
    applied: usize,
}

impl Rule {
    /// A rule for GETs whose path contains `needle`; applies once unless told otherwise.
    pub fn get(needle: &str, fault: Fault) -> Rule {
        Rule {
            method: Some("GET".into()),
            path_contains: needle.into(),
            skip: 0,
            times: 1,
            fault,
            seen: 0,
            applied: 0,
        }
    }
    pub fn skip(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }
    pub fn times(mut self, n: usize) -> Rule {
        self.times = n;
        self
    }
    pub fn always(self) -> Rule {
        self.times(usize::MAX)
    }
}

/// One request the proxy saw, and what it did with it.
#[derive(Debug, Clone)]
pub struct Record {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    /// Whether the request carried an `Authorization` header (its value is not kept).
    pub had_authorization: bool,
    pub status: u16,
    /// Body bytes actually written to the client.
    pub sent: u64,
    pub fault: Option<Fault>,
}

struct Shared {
    addr: String,
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Record>>,
    /// `METHOD path` of every request, as it arrives (before it is answered).
    arrivals: Mutex<Vec<String>>,
    stop: AtomicBool,
    down_until: Mutex<Option<Instant>>,
    sent: AtomicU64,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    /// Require this `Authorization` value on every request (answer 401 otherwise).
    require_auth: Mutex<Option<(String, String)>>,
    /// Wait this long before answering each request (a round trip to a distant registry).
    latency: Mutex<Duration>,
    /// Until when new connections time out (see [`FaultProxy::go_dark`]).
    dark_until: Mutex<Option<Instant>>,
    /// Connections that fill the accept queue while dark.
    fillers: Mutex<Vec<TcpStream>>,
}

/// A fault-injecting proxy on `127.0.0.1:PORT` in front of `upstream` (`127.0.0.1:PORT`).
pub struct FaultProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

const IDLE_LIMIT: Duration = Duration::from_secs(120);
const MAX_STALL: Duration = Duration::from_secs(120);

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared {
            addr,
            upstream: upstream.to_string(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            down_until: Mutex::new(None),
            sent: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            require_auth: Mutex::new(None),
            latency: Mutex::new(Duration::ZERO),
            dark_until: Mutex::new(None),
            fillers: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(s, listener))
            .expect("spawn the proxy");
        FaultProxy {
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Add a rule; rules are tried in the order they were added, the first that applies wins.
    pub fn add(&self, rule: Rule) {
        lock(&self.shared.rules).push(rule);
    }

    /// Forget every rule.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// How many times each rule has applied, in the order added.
    pub fn applied(&self) -> Vec<usize> {
        lock(&self.shared.rules).iter().map(|r| r.applied).collect()
    }

    /// Every request seen so far.
    pub fn log(&self) -> Vec<Record> {
        lock(&self.shared.log).clone()
    }

    /// How many requests whose path contains `needle` have arrived (answered or not).
    pub fn arrivals_to(&self, needle: &str) -> usize {
        lock(&self.shared.arrivals)
            .iter()
            .filter(|a| a.contains(needle))
            .count()
    }

    /// Requests whose path contains `needle` (once answered).
    pub fn requests_to(&self, needle: &str) -> Vec<Record> {
        self.log()
            .into_iter()
            .filter(|r| r.path.contains(needle))
            .collect()
    }

    /// Body bytes sent to clients so far.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Refuse connections (the port is closed) and reset live ones for `d`, then come back
    /// on the same port.
    pub fn go_down(&self, d: Duration) {
        *lock(&self.shared.down_until) = Some(Instant::now() + d);
        kill_conns(&self.shared);
    }

    /// Let new connections time out (as a host whose packets are dropped) and reset live
    /// ones, for `d`. The proxy stops accepting and fills its accept queue, after which the
    /// kernel drops incoming SYNs.
    pub fn go_dark(&self, d: Duration) {
        *lock(&self.shared.dark_until) = Some(Instant::now() + d);
        kill_conns(&self.shared);
        std::thread::sleep(Duration::from_millis(50)); // the acceptor sees it
        let addr: std::net::SocketAddr = self.shared.addr.parse().expect("proxy address");
        let mut fillers = lock(&self.shared.fillers);
        for _ in 0..1024 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
    }

    /// Whether the proxy is currently down.
    pub fn is_down(&self) -> bool {
        is_down(&self.shared)
    }

    /// Wait `d` before answering each request, as a registry `d` away would.
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.shared.latency) = d;
    }

    /// Answer `401` with `challenge` to every request whose `Authorization` is not `value`.
    pub fn require_authorization(&self, value: &str, challenge: &str) {
        *lock(&self.shared.require_auth) = Some((value.to_string(), challenge.to_string()));
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        kill_conns(&self.shared);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn is_down(s: &Shared) -> bool {
    lock(&s.down_until).is_some_and(|t| Instant::now() < t)
}

fn kill_conns(s: &Shared) {
    for (_, c) in lock(&s.conns).drain() {
        reset(&c);
    }
}

/// Close with SO_LINGER 0, so the peer sees a reset rather than an orderly end.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized, initialised option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn accept_loop(s: Arc<Shared>, first: TcpListener) {
    let mut listener = Some(first);
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !s.stop.load(Ordering::SeqCst) {
        let dark = *lock(&s.dark_until);
        if let Some(until) = dark {
            if Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            *lock(&s.dark_until) = None;
            lock(&s.fillers).clear();
        }
        if is_down(&s) {
            // Closing the listening socket makes connects fail with ECONNREFUSED.
            listener = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(&s.addr) {
                Ok(l) => {
                    let _ = l.set_nonblocking(true);
                    listener.insert(l)
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match l.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let id = s.next_conn.fetch_add(1, Ordering::Relaxed);
                if let Ok(c) = stream.try_clone() {
                    lock(&s.conns).insert(id, c);
                }
                let s2 = s.clone();
                if let Ok(h) = std::thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || {
                        let _ = serve_client(&s2, stream);
                        lock(&s2.conns).remove(&id);
                    })
                {
                    workers.push(h);
                }
                workers.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    drop(listener);
    kill_conns(&s);
    let deadline = Instant::now() + Duration::from_secs(5);
    for h in workers {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Read one request head (and a `Content-Length` body); `None` at a clean end of stream.
fn read_request(s: &Shared, r: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let idle_since = Instant::now();
    let mut line = String::new();
    // Wait for the request line, polling the stop flag (the socket has a read timeout).
    loop {
        match r.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if s.stop.load(Ordering::SeqCst) || idle_since.elapsed() > IDLE_LIMIT {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or("HTTP/1.1").to_string();
    let headers = read_headers(r)?;
    let len: usize = header(&headers, "content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        target,
        version,
        headers,
        body,
    }))
}

fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of headers",
            ));
        }
        let h = h.trim_end();
        if h.is_empty() {
            return Ok(headers);
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Forward a request upstream on a fresh connection and read the whole response.
fn forward(s: &Shared, req: &Request, drop_range: bool) -> io::Result<Response> {
    let mut up = TcpStream::connect(&s.upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{} {} {}\r\n", req.method, req.target, req.version);
    for (k, v) in &req.headers {
        let skip = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ]
        .iter()
        .any(|h| k.eq_ignore_ascii_case(h))
            || (drop_range && k.eq_ignore_ascii_case("range"));
        if !skip {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    up.write_all(&req.body)?;
    let mut r = BufReader::new(up);
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let mut parts = status_line.trim_end().splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let reason = parts.next().unwrap_or("").to_string();
    let headers = read_headers(&mut r)?;
    let no_body = req.method == "HEAD" || status == 204 || status == 304 || status < 200;
    let mut body = Vec::new();
    if !no_body {
        if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
                if n == 0 {
                    let _ = read_headers(&mut r);
                    break;
                }
                let start = body.len();
                body.resize(start + n, 0);
                r.read_exact(&mut body[start..])?;
                let mut crlf = [0u8; 2];
                r.read_exact(&mut crlf)?;
            }
        } else if let Some(n) =
            header(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok())
        {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

fn find_fault(s: &Shared, req: &Request) -> Option<Fault> {
    let mut rules = lock(&s.rules);
    for rule in rules.iter_mut() {
        let method_ok = rule.method.as_deref().is_none_or(|m| m == req.method);
        if !method_ok || !req.target.contains(&rule.path_contains) {
            continue;
        }
        rule.seen += 1;
        if rule.seen > rule.skip && rule.applied < rule.times {
            rule.applied += 1;
            return Some(rule.fault.clone());
        }
    }
    None
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_client(s: &Shared, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let Some(req) = read_request(s, &mut r)? else {
            return Ok(());
        };
        if is_down(s) || s.stop.load(Ordering::SeqCst) {
            reset(&out);
            return Ok(());
        }
        lock(&s.arrivals).push(format!("{} {}", req.method, req.target));
        let latency = *lock(&s.latency);
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let mut record = Record {
            method: req.method.clone(),
            path: req.target.clone(),
            range: req.header("range").map(str::to_string),
            had_authorization: req.header("authorization").is_some(),
            status: 0,
            sent: 0,
            fault: None,
        };
        let auth = lock(&s.require_auth).clone();
        if let Some((want, challenge)) = auth {
            if req.header("authorization") != Some(want.as_str()) {
                let body =
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                let head = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                out.write_all(head.as_bytes())?;
                out.write_all(body)?;
                record.status = 401;
                lock(&s.log).push(record);
                continue;
            }
        }
        let fault = find_fault(s, &req);
        record.fault = fault.clone();
        match &fault {
            Some(Fault::Status { code, retry_after }) => {
                let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}"#;
                let mut head = format!(
                    "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    reason(*code),
                    body.len()
                );
                if let Some(ra) = retry_after {
                    head.push_str(&format!("Retry-After: {ra}\r\n"));
                }
                head.push_str("\r\n");
                out.write_all(head.as_bytes())?;
                out.write_all(body)?;
                record.status = *code;
                lock(&s.log).push(record);
                continue;
            }
            Some(Fault::Redirect { base }) => {
                let head = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {base}{}\r\nContent-Length: 0\r\n\r\n",
                    req.target
                );
                out.write_all(head.as_bytes())?;
                record.status = 307;
                lock(&s.log).push(record);
                continue;
            }
            _ => {}
        }
        let resp = match forward(s, &req, fault == Some(Fault::IgnoreRange)) {
            Ok(r) => r,
            Err(_) => {
                // Upstream failed: show it as a 502.
                let head = "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
                out.write_all(head.as_bytes())?;
                record.status = 502;
                lock(&s.log).push(record);
                continue;
            }
        };
        record.status = resp.status;
        let keep = send_response(s, &mut out, resp, fault.as_ref(), &mut record);
        lock(&s.log).push(record);
        match keep {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Send a response with a fault applied. `Ok(false)` when the connection was closed.
fn send_response(
    s: &Shared,
    out: &mut TcpStream,
    mut resp: Response,
    fault: Option<&Fault>,
    record: &mut Record,
) -> io::Result<bool> {
    let mut advertised = None;
    match fault {
        Some(Fault::FlipByte { at }) if !resp.body.is_empty() => {
            let i = (*at as usize).min(resp.body.len() - 1);
            resp.body[i] ^= 0x01;
        }
        Some(Fault::BodyLength { delta }) => {
            if *delta >= 0 {
                resp.body.extend(std::iter::repeat_n(0xAA, *delta as usize));
            } else {
                let keep = resp
                    .body
                    .len()
                    .saturating_sub(delta.unsigned_abs() as usize);
                resp.body.truncate(keep);
            }
        }
        Some(Fault::LyingLength { delta }) => {
            advertised = Some((resp.body.len() as i64 + delta).max(0) as u64);
        }
        Some(Fault::ShiftContentRange { by }) => {
            for (k, v) in resp.headers.iter_mut() {
                if k.eq_ignore_ascii_case("content-range") {
                    if let Some((start, rest)) = v
                        .strip_prefix("bytes ")
                        .and_then(|x| x.split_once('-'))
                        .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.to_string())))
                    {
                        *v = format!("bytes {}-{rest}", (start + by).max(0));
                    }
                }
            }
        }
        Some(Fault::RewriteLink { base }) => {
            for (k, v) in resp.headers.iter_mut() {
                if k.eq_ignore_ascii_case("link") {
                    if let Some(rest) = v.strip_prefix('<') {
                        let path = rest
                            .find("/v2/")
                            .map(|i| &rest[i..])
                            .unwrap_or(rest)
                            .to_string();
                        *v = format!("<{base}{path}");
                    }
                }
            }
        }
        _ => {}
    }
    if let Some(Fault::AddLink { target }) = fault {
        resp.headers
            .push(("Link".into(), format!("<{target}>; rel=\"next\"")));
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for (k, v) in &resp.headers {
        let skip = [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
        ]
        .iter()
        .any(|h| k.eq_ignore_ascii_case(h));
        if !skip {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    let len = advertised.unwrap_or(resp.body.len() as u64);
    head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    out.write_all(head.as_bytes())?;
    let body = &resp.body;
    let limit = match fault {
        Some(Fault::Truncate { after })
        | Some(Fault::Reset { after })
        | Some(Fault::Stall { after, .. }) => (*after as usize).min(body.len()),
        Some(Fault::LyingLength { .. }) => body.len().min(len as usize),
        _ => body.len(),
    };
    for piece in body[..limit].chunks(64 * 1024) {
        if let Err(e) = out.write_all(piece) {
            reset(out);
            return Err(e);
        }
        record.sent += piece.len() as u64;
        s.sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if s.stop.load(Ordering::SeqCst) || is_down(s) {
            reset(out);
            return Ok(false);
        }
    }
    let _ = out.flush();
    match fault {
        Some(Fault::Truncate { .. }) => {
            let _ = out.shutdown(Shutdown::Both);
            Ok(false)
        }
        Some(Fault::Reset { .. }) => {
            reset(out);
            Ok(false)
        }
        Some(Fault::Stall { stall, .. }) => {
            let until = Instant::now() + (*stall).min(MAX_STALL);
            while Instant::now() < until && !s.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            reset(out);
            Ok(false)
        }
        Some(Fault::LyingLength { .. }) => {
            let _ = out.shutdown(Shutdown::Both);
            Ok(false)
        }
        _ => Ok(true),
    }
}

// ---------------------------------------------------------------------------------------
// orasfs launcher
// ---------------------------------------------------------------------------------------

/// How to run `orasfs mount --foreground`.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub source: String,
    pub args: Vec<String>,
    pub cache: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    /// A program (and its arguments) that runs orasfs, such as `prlimit --nofile=…`.
    pub wrapper: Vec<String>,
}

impl Launch {
    pub fn new(source: &str) -> Launch {
        Launch {
            source: source.into(),
            ..Default::default()
        }
    }
    pub fn args(mut self, a: &[&str]) -> Launch {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn cache(mut self, p: &Path) -> Launch {
        self.cache = Some(p.to_path_buf());
        self
    }
    pub fn cwd(mut self, p: &Path) -> Launch {
        self.cwd = Some(p.to_path_buf());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Launch {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Run orasfs under `prog` (which must exec it, keeping the process id).
    pub fn under(mut self, prog: &[&str]) -> Launch {
        self.wrapper = prog.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn stdin(mut self, bytes: &[u8]) -> Launch {
        self.stdin = Some(bytes.to_vec());
        self
    }

    fn command(&self, cache: &Path, mountpoint: &Path, stderr: &Path) -> io::Result<Child> {
        let bin = env!("CARGO_BIN_EXE_orasfs");
        let mut c = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.env_remove("RUST_LOG")
            .arg("mount")
            .arg("--foreground")
            .arg("--cache-dir")
            .arg(cache)
            .args(&self.args)
            // An empty source mounts the multi-registry root.
            .args((!self.source.is_empty()).then_some(&self.source))
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(File::create(stderr)?)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let mut child = c.spawn()?;
        if let (Some(bytes), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            pipe.write_all(bytes)?;
        }
        Ok(child)
    }

    /// Mount and wait until the mount is live (10 s at most).
    pub fn mount(self) -> Result<Daemon, String> {
        let dir = tempfile::Builder::new()
            .prefix("orasfs-faults-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let base = dir.path().canonicalize().map_err(|e| e.to_string())?;
        let mountpoint = base.join("mnt");
        fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let cache = match &self.cache {
            Some(c) => c.clone(),
            None => base.join("cache"),
        };
        let stderr = base.join("stderr.log");
        let child = self
            .command(&cache, &mountpoint, &stderr)
            .map_err(|e| format!("cannot run orasfs: {e}"))?;
        let mut d = Daemon {
            child: Some(child),
            mountpoint,
            cache,
            stderr,
            _dir: dir,
        };
        let up = wait_for(Duration::from_secs(10), || {
            if is_mounted(&d.mountpoint) {
                return Some(Ok(()));
            }
            match d.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(status)),
                _ => None,
            }
        });
        match up {
            Some(Ok(())) => Ok(d),
            Some(Err(status)) => {
                d.child = None;
                Err(format!(
                    "orasfs exited with {status} before mounting: {}",
                    d.stderr()
                ))
            }
            None => Err(format!("not mounted within 10 s; stderr: {}", d.stderr())),
        }
    }

    /// Run expecting a failure before mounting (60 s at most); returns (status, stderr).
    pub fn fail(self) -> (ExitStatus, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().canonicalize().expect("canonical tempdir");
        let mountpoint = base.join("mnt");
        fs::create_dir(&mountpoint).expect("mountpoint");
        let cache = self.cache.clone().unwrap_or_else(|| base.join("cache"));
        let stderr = base.join("stderr.log");
        let mut child = self
            .command(&cache, &mountpoint, &stderr)
            .expect("run orasfs");
        let mut mounted = false;
        let status = wait_for(Duration::from_secs(60), || {
            mounted |= is_mounted(&mountpoint);
            child.try_wait().ok().flatten()
        });
        let text = fs::read_to_string(&stderr).unwrap_or_default();
        if status.is_none() || mounted || is_mounted(&mountpoint) {
            force_unmount(&mountpoint);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "orasfs mount {} should have failed before mounting; stderr: {text}",
                self.source
            );
        }
        (status.expect("exited"), text)
    }
}

/// A running `orasfs mount --foreground`: unmounted and reaped on drop, even after SIGKILL.
pub struct Daemon {
    child: Option<Child>,
    mountpoint: PathBuf,
    cache: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// Unmount whatever is at `p`, lazily if it is busy or dead.
pub fn force_unmount(p: &Path) {
    for args in [&["-u"][..], &["-uz"][..]] {
        if !is_mounted(p) {
            return;
        }
        let _ = Command::new("fusermount3")
            .args(args)
            .arg(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if is_mounted(p) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Daemon {
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
    pub fn join(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// SIGKILL the daemon and wait for it; the mount is left stale until drop.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Peak resident set size of the daemon in KiB (VmHWM), if it is running.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
    /// Unmount and return the exit status.
    pub fn unmount(mut self) -> Option<ExitStatus> {
        force_unmount(&self.mountpoint);
        let mut c = self.child.take()?;
        Some(reap(&mut c))
    }
}

fn reap(c: &mut Child) -> ExitStatus {
    if let Some(s) = wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten()) {
        return s;
    }
    let _ = c.kill();
    c.wait().expect("wait for orasfs")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        force_unmount(&self.mountpoint);
        if let Some(mut c) = self.child.take() {
            reap(&mut c);
        }
        force_unmount(&self.mountpoint);
    }
}

// ---------------------------------------------------------------------------------------
// Reading helpers
// ---------------------------------------------------------------------------------------

/// The arguments of a test run "with passthrough": `-v`, so the daemon logs what the
/// kernel granted (see [`assert_passthrough_granted`]).
pub const WITH_PASSTHROUGH: &[&str] = &["-v"];

/// A test "with passthrough" must not quietly test the plain path: the daemon (started
/// with [`WITH_PASSTHROUGH`]) logged that the kernel granted FUSE passthrough, and never
/// that an open was refused it (no CAP_SYS_ADMIN). Nothing is asserted for a run with
/// `--no-passthrough`.
pub fn assert_passthrough_granted(m: &Daemon, extra: &[&str]) {
    if extra.contains(&"--no-passthrough") {
        return;
    }
    let log = m.stderr();
    assert!(
        log.contains("FUSE passthrough on"),
        "FUSE passthrough was not granted by the kernel:\n{log}"
    );
    assert!(
        !log.contains("FUSE passthrough unavailable"),
        "FUSE passthrough was refused on open:\n{log}"
    );
}

/// `sha256:<hex>` of a file read through the mount, or the error of the read.
pub fn read_all(p: &Path) -> io::Result<Vec<u8>> {
    fs::read(p)
}

/// Read a file sequentially in 1 MiB reads without trusting its size (a descriptor may
/// claim a terabyte); fails with `FileTooLarge` past `cap` bytes.
pub fn read_stream(p: &Path, cap: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(p)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > cap {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "over the cap"));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The errno of an I/O error, if any.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Assert that a whole-file read either failed with EIO or returned exactly `want`.
#[track_caller]
pub fn assert_eio_or_exact(what: &str, r: io::Result<Vec<u8>>, want: &[u8]) -> bool {
    match r {
        Ok(got) => {
            assert_eq!(got.len(), want.len(), "{what}: length of a successful read");
            if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
                panic!("{what}: a successful read returned a wrong byte at {i}");
            }
            true
        }
        Err(e) => {
            assert_eq!(
                errno(&e),
                libc::EIO,
                "{what}: failed, but not with EIO: {e}"
            );
            false
        }
    }
}

/// pread `len` bytes at `off`; the result or the error.
pub fn pread(p: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = File::open(p)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// Every file below `root` (recursively), as paths relative to it.
pub fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                _ => out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf()),
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// Pushing documents a registry may refuse, and OCI layouts with anything in them
// ---------------------------------------------------------------------------------------

/// PUT a manifest; `Ok(digest)` on 201, else `Err((status, body))`.
pub fn try_push_manifest(
    registry: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<String, (u16, String)> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let r = client
        .put(format!("http://{registry}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(bytes.to_vec())
        .send()
        .map_err(|e| (0, e.to_string()))?;
    let status = r.status().as_u16();
    let body = r.text().unwrap_or_default();
    if status == 201 {
        Ok(crate::common::sha256(bytes))
    } else {
        Err((status, body.chars().take(300).collect()))
    }
}

/// An OCI image layout under construction; anything may be written into it.
pub struct LayoutDir {
    pub dir: tempfile::TempDir,
}

impl LayoutDir {
    /// `oci-layout` 1.0.0, an empty `blobs/sha256/`, no `index.json` yet.
    pub fn new() -> LayoutDir {
        let dir = tempfile::Builder::new()
            .prefix("orasfs-hostile-layout-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir_all(dir.path().join("blobs/sha256")).expect("blobs/");
        fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        LayoutDir { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The layout as a SOURCE, optionally with `:tag`.
    pub fn source(&self, tag: Option<&str>) -> String {
        match tag {
            Some(t) => format!("{}:{t}", self.path().display()),
            None => self.path().display().to_string(),
        }
    }
    /// Store a blob under its digest; returns its descriptor (digest and size).
    pub fn blob(&self, bytes: &[u8]) -> serde_json::Value {
        let d = crate::common::sha256(bytes);
        self.put(crate::common::hex_of(&d), bytes);
        serde_json::json!({ "digest": d, "size": bytes.len() })
    }
    /// Write `bytes` at `blobs/sha256/<name>`, whatever they hash to.
    pub fn put(&self, name: &str, bytes: &[u8]) {
        fs::write(self.path().join("blobs/sha256").join(name), bytes).expect("write blob");
    }
    /// Store an image manifest of `layers` (descriptors, each given a media type if it has
    /// none) with the empty config; returns the manifest's bytes.
    pub fn image(&self, layers: Vec<serde_json::Value>) -> Vec<u8> {
        let mut config = self.blob(b"{}");
        config["mediaType"] = serde_json::json!(crate::common::OCI_EMPTY);
        let layers: Vec<serde_json::Value> = layers
            .into_iter()
            .map(|mut l| {
                if l.get("mediaType").is_none() {
                    l["mediaType"] = serde_json::json!("application/octet-stream");
                }
                l
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::common::OCI_MANIFEST,
            "config": config,
            "layers": layers,
        }))
        .expect("manifest JSON")
    }
    /// A descriptor for manifest bytes stored as a blob, tagged `tag` if given.
    pub fn manifest_desc(
        &self,
        bytes: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> serde_json::Value {
        let mut d = self.blob(bytes);
        d["mediaType"] = serde_json::json!(media_type);
        if let Some(t) = tag {
            d["annotations"] = serde_json::json!({ crate::common::REF_NAME: t });
        }
        d
    }
    /// Write `index.json` listing these manifest descriptors.
    pub fn index(&self, manifests: Vec<serde_json::Value>) {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::common::OCI_INDEX,
            "manifests": manifests,
        });
        fs::write(
            self.path().join("index.json"),
            serde_json::to_vec(&index).expect("index JSON"),
        )
        .expect("index.json");
    }
}

/// Assert a failure before mounting was exactly one line, `orasfs: ...`, mentioning each
/// of `needles` (case-insensitively).
#[track_caller]
pub fn assert_one_line(what: &str, (status, stderr): &(ExitStatus, String), needles: &[&str]) {
    assert!(
        !status.success(),
        "{what}: exit status {status:?}; stderr {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line on stderr, got {stderr:?}"
    );
    assert!(lines[0].starts_with("orasfs: "), "{what}: {:?}", lines[0]);
    for n in needles {
        assert!(
            lines[0].to_lowercase().contains(&n.to_lowercase()),
            "{what}: {:?} should mention {n:?}",
            lines[0]
        );
    }
    eprintln!("{what}: {}", lines[0]);
}
