//! An OTLP/HTTP receiver in the test process: services export spans to it as JSON
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`), tests read what arrived.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One exported span, flattened from the OTLP JSON.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

pub struct OtlpReceiver {
    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Paths of the requests, to check the exporter's URL.
    paths: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let (spans, paths) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let (s, p) = (spans.clone(), paths.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, s.clone(), p.clone()));
            }
        });
        OtlpReceiver { endpoint, spans, paths }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("paths").clone()
    }
}

/// Answers every request on one keep-alive connection with 200 and `{}`.
async fn serve(mut stream: tokio::net::TcpStream, spans: Arc<Mutex<Vec<ReceivedSpan>>>, paths: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
        paths.lock().expect("paths").push(head.split_whitespace().nth(1).unwrap_or("").to_string());
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) {
            spans.lock().expect("spans").extend(flatten(&json));
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn flatten(request: &serde_json::Value) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&rs["resource"]["attributes"]).get("service.name").and_then(|v| v.as_str()).unwrap_or("").to_string();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span["name"].as_str().unwrap_or("").to_string(),
                    trace_id: span["traceId"].as_str().unwrap_or("").to_lowercase(),
                    span_id: span["spanId"].as_str().unwrap_or("").to_lowercase(),
                    parent_span_id: span["parentSpanId"].as_str().unwrap_or("").to_lowercase(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    out
}

/// OTLP's `[{key, value: {stringValue|intValue|...}}]` as a plain map.
fn attributes(list: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((key, value))
        })
        .collect()
}
