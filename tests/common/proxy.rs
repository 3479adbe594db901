//! A scriptable fault-injecting HTTP/1.1 proxy that sits between orasfs and a real
//! `docker-registry` on loopback: a registry "behind the fault proxy" is
//! `FaultProxy::start(reg.addr())`, and orasfs mounts `proxy.addr()`.
//!
//! The proxy is plain `std`: one acceptor thread (non-blocking, polling a stop flag) and one
//! thread per client connection. Each request is forwarded on a fresh upstream connection
//! (`Connection: close`), the whole upstream response is read, a scripted [`Fault`] (if one
//! matches) is applied, and the response is re-framed with a `Content-Length` and sent back
//! on the client's keep-alive connection. Everything stops when the [`FaultProxy`] is dropped.

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

use super::wait_for;

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
