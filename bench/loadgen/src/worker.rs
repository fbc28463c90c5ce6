//! One worker process: opens its share of the connections on a current-thread runtime,
//! runs the phases the coordinator sends on stdin, and reports on stdout (JSON lines).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::proto::{
    encode_histogram, histogram, now_ns, parse, payload, Command, Counters, Mode, PhaseResult,
    Report, WorkerPlan, MAX_DRAIN,
};
use crate::pusher;

type Socket = WebSocketStream<TcpStream>;

/// What every connection task is told to do; `watch` so that each task sees the latest.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Control {
    Run(Mode),
    Quit,
}

/// The counters and the current phase's measurements, shared by this worker's tasks.
struct State {
    counters: Counters,
    /// Counters when the current phase started, to report the phase's own sends and receipts.
    phase_start: Counters,
    timed: u64,
    hist: Histogram<u64>,
    fanout: HashMap<u32, (u64, u64)>,
    first_ns: u64,
    last_ns: u64,
}

impl State {
    fn new() -> Self {
        Self {
            counters: Counters::default(),
            phase_start: Counters::default(),
            timed: 0,
            hist: histogram(),
            fanout: HashMap::new(),
            first_ns: 0,
            last_ns: 0,
        }
    }

    fn start_phase(&mut self) {
        self.phase_start = self.counters;
        self.timed = 0;
        self.hist.reset();
        self.fanout.clear();
        self.first_ns = 0;
        self.last_ns = 0;
    }

    fn phase_result(&self) -> PhaseResult {
        let mut counters = self.counters;
        counters.sent -= self.phase_start.sent;
        counters.received -= self.phase_start.received;
        PhaseResult {
            counters,
            timed: self.timed,
            hist: encode_histogram(&self.hist),
            fanout: self.fanout.iter().map(|(s, (n, l))| (*s, *n, *l)).collect(),
            first_ns: self.first_ns,
            last_ns: self.last_ns,
        }
    }

    /// Count a data frame; record its latency if it carries a send time. True if it did.
    fn received(&mut self, data: &[u8]) -> bool {
        self.counters.received += 1;
        let Some((sent_ns, seq)) = parse(data) else {
            return false;
        };
        let now = now_ns();
        let latency = now.saturating_sub(sent_ns).max(1_000);
        let _ = self.hist.record(latency.min(self.hist.high()));
        self.timed += 1;
        if self.first_ns == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        if seq > 0 {
            let entry = self.fanout.entry(seq).or_insert((0, 0));
            entry.0 += 1;
            entry.1 = entry.1.max(latency);
        }
        true
    }
}

fn emit(report: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, report);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

pub fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, work())
}

async fn target(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: Uri = url.parse().with_context(|| format!("bad url {url}"))?;
    let host = uri.host().ok_or_else(|| anyhow!("no host in {url}"))?;
    let port = uri.port_u16().unwrap_or(80);
    let found = tokio::net::lookup_host((host, port))
        .await?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("{host} has no IPv4 address"));
    found
}

