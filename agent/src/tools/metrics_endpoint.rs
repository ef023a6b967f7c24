//! The Prometheus endpoint: `GET /metrics` on `[metrics] listen`, rendering the
//! registry ([`crate::observe::metrics`]) with the broker link's state.

use crate::observe::status::Board;
use crate::store::Store;

/// Serve `GET /metrics` on `listen` until `stop` turns true.
pub async fn serve(
    listen: std::net::SocketAddr,
    store: Store,
    board: Board,
    link: crate::link::mqtt::MqttLink,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use axum::http::header::CONTENT_TYPE;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "metrics on http://{listen}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (store, board, link) = (store.clone(), board.clone(), link.clone());
            async move {
                let body =
                    crate::observe::metrics::get().render(&store, &board, link.is_connected());
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    }))
}
