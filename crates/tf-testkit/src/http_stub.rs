//! A small HTTP/1.1 server on loopback for tests of context sources and tasks that call out.
//! Its answer depends on the path: `/hang…` never answers (a task stays in flight),
//! `/fail-once…` answers 500 to its first request and 200 afterwards (per path), anything
//! else 200 with JSON describing the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running stub: its base URL (`http://127.0.0.1:PORT`) and the request lines it received.
pub struct HttpStub {
    pub base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpStub {
    pub async fn start() -> HttpStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failed_once = Arc::new(Mutex::new(HashMap::<String, bool>::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let Some(request) = read_request(&mut stream).await else { continue };
                let line = request.lines().next().unwrap_or("").to_string();
                let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                log.lock().unwrap().push(line.clone());
                if path.starts_with("/hang") {
                    held.push(stream);
                    continue;
                }
                let first_failure = path.starts_with("/fail-once") && failed_once.lock().unwrap().insert(path.clone(), true).is_none();
                let (status, body) = if first_failure {
                    ("500 Internal Server Error", serde_json::json!({"error": "failing once"}))
                } else {
                    ("200 OK", serde_json::json!({"request": line, "ok": true}))
                };
                let body = body.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tokio::spawn(async move {
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        HttpStub { base, seen }
    }

    /// The request lines received so far (`GET /path HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A stub that holds every request for `hold` before it answers 200, counting requests in
/// flight per group (the path's second segment: `/g/<group>/...`): what a limit on concurrent
/// calls must keep at or under its limit, observed where the calls land.
pub struct HoldingStub {
    pub base: String,
    state: Arc<Mutex<Holding>>,
}

#[derive(Default)]
struct Holding {
    now: HashMap<String, usize>,
    peak: HashMap<String, usize>,
    arrivals: HashMap<String, Vec<std::time::Instant>>,
}

impl HoldingStub {
    pub async fn start(hold: std::time::Duration) -> HoldingStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Holding::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else { return };
                    let line = request.lines().next().unwrap_or("").to_string();
                    let group = line.split(' ').nth(1).unwrap_or("/").split('/').nth(2).unwrap_or("").to_string();
                    {
                        let mut s = state.lock().unwrap();
                        let now = s.now.entry(group.clone()).or_default();
                        *now += 1;
                        let now = *now;
                        let peak = s.peak.entry(group.clone()).or_default();
                        *peak = (*peak).max(now);
                        s.arrivals.entry(group.clone()).or_default().push(std::time::Instant::now());
                    }
                    tokio::time::sleep(hold).await;
                    *state.lock().unwrap().now.entry(group).or_default() -= 1;
                    let body = serde_json::json!({"request": line}).to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        HoldingStub { base, state }
    }

    /// The most requests of `group` that were in flight at once.
    pub fn peak(&self, group: &str) -> usize {
        self.state.lock().unwrap().peak.get(group).copied().unwrap_or(0)
    }

    /// When each request of `group` arrived, in order.
    pub fn arrivals(&self, group: &str) -> Vec<std::time::Instant> {
        self.state.lock().unwrap().arrivals.get(group).cloned().unwrap_or_default()
    }
}

/// Reads one request: its headers and, when announced, its body (for stubs of their own).
pub async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    loop {
        let k = stream.read(&mut buf[n..]).await.ok()?;
        if k == 0 {
            break;
        }
        n += k;
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if n >= end + 4 + len || n == buf.len() {
                break;
            }
        }
    }
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}
