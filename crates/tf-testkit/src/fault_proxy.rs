//! A fault-injecting HTTP proxy in front of a real service (the schema registry): requests pass
//! through to it, except those a test chooses to answer with an error status itself. It stands
//! for a registry that refuses one call (a subject's compatibility rule, a deleted subject), not
//! for the registry: every other call reaches the real one.
//!
//! One request per connection (`Connection: close` both ways), which keeps the proxy to reading
//! a request head and its `Content-Length` body.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`, to use in place of the upstream's host and port.
    pub base: String,
    /// Requests the proxy answered itself.
    pub refused: Arc<AtomicUsize>,
}

/// Starts a proxy to `upstream` (`host:port`) that answers `status` with `body` to every request
/// whose request line contains `refuse`.
pub async fn start(upstream: &str, refuse: &str, status: u16, body: &str) -> FaultProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let refused = Arc::new(AtomicUsize::new(0));
    let (upstream, refuse, body, counter) = (upstream.to_string(), refuse.to_string(), body.to_string(), refused.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, refuse, body, counter) = (upstream.clone(), refuse.clone(), body.clone(), counter.clone());
            tokio::spawn(async move {
                let _ = serve(client, &upstream, &refuse, status, &body, &counter).await;
            });
        }
    });
    FaultProxy { base, refused }
}

async fn serve(mut client: TcpStream, upstream: &str, refuse: &str, status: u16, body: &str, refused: &AtomicUsize) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let request_line = head.lines().next().unwrap_or_default();
    if request_line.contains(refuse) {
        refused.fetch_add(1, Ordering::SeqCst);
        let answer = format!(
            "HTTP/1.1 {status} Refused\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return client.write_all(answer.as_bytes()).await;
    }
    // Forward with `Connection: close`, so the upstream ends the answer by closing.
    let mut forwarded: Vec<u8> = Vec::with_capacity(request.len() + 20);
    for line in head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")) {
        if line.is_empty() {
            continue;
        }
        forwarded.extend_from_slice(line.as_bytes());
        forwarded.extend_from_slice(b"\r\n");
    }
    forwarded.extend_from_slice(b"connection: close\r\n\r\n");
    forwarded.extend_from_slice(&request[head_end..]);
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&forwarded).await?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    client.write_all(&answer).await?;
    client.shutdown().await
}
