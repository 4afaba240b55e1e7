//! `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1 (one request per connection).
//!
//! - `/healthz`: 200 while the control loop turns (it beats at least every second), else 503.
//! - `/readyz`: 200 once every source synced, the first map sync applied and every local pod
//!   address is attached; else 503 with the reason. Either way, the lines after the first are
//!   notes that do not change readiness: a rejected manifest folder, compiler warnings.
//! - `/metrics`: OpenMetrics text.

use std::{sync::Arc, time::Duration};

use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::metrics::Health;

pub async fn serve(listener: TcpListener, registry: Arc<Registry>, health: Arc<Health>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(conn, &registry, &health))
                .await;
        });
    }
}

async fn handle(mut conn: TcpStream, registry: &Registry, health: &Health) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") if health.alive(10_000) => (200, "text/plain", "ok\n".to_owned()),
        ("GET", "/healthz") => (503, "text/plain", "the control loop is stuck\n".to_owned()),
        ("GET", "/readyz") => match health.ready() {
            Ok(()) => (200, "text/plain", format!("ready\n{}", health.notes())),
            Err(why) => (
                503,
                "text/plain",
                format!("not ready: {why}\n{}", health.notes()),
            ),
        },
        ("GET", "/metrics") => {
            let mut text = String::new();
            match encode(&mut text, registry) {
                Ok(()) => (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => (500, "text/plain", format!("{e}\n")),
            }
        }
        ("GET", _) => (
            404,
            "text/plain",
            "try /healthz, /readyz or /metrics\n".to_owned(),
        ),
        _ => (405, "text/plain", "GET only\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}
