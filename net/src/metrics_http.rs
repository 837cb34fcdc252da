//! `GET /metrics` on shard 0: every shard's snapshot, gathered through the
//! mailboxes and rendered by `metrics.rs`. Apart from the counters, as it
//! asks the shards (the counters sit below them).

use std::rc::Rc;

use futures::channel::oneshot;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics::{ShardSnapshot, render};
use crate::shard::{Shard, ShardOp};

/// A metrics request is one short GET; anything longer is refused.
const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Gathers every shard's snapshot.
pub(crate) async fn gather(shard: &Rc<Shard>) -> Vec<ShardSnapshot> {
    let mut waits = Vec::new();
    for owner in 0..shard.shared.shard_count {
        let (reply, wait) = oneshot::channel();
        shard.submit(owner, ShardOp::Metrics { reply });
        waits.push(wait);
    }
    let mut snapshots = Vec::new();
    for wait in waits {
        if let Ok(snapshot) = wait.await {
            snapshots.push(snapshot);
        }
    }
    snapshots
}

/// Serves `GET /metrics` (HTTP/1.0 style: one response, then close), over
/// plain TCP or TLS (`metrics_tls`).
pub(crate) async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(shard: Rc<Shard>, mut stream: S) {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        request.extend_from_slice(&chunk[..read]);
        if request.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if request.len() > HTTP_REQUEST_BYTES_MAX {
            let _ =
                stream.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n").await;
            return;
        }
    }
    let is_metrics = request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?");
    let response = if is_metrics {
        let body = render(&gather(&shard).await);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}
