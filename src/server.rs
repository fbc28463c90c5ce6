//! Wiring: binds the listeners, starts the hub once, builds the HTTP apps (WebSocket routes,
//! sample page, push API) and runs the graceful shutdown: stop accepting, close every socket
//! with 1001, wait for the registry to empty within the deadline, then stop the servers.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use std::rc::Rc;
use std::time::Duration;

use actix::Actor;
use actix_http::HttpService;
use actix_service::{fn_factory, fn_service, map_config};
use actix_web::dev::{AppConfig, ResourceDef};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;

use crate::backend::http::{HttpBackend, PendingNotices};
use crate::backend::Backend;
use crate::cluster::ClusterHandle;
use crate::config::{BackendKind, Config};
use crate::courier::CourierHandle;
use crate::frame::{close_code, Close};
use crate::hook::authorize::Authorizer;
use crate::hook::connect::ConnectHook;
use crate::hub::HubHandle;
use crate::metrics::{Metrics, RouteLabels};
use crate::push::{self, PushSettings};
use crate::readiness::{NotReady, Readiness};
use crate::session::RouteContext;
use crate::shutdown;
use crate::upgrade::{self, UpgradeRoute, Upgrader};

/// How often `/readyz` looks at whether a clustered node still has its broker.
const BROKER_CHECK: Duration = Duration::from_millis(250);

/// The sample page, embedded so the binary serves it from any working directory.
const PAGE: &str = include_str!("../static/index.html");

/// Room for the JSON and base64 around the largest frame a push request may carry.
const PUSH_BODY_OVERHEAD: usize = 64 * 1024;

/// Accept backlog of the listeners (the kernel caps it at net.core.somaxconn). A reconnect
/// storm after a restart or a network blip opens thousands of connections at once; with
/// std's fixed 128, the overflow is dropped and those clients wait out a 1 s SYN retransmit.
const LISTEN_BACKLOG: i32 = 4096;

/// Bind `addr` as std's `TcpListener::bind` does (SO_REUSEADDR), with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The bound sockets the server runs on (bound before the server starts, so tests can bind
/// port 0 and read the real address).
pub struct Listeners {
    /// WebSocket routes and the sample page (and the push API when the addresses are equal).
    pub websocket: TcpListener,
    /// The push API, when it has a listener of its own.
    pub push: Option<TcpListener>,
    /// The scrape-only metrics listener (`push.metrics_listen`), when set.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Bind the addresses in `config`.
    pub fn bind(config: &Config) -> anyhow::Result<Self> {
        let websocket = listen(config.server.listen.0).with_context(|| {
            format!("cannot listen on server.listen = {}", config.server.listen)
        })?;
        let push = if config.shares_listener() {
            None
        } else {
            Some(listen(config.push.listen.0).with_context(|| {
                format!("cannot listen on push.listen = {}", config.push.listen)
            })?)
        };
        let metrics = match &config.push.metrics_listen {
            Some(address) => Some(
                listen(address.0)
                    .with_context(|| format!("cannot listen on push.metrics_listen = {address}"))?,
            ),
            None => None,
        };
        Ok(Self {
            websocket,
            push,
            metrics,
        })
    }

    /// The bound WebSocket address.
    pub fn websocket_addr(&self) -> std::io::Result<SocketAddr> {
        self.websocket.local_addr()
    }

    /// The bound scrape-only metrics address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound push-API address.
    pub fn push_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.push {
            Some(listener) => listener.local_addr(),
            None => self.websocket.local_addr(),
        }
    }
}

/// A plain request on a WebSocket route (no `Upgrade: websocket`): the upgrade hook sees only
/// upgrade requests, so the App says what is missing.
async fn not_an_upgrade(req: HttpRequest) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({
        "error": "bad_request",
        "message": format!("{} takes WebSocket upgrades only: no `Upgrade: websocket` header", req.path()),
    }))
}

/// Keep-alive of idle HTTP connections, the head-read deadline, as actix-web's defaults.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Reserve of descriptors that `server.max_connections` leaves to the push API, backend
/// callouts, the listeners and the process itself, when it defaults from the open-files limit.
fn descriptor_reserve(limit: u64) -> u64 {
    (100 + limit / 40).min(limit / 2)
}

