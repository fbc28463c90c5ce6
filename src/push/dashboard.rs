//! The operator's views of the hub on the push listener: `GET /metrics` (Prometheus text
//! format), the live dashboard page at `GET /dashboard` with its vendored chart library, and
//! `GET /api/dashboard`, the figures the page polls.
//!
//! The page itself holds no data (it is served after the `Host` and `Origin` checks alone, so a
//! browser can open it); every figure it shows comes from `/api/dashboard`, which needs the push
//! token when one is set, as `/metrics` does.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::guard::{Allowed, ApiError, Authorized};
use crate::hub::HubHandle;
use crate::metrics::ClusterFigures;

/// The dashboard page.
const PAGE: &str = include_str!("../../static/dashboard.html");
/// uPlot, the vendored chart library (see static/vendor/README.md).
const UPLOT_JS: &str = include_str!("../../static/vendor/uPlot.iife.min.js");
/// uPlot's stylesheet.
const UPLOT_CSS: &str = include_str!("../../static/vendor/uPlot.min.css");
/// How many channels the dashboard lists, the busiest first.
const TOP_CHANNELS: usize = 10;
/// The media type of the text the Prometheus client encodes (OpenMetrics 1.0).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Register the dashboard's routes (the `/api` data path is registered by the caller's scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/dashboard", web::get().to(page))
        .route("/dashboard/uPlot.iife.min.js", web::get().to(uplot_js))
        .route("/dashboard/uPlot.min.css", web::get().to(uplot_css));
}

/// `GET /metrics`: every metric in the Prometheus text exposition format.
pub async fn metrics(_: Authorized, hub: web::Data<HubHandle>) -> HttpResponse {
    scrape(hub).await
}

/// `GET /metrics` on the scrape-only listener (`push.metrics_listen`): no token, nothing else
/// served.
pub async fn scrape(hub: web::Data<HubHandle>) -> HttpResponse {
    if let Some(cluster) = hub.cluster() {
        let status = cluster.status();
        hub.metrics().observe_cluster(&ClusterFigures {
            connected: status.state == "connected" && status.subscribed,
            nodes: status.nodes.len(),
            connections: status.connections,
            gaps: status.gaps,
            publishes_failed: status.publishes_failed,
            dropped: status.dropped,
            notices_reaped: status.notices_reaped,
        });
    }
    HttpResponse::Ok()
        .content_type(OPENMETRICS)
        .body(hub.metrics().encode())
}

async fn page(_: Allowed) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn uplot_js(_: Allowed) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("cache-control", "max-age=86400"))
        .body(UPLOT_JS)
}

async fn uplot_css(_: Allowed) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("cache-control", "max-age=86400"))
        .body(UPLOT_CSS)
}

/// `GET /api/dashboard`: this node's totals, its busiest channels and its row in the node
/// table.
pub async fn data(_: Authorized, hub: web::Data<HubHandle>) -> Result<HttpResponse, ApiError> {
    let totals = hub.metrics().totals();
    let stats = hub.stats().await?;
    let mut channels = hub.channels().await?;
    let count = channels.len();
    channels.sort_by(|a, b| {
        b.subscribers
            .cmp(&a.subscribers)
            .then_with(|| a.name.cmp(&b.name))
    });
    channels.truncate(TOP_CHANNELS);
    let here = json!({
        "connections": totals.connections,
        "channels": stats.channels,
        "deliveries": totals.deliveries,
        "dropped": totals.dropped,
    });
    // Clustered: a row per node from the heartbeats (this node's own row has its live
    // figures); the channel list is this node's.
    let (node, nodes) = match hub.cluster() {
        Some(cluster) => {
            let status = cluster.status();
            let rows = status
                .nodes
                .iter()
                .map(|n| {
                    if n.node == status.node {
                        let mut row = here.clone();
                        row["name"] = json!(n.node);
                        row
                    } else {
                        json!({"name": n.node, "connections": n.connections,
                            "channels": n.channels, "heartbeat_age_ms": n.age_ms})
                    }
                })
                .collect::<Vec<_>>();
            (status.node, rows)
        }
        None => {
            let name = format!("pid {}", std::process::id());
            let mut row = here;
            row["name"] = json!(name);
            (name, vec![row])
        }
    };
    Ok(HttpResponse::Ok().json(json!({
        "node": node,
        "totals": totals,
        "channels": {"count": count, "top": channels},
        "nodes": nodes,
    })))
}
