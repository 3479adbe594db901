//! A scriptable HTTP/1.1 server on 127.0.0.1 for the registry client's unit tests: each
//! request is answered by the test's closure, which sees the request and how many came
//! before it; every request is recorded. An answer can be cut after some body bytes (the
//! connection is then closed), as a flaky registry does. Keep-alive, `Content-Length`
//! framing only; requests carry no body.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Range: bytes=a-b` asked for, as `a..b+1`.
    pub fn range(&self) -> Option<Range<u64>> {
        let (a, b) = self
            .header("range")?
            .strip_prefix("bytes=")?
            .split_once('-')?;
        Some(a.parse().ok()?..b.parse::<u64>().ok()? + 1)
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many body bytes (the `Content-Length` still says all), then close.
    pub cut_after: Option<usize>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_after: None,
        }
    }

    pub fn ok(body: &[u8]) -> Self {
        Self {
            body: body.to_vec(),
            ..Self::status(200)
        }
    }

    /// What a registry answers for `blob` to `req`: the range asked for (206), else the
    /// whole blob.
    pub fn blob(req: &Request, blob: &[u8]) -> Self {
        match req.range() {
            Some(r) if r.end as usize <= blob.len() && r.start < r.end => Self {
                body: blob[r.start as usize..r.end as usize].to_vec(),
                ..Self::status(206)
            }
            .header(
                "content-range",
                &format!("bytes {}-{}/{}", r.start, r.end - 1, blob.len()),
            ),
            _ => Self::ok(blob),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn cut(mut self, after: usize) -> Self {
        self.cut_after = Some(after);
        self
    }
}

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// The server; it stops when dropped.
pub struct TestServer {
    addr: String,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    /// Start a server whose answers `handler` gives: it gets each request and the number
    /// of requests before it.
    pub fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test server");
        let addr = listener.local_addr().expect("its address").to_string();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (l, s) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (l, h) = (l.clone(), handler.clone());
                std::thread::spawn(move || serve(conn, &l, h.as_ref()));
            }
        });
        Self { addr, log, stop }
    }

    /// `127.0.0.1:PORT`, as a registry name.
    pub fn host(&self) -> &str {
        &self.addr
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Request>>, handler: &Handler) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut req = Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
        };
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                req.headers
                    .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let n = {
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            l.push(req.clone());
            l.len() - 1
        };
        let reply = handler(&req, n);
        let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", reply.body.len()));
        let body: &[u8] = if req.method == "HEAD" {
            &[]
        } else {
            &reply.body[..reply.cut_after.unwrap_or(usize::MAX).min(reply.body.len())]
        };
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body).is_err() {
            return;
        }
        let _ = out.flush();
        if reply.cut_after.is_some() {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}
