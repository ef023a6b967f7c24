//! The API's accept loop: axum's router served by hyper with the limits a public
//! endpoint needs, so silent or half-sent connections (slowloris) cannot use up the
//! process's file descriptors and starve everyone else:
//!
//! * a request's header must arrive within `header_timeout`, also on an idle
//!   keep-alive connection (hyper's `header_read_timeout`): a silent connection is
//!   closed then;
//! * a request (its body read and its answer made) gets `request_timeout`, then a 408
//!   and the connection closes;
//! * at most `max_connections` at once, and `max_connections_per_ip` from one address:
//!   beyond them a new connection is closed at once, before anything is read.
//!
//! `LimitNOFILE` in the systemd unit is raised well above `max_connections`.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

/// Open connections per peer address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Every request gets `limit`; past it, 408 and the connection closes.
async fn with_deadline(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            [(axum::http::header::CONNECTION, "close")],
            axum::Json(serde_json::json!({"error": {
                "code": "request_timeout",
                "message": format!("the request was not complete within {} s", limit.as_secs())
            }})),
        )
            .into_response(),
    }
}

/// Serve `app` on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ApiLimits,
    mut stop: oneshot::Receiver<()>,
) {
    let app = app.layer(axum::middleware::from_fn(move |req, next| {
        with_deadline(limits.request_timeout, req, next)
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    warn!(error = %e, "API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(%peer, refused, "API: connection limit reached; closing new connections");
            }
            continue;
        };
        if !per_ip.enter(peer.ip(), limits.max_connections_per_ip) {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(%peer, refused, "API: per-address connection limit reached; closing its new connections");
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "API connection ended");
            }
            per_ip.leave(peer.ip());
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts() {
        let p = PerIp::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.enter(a, 2) && p.enter(a, 2));
        assert!(!p.enter(a, 2), "third from the same address");
        assert!(p.enter(b, 2), "another address has its own count");
        p.leave(a);
        assert!(p.enter(a, 2));
        p.leave(a);
        p.leave(a);
        p.leave(b);
        assert!(p.0.lock().unwrap().is_empty(), "no entry left behind");
    }
}