async fn work() -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context("no plan on stdin")?;
    let plan: Rc<WorkerPlan> = Rc::new(serde_json::from_str(&first)?);
    let addr = target(&plan.url).await?;
    let state = Rc::new(RefCell::new(State::new()));
    let (control, watcher) = watch::channel(Control::Run(Mode::Hold));

    let progress_state = state.clone();
    tokio::task::spawn_local(async move {
        loop {
            sleep(Duration::from_secs(1)).await;
            let counters = progress_state.borrow().counters;
            emit(&Report::Progress(counters));
        }
    });

    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let start = Instant::now();
    let spacing = Duration::from_secs_f64(1.0 / plan.connect_rate.max(1.0));
    let mut tasks = Vec::with_capacity(plan.conns);
    // At most `max_pending` handshakes in flight: a burst beyond the server's accept backlog
    // would measure SYN retransmission timers, not the server.
    let pending = std::sync::Arc::new(tokio::sync::Semaphore::new(plan.max_pending.max(1)));
    for i in 0..plan.conns {
        tokio::time::sleep_until(start + spacing * i as u32).await;
        let permit = pending.clone().acquire_owned().await?;
        let source = plan.sources[(i + plan.index) % plan.sources.len()];
        tasks.push(tokio::task::spawn_local(connection(
            i,
            (addr, source),
            plan.clone(),
            state.clone(),
            watcher.clone(),
            outcome_tx.clone(),
            permit,
        )));
    }
    let mut first_error = None;
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..plan.conns {
        match outcome_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    emit(&Report::Connected {
        ok,
        failed,
        secs: start.elapsed().as_secs_f64(),
        first_error,
    });

    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Command>(&line)? {
            Command::Phase { mode, secs, grace } => {
                state.borrow_mut().start_phase();
                control.send_replace(Control::Run(mode));
                sleep(Duration::from_secs_f64(secs)).await;
                control.send_replace(Control::Run(Mode::Hold));
                drain(&state, Duration::from_secs_f64(grace)).await;
                let result = state.borrow().phase_result();
                emit(&Report::PhaseDone(result));
            }
            Command::Quit => break,
        }
    }
    control.send_replace(Control::Quit);
    let _ = timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(tasks),
    )
    .await;
    Ok(())
}

/// Wait for what is still on its way: until nothing has arrived for `quiet`, at most
/// [`MAX_DRAIN`]. A server that has queued more than it could deliver during the phase gets to
/// deliver it, so that what is counted missing at the end was lost, not merely late.
async fn drain(state: &Rc<RefCell<State>>, quiet: Duration) {
    let start = Instant::now();
    let mut seen = state.borrow().counters.received;
    let mut last_change = start;
    while last_change.elapsed() < quiet && start.elapsed() < MAX_DRAIN {
        sleep(Duration::from_millis(50)).await;
        let now = state.borrow().counters.received;
        if now != seen {
            seen = now;
            last_change = Instant::now();
        }
    }
}

async fn open(url: &str, addr: SocketAddr, source: std::net::Ipv4Addr) -> anyhow::Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

async fn connection(
    i: usize,
    (addr, source): (SocketAddr, std::net::Ipv4Addr),
    plan: Rc<WorkerPlan>,
    state: Rc<RefCell<State>>,
    mut control: watch::Receiver<Control>,
    outcome: mpsc::UnboundedSender<Result<(), String>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let limit = Duration::from_secs_f64(plan.connect_timeout);
    // `{n}` in the URL gives each connection a path of its own (ws2api's /{ClientId}).
    let url = plan.url.replace("{n}", &format!("w{}c{i}", plan.index));
    let ready = timeout(limit, async {
        let mut ws = open(&url, addr, source).await?;
        if plan.pusher {
            wait_for(&mut ws, Some(pusher::ESTABLISHED)).await?;
        }
        if let Some(text) = &plan.subscribe {
            ws.send(Message::text(text.clone())).await?;
        }
        if plan.await_ack {
            wait_for(&mut ws, plan.pusher.then_some(pusher::SUBSCRIBED)).await?;
        }
        Ok::<_, anyhow::Error>(ws)
    })
    .await
    .map_err(|_| anyhow!("timed out after {:?}", limit))
    .and_then(|r| r);
    let mut ws = match ready {
        Ok(ws) => {
            state.borrow_mut().counters.connected += 1;
            let _ = outcome.send(Ok(()));
            ws
        }
        Err(e) => {
            drop(permit);
            state.borrow_mut().counters.failed += 1;
            let _ = outcome.send(Err(format!("{source}: {e:#}")));
            return;
        }
    };
    drop(outcome);
    drop(permit);
    loop {
        let current = *control.borrow_and_update();
        let alive = match current {
            Control::Quit => {
                let _ = timeout(Duration::from_secs(2), async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return;
            }
            Control::Run(Mode::Hold) => hold(&mut ws, &state, &mut control).await,
            Control::Run(Mode::Echo { rate, size }) if rate <= 0.0 => {
                closed_loop(&mut ws, &state, &mut control, size).await
            }
            Control::Run(Mode::Echo { rate, size }) => {
                open_loop(i, &mut ws, &state, &mut control, rate, size).await
            }
        };
        if !alive {
            state.borrow_mut().counters.closed += 1;
            state.borrow_mut().counters.connected -= 1;
            return;
        }
    }
}

/// Read until a data frame arrives (one containing `needle`, if given).
async fn wait_for(ws: &mut Socket, needle: Option<&str>) -> anyhow::Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if needle.is_none_or(|n| text.contains(n)) {
                    return Ok(());
                }
            }
            Some(Ok(Message::Binary(_))) if needle.is_none() => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(anyhow!(
                    "closed before {}",
                    needle.unwrap_or("the acknowledgement")
                ))
            }
        }
    }
}