/// WebSocket connections allowed at once: `server.max_connections`, or the open-files limit
/// (raised to its hard limit first) minus [`descriptor_reserve`].
fn max_connections(config: &Config) -> usize {
    if let Some(max) = config.server.max_connections {
        return max;
    }
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("cannot read the open-files limit ({e}); assuming 1024");
            1024
        }
    };
    let max = limit - descriptor_reserve(limit);
    log::info!(
        "open-files limit {limit}: at most {max} WebSocket connections (server.max_connections)"
    );
    usize::try_from(max).unwrap_or(usize::MAX)
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

/// Run the hub until `shutdown` resolves, then shut down gracefully. Must run inside an actix
/// system.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_readiness(config, listeners, shutdown, Readiness::default()).await
}

/// [`run`], reporting readiness through `readiness` (`/readyz`): starting until the servers
/// run and the hub answers, draining from the shutdown signal on. Other components (the
/// cluster link) set their own reasons on a clone.
pub async fn run_with_readiness(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let readiness_data = web::Data::new(readiness.clone());
    let metrics = Arc::new(Metrics::new());
    // In a cluster, a survivor owes the disconnect notices of a dead node's connections only
    // when this backend announces ends at all.
    let announces = config.backend.kind == BackendKind::Http
        && crate::backend::format_for(&config.backend).announces_disconnects();
    let cluster = ClusterHandle::new(&config.cluster, announces);
    // One hub for the whole process, started before the servers; workers get its address.
    let hub = HubHandle::start(
        config.limits.subscriptions(),
        metrics.clone(),
        cluster.as_ref().map(|(handle, _)| handle.clone()),
    );
    let hub_data = web::Data::new(hub.clone());
    // Every session holds a guard, cut-off and replaced ones included: shutdown waits for all
    // of them.
    let (sessions, mut sessions_done) = shutdown::tracker();
    let routes: Vec<web::Data<RouteContext>> = config
        .routes
        .iter()
        .map(|route| {
            web::Data::new(RouteContext {
                path: Arc::from(route.path.as_str()),
                dialect: route.dialect,
                options: crate::dialect::DialectOptions {
                    strict: route.strict,
                    client_publish: route.client_publish,
                    xrf_token: None,
                    max_batch: config.limits.max_batch,
                },
                xrf_cookie: route.xrf_cookie.clone(),
                accept_url: route.accept_url.clone(),
                sessions: sessions.clone(),
                limits: config.limits.clone(),
                hub: hub.clone(),
                client_ids: route.path.contains("{id}"),
                max_pending: config.backend.max_pending_per_connection,
                trusted_proxies: Arc::new(config.server.trusted_proxies.clone()),
                compression: route.compression.then_some(crate::deflate::Settings {
                    threshold: route.compression_threshold,
                    // 1..=9, checked when the config was read.
                    level: route.compression_level as u8,
                    server_no_context_takeover: route.server_no_context_takeover,
                    client_no_context_takeover: route.client_no_context_takeover,
                    // 9..=15, checked when the config was read.
                    server_max_window_bits: route.server_max_window_bits as u8,
                    client_max_window_bits: route.client_max_window_bits as u8,
                }),
                labels: RouteLabels {
                    route: route.path.clone(),
                    dialect: route.dialect.name().to_owned(),
                },
            })
        })
        .collect();
    let push_settings = web::Data::new(PushSettings::new(
        &config,
        config.limits.max_message_size / 3 * 4 + PUSH_BODY_OVERHEAD,
    ));
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let shared = config.shares_listener();
    let notices = PendingNotices::default();
    if let Some((_, starter)) = cluster {
        // The notices of dead nodes' connections go through a backend actor of their own,
        // on this thread, with the same retries and the same pending count as every notice.
        let orphans = announces.then(|| {
            let format = crate::backend::format_for(&config.backend);
            HttpBackend::new(&config.backend, format, notices.clone(), metrics.clone())
                .start()
                .recipient()
        });
        starter.start(Box::new(hub.local()), orphans);
    }
    let relay_format = (config.backend.kind == BackendKind::Http).then_some(config.backend.format);
    let shutdown_timeout = config.shutdown_timeout().as_secs().max(1);

    let max_connections = max_connections(&config);
    let ws_server = {
        let config = config.clone();
        let hub_data = hub_data.clone();
        let push_settings = push_settings.clone();
        let readiness_data = readiness_data.clone();
        let notices = notices.clone();
        actix_server::Server::build()
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(shutdown_timeout)
            .listen("websocket", listeners.websocket, move || {
                let backend = Backend::for_worker(&config.backend, &notices, &metrics);
                let authorizer = Authorizer::for_worker(&config.authorization, &metrics);
                let hooked = config.routes.iter().any(|r| r.accept_url.is_some());
                let admission = hooked.then(|| ConnectHook::start_for_worker(metrics.clone()));
                let upgrader = Rc::new(Upgrader {
                    routes: routes
                        .iter()
                        .enumerate()
                        .map(|(i, route)| UpgradeRoute {
                            pattern: ResourceDef::new(&*route.path),
                            context: route.clone().into_inner(),
                            origins: config.handshake_origins(i),
                            accept_token: config.routes[i].accept_token().map(str::to_owned),
                        })
                        .collect(),
                    backend: backend.clone(),
                    authorizer: authorizer.clone(),
                    admission: admission.clone(),
                    max_connections,
                    courier: CourierHandle::start(metrics.clone()),
                });
                let mut app = App::new()
                    .app_data(web::Data::new(backend))
                    .app_data(web::Data::new(authorizer))
                    .app_data(web::Data::new(admission))
                    .app_data(readiness_data.clone())
                    .app_data(hub_data.clone());
                for route in &routes {
                    app = app
                        .service(web::resource(&*route.path).route(web::get().to(not_an_upgrade)));
                }
                if config.server.page {
                    app = app.route("/", web::get().to(page));
                }
                if shared {
                    app = app
                        .app_data(push_settings.clone())
                        .configure(|cfg| push::configure(cfg, relay_format));
                }
                let app = app.default_service(web::to(push::not_found));
                HttpService::build()
                    .keep_alive(KEEP_ALIVE)
                    .client_request_timeout(REQUEST_HEAD_TIMEOUT)
                    // Close at once once a response with `Connection: close` is written,
                    // instead of lingering a second (a browser waits for that FIN).
                    .client_disconnect_timeout(Duration::ZERO)
                    .upgrade(fn_factory(move || {
                        let upgrader = upgrader.clone();
                        async move {
                            Ok::<_, ()>(fn_service(move |request| {
                                upgrade::serve(upgrader.clone(), request)
                            }))
                        }
                    }))
                    .finish(map_config(app, |_| AppConfig::default()))
                    .tcp()
            })?
            .run()
    };
    let ws_handle = ws_server.handle();
    let mut ws_task = actix_web::rt::spawn(ws_server);

    let mut push_task = match listeners.push {
        Some(listener) => {
            let hub_data = hub_data.clone();
            let push_settings = push_settings.clone();
            let readiness_data = readiness_data.clone();
            Some(side_server(listener, move |cfg| {
                cfg.app_data(hub_data.clone())
                    .app_data(readiness_data.clone())
                    .app_data(push_settings.clone())
                    .configure(|cfg| push::configure(cfg, relay_format));
            })?)
        }
        None => None,
    };

    // The scrape-only listener: `/metrics` and nothing else, no token.
    let metrics_task = match listeners.metrics {
        Some(listener) => {
            let hub_data = hub_data.clone();
            Some(side_server(listener, move |cfg| {
                cfg.app_data(hub_data.clone())
                    .route("/metrics", web::get().to(push::dashboard::scrape));
            })?)
        }
        None => None,
    };

    // Ready once the hub answers (the servers are running by now).
    if hub.stats().await.is_ok() {
        readiness.clear(NotReady::Starting);
    }
    // Clustered: not ready while this node is cut off from the cluster's Redis, so a load
    // balancer sends new clients to a node that has it.
    if let Some(cluster) = hub.cluster().cloned() {
        let readiness = readiness.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(BROKER_CHECK);
            loop {
                tick.tick().await;
                if cluster.is_connected() {
                    readiness.clear(NotReady::BrokerDown);
                } else {
                    readiness.set(NotReady::BrokerDown);
                }
            }
        });
    }

    // A server that ends on its own (it should not) is noticed: the hub then shuts down as on
    // a signal and the process exits with an error.
    let mut ws_ended = None;
    let mut push_ended = None;
    {
        let push_done = async {
            match push_task.as_mut() {
                Some((_, task)) => task.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => {}
            result = &mut ws_task => ws_ended = Some(result),
            result = push_done => push_ended = Some(result),
        }
    }
    let unexpected = match (&ws_ended, &push_ended) {
        (Some(result), _) => Some(format!(
            "the WebSocket server stopped on its own: {result:?}"
        )),
        (_, Some(result)) => Some(format!(
            "the push API server stopped on its own: {result:?}"
        )),
        _ => None,
    };
    if let Some(why) = &unexpected {
        log::error!("{why}; shutting down");
    }
    // Tell the load balancer first (`/readyz` 503) and give it `server.drain_delay_ms` to
    // stop sending clients; the listener keeps accepting meanwhile, so none is turned away.
    readiness.set(NotReady::Draining);
    if unexpected.is_none() && !config.drain_delay().is_zero() {
        log::info!(
            "draining: /readyz answers 503; closing connections in {:?} (server.drain_delay_ms)",
            config.drain_delay()
        );
        tokio::time::sleep(config.drain_delay()).await;
    }
    // Stop accepting first, so no new socket arrives while the old ones are being closed.
    ws_handle.pause().await;
    drain(&hub, &config, &notices, &mut sessions_done).await;
    if let Some(cluster) = hub.cluster() {
        cluster.leave().await;
    }
    ws_handle.stop(false).await;
    if ws_ended.is_none() {
        let _ = ws_task.await;
    }
    if let Some((handle, task)) = push_task {
        handle.stop(true).await;
        if push_ended.is_none() {
            let _ = task.await;
        }
    }
    if let Some((handle, task)) = metrics_task {
        handle.stop(true).await;
        let _ = task.await;
    }
    log::info!("stopped");
    match unexpected {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// A one-worker HTTP server beside the WebSocket listener (the push API, the scrape-only
/// metrics listener), serving what `configure` registers and a JSON 404 for the rest.
fn side_server(
    listener: TcpListener,
    configure: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
) -> std::io::Result<(
    actix_web::dev::ServerHandle,
    actix_web::rt::task::JoinHandle<std::io::Result<()>>,
)> {
    let server = HttpServer::new(move || {
        App::new()
            .configure(configure.clone())
            .default_service(web::to(push::not_found))
    })
    .workers(1)
    .disable_signals()
    .client_disconnect_timeout(Duration::ZERO)
    .listen(listener)?
    .run();
    let handle = server.handle();
    Ok((handle, actix_web::rt::spawn(server)))
}

/// Close every socket with 1001 and wait until every session has ended and every disconnect
/// notice is delivered, or the deadline passes.
async fn drain(
    hub: &HubHandle,
    config: &Config,
    notices: &PendingNotices,
    sessions: &mut shutdown::Drain,
) {
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout();
    let open = hub.stats().await.map(|s| s.connections).unwrap_or(0);
    log::info!(
        "shutting down: closing {open} connection(s) with 1001 (deadline {:?})",
        config.shutdown_timeout()
    );
    let close = Close::new(close_code::GOING_AWAY, "server shutting down");
    let Ok(empty) = hub.shutdown(close).await else {
        log::error!("the hub stopped before shutdown");
        return;
    };
    if tokio::time::timeout_at(deadline, empty).await.is_err() {
        let left = hub.stats().await.map(|s| s.connections).unwrap_or(0);
        log::warn!("shutdown deadline overrun: {left} connection(s) still open; stopping anyway");
    } else {
        log::info!("all connections closed");
    }
    // Sessions the registry no longer lists (cut off, replaced) and the disconnect notices to
    // the backend are part of the drain too: sessions count their notice before they stop.
    let all_done = async {
        sessions.finished().await;
        notices.settled().await;
    };
    match tokio::time::timeout_at(deadline, all_done).await {
        Ok(()) => log::info!("all sessions ended and all disconnect notices delivered"),
        Err(_) => log::warn!(
            "shutdown deadline overrun: session(s) still open or {} disconnect notice(s) not delivered",
            notices.count()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    /// A burst of connections that nobody has accepted yet all complete their handshake:
    /// with std's backlog of 128, the rest would have their SYNs dropped (1 s retransmit).
    #[test]
    fn the_accept_backlog_holds_a_burst_of_connections() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut open = Vec::new();
        for i in 0..600 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(stream) => open.push(stream),
                Err(e) => panic!("connection {i} of 600 not accepted into the backlog: {e}"),
            }
        }
        assert_eq!(open.len(), 600);
    }
}