/// What a frame from the server means to the loop reading it.
enum Seen {
    Timed,
    Other,
    /// A Pusher keep-alive question (`pusher:ping`), to be answered.
    Ping,
    Gone,
}

fn seen(state: &RefCell<State>, message: Option<Result<Message, impl std::fmt::Debug>>) -> Seen {
    match message {
        Some(Ok(Message::Text(text))) => {
            if state.borrow_mut().received(text.as_bytes()) {
                Seen::Timed
            } else if text.contains(pusher::PING) {
                Seen::Ping
            } else {
                Seen::Other
            }
        }
        Some(Ok(Message::Binary(data))) => {
            if state.borrow_mut().received(&data) {
                Seen::Timed
            } else {
                Seen::Other
            }
        }
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Seen::Gone,
        Some(Ok(_)) => Seen::Other,
    }
}

/// Read (and answer pings) until the control changes. False if the connection ended.
async fn hold(
    ws: &mut Socket,
    state: &RefCell<State>,
    control: &mut watch::Receiver<Control>,
) -> bool {
    loop {
        tokio::select! {
            message = ws.next() => match seen(state, message) {
                Seen::Gone => return false,
                Seen::Ping => if ws.send(Message::text(pusher::PONG)).await.is_err() { return false },
                Seen::Timed | Seen::Other => {}
            },
            changed = control.changed() => return changed.is_ok(),
        }
    }
}

async fn send(ws: &mut Socket, state: &RefCell<State>, size: usize) -> bool {
    let text = payload(now_ns(), 0, size);
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    state.borrow_mut().counters.sent += 1;
    true
}

/// Send, wait for the answer, send the next: one message in flight per connection.
async fn closed_loop(
    ws: &mut Socket,
    state: &RefCell<State>,
    control: &mut watch::Receiver<Control>,
    size: usize,
) -> bool {
    if !send(ws, state, size).await {
        return false;
    }
    loop {
        tokio::select! {
            message = ws.next() => match seen(state, message) {
                Seen::Gone => return false,
                Seen::Other | Seen::Ping => {}
                Seen::Timed => {
                    if control.has_changed().unwrap_or(true) {
                        return true;
                    }
                    if !send(ws, state, size).await {
                        return false;
                    }
                }
            },
            changed = control.changed() => return changed.is_ok(),
        }
    }
}

/// Send `rate` messages per second at a phase of this connection's own, whatever comes back.
async fn open_loop(
    i: usize,
    ws: &mut Socket,
    state: &RefCell<State>,
    control: &mut watch::Receiver<Control>,
    rate: f64,
    size: usize,
) -> bool {
    let period = Duration::from_secs_f64(1.0 / rate);
    // Spread the connections' send times evenly over the period (golden-ratio sequence).
    let offset = period.mul_f64((i as f64 * 0.618_033_988_75).fract());
    let mut ticks = tokio::time::interval_at(Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => if !send(ws, state, size).await { return false },
            message = ws.next() => if let Seen::Gone = seen(state, message) { return false },
            changed = control.changed() => return changed.is_ok(),
        }
    }
}
