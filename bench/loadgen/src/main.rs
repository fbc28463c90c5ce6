//! `loadgen`: Switchboard's load generator. It drives WebSocket connections against any server
//! URL (Switchboard or a peer), spread over several worker processes and source addresses, and
//! prints a progress line each second and a result (human-readable, and JSON with `--json`).
//! `loadgen backend` is the mock application the relay scenarios put behind the hubs.
//!
//! Layout: `main.rs` flags and the coordinator, `worker.rs` one worker process's connections,
//! `proto.rs` the coordinator/worker protocol and the timed payload, `backend.rs` the mock
//! application, `rss.rs` a server's resident memory, `pusher.rs` the Pusher protocol's
//! subscribe frame and signed HTTP publishes (the sockudo peer).

mod backend;
mod proto;
mod pusher;
mod rss;
mod worker;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use proto::{Command, Counters, Mode, PhaseResult, Report, WorkerPlan};

#[derive(Parser)]
#[command(about = "WebSocket load generator for Switchboard and its peers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open the connections, hold them idle, report connect rate and server memory.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold the connections after the last one opened.
        #[arg(long, default_value_t = 2.0)]
        hold: f64,
    },
    /// Send timed messages and measure the round trip (echo or relay).
    Echo {
        #[command(flatten)]
        common: Common,
        /// Messages per second per connection; 0 = closed loop (next send when the answer arrives).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Total messages per second, one step each, run in order (overrides --rate); the run
        /// stops after the first step whose p99 exceeds --max-p99-ms or that loses answers.
        #[arg(long, value_delimiter = ',')]
        steps: Vec<f64>,
        #[arg(long, default_value_t = 20.0)]
        max_p99_ms: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Message size in bytes (at least 27: the timed marker).
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
    /// Subscribe every connection, publish over HTTP, measure publish -> every delivery.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// URL the publishes are POSTed to.
        #[arg(long)]
        publish_url: String,
        /// Request body; `{payload}` is replaced by the timed payload.
        #[arg(long)]
        publish_body: String,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Sign each publish for Pusher's HTTP API (`KEY:SECRET`): auth_key, auth_timestamp,
        /// auth_version, body_md5 and auth_signature are added to --publish-url's query.
        #[arg(long)]
        pusher_auth: Option<String>,
        /// Latency phase: this many publishes, one at a time, --probe-interval-ms apart.
        #[arg(long, default_value_t = 10)]
        probes: u32,
        #[arg(long, default_value_t = 500)]
        probe_interval_ms: u64,
        /// Throughput phase: publishes per second, for --secs (0 = no throughput phase).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Payload bytes per publish (at least 27: the timed marker).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// With --rss-of: read the server's memory once more this many seconds after the last
        /// phase, the connections still open (is what the deliveries used given back?).
        #[arg(long, default_value_t = 0.0)]
        rss_again_after: f64,
        /// A phase ends when no delivery has arrived for this many seconds (what has not
        /// arrived by then is missing).
        #[arg(long, default_value_t = 3.0)]
        quiet_secs: f64,
    },
    /// The mock application for the relay scenarios (ws2api and WebSocket-over-HTTP).
    Backend {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Internal: one worker process (reads its plan and commands on stdin).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone)]
struct Common {
    /// WebSocket URL to connect to; `{n}` is replaced by a name unique to each connection.
    /// Repeatable (or comma-separated): worker i connects to URL i % n, the worker count is
    /// rounded up to a multiple of n, and every URL gets the same number of connections (a
    /// cluster's nodes).
    #[arg(long, required = true, value_delimiter = ',')]
    url: Vec<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Connections opened per second (all workers together).
    #[arg(long, default_value_t = 5000.0)]
    connect_rate: f64,
    /// Handshakes in flight at most, all workers together (the rest wait their turn).
    #[arg(long, default_value_t = 512)]
    max_pending: usize,
    /// Worker processes; 0 = one per 9,000 connections, at least 2 (each process may hold
    /// fewer than 20,000 open files); rounded up to a multiple of the --url count.
    #[arg(long, default_value_t = 0)]
    procs: usize,
    /// Source addresses, as a range of 127.0.0.x: `FIRST-LAST`.
    #[arg(long, default_value = "2-250")]
    sources: String,
    /// Text frame each connection sends after connecting (a subscribe request).
    #[arg(long)]
    subscribe: Option<String>,
    /// Speak the Pusher protocol (sockudo): wait for `pusher:connection_established`, then
    /// subscribe to this channel with `pusher:subscribe` (with --await-ack: until
    /// `pusher_internal:subscription_succeeded`); answer `pusher:ping`. An empty CHANNEL
    /// connects without subscribing.
    #[arg(long, value_name = "CHANNEL")]
    pusher: Option<String>,
    /// A connection is ready only when its first frame arrives (the subscription's answer).
    #[arg(long)]
    await_ack: bool,
    #[arg(long, default_value_t = 20.0)]
    connect_timeout: f64,
    /// Server process whose resident memory (with its descendants) is read before and after
    /// connecting (repeatable).
    #[arg(long = "rss-of")]
    rss_of: Vec<u32>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name for the result (e.g. the server measured).
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Worker => worker::run(),
        Cmd::Backend { listen, workers } => backend::run(&listen, workers),
        Cmd::Idle { common, hold } => {
            let mut run = Run::start(&common)?;
            let phase = run.phase(Mode::Hold, hold, 0.0)?;
            let mut result = run.summary("idle");
            result["closed_while_held"] = json!(phase.closed);
            run.finish(&common, result)
        }
        Cmd::Echo {
            common,
            rate,
            steps,
            max_p99_ms,
            secs,
            size,
        } => {
            let mut run = Run::start(&common)?;
            let conns = run.connected.max(1) as f64;
            let rates: Vec<f64> = if steps.is_empty() {
                vec![rate]
            } else {
                steps.iter().map(|total| total / conns).collect()
            };
            let mut results = Vec::new();
            for per_conn in rates {
                let step = run.phase(
                    Mode::Echo {
                        rate: per_conn,
                        size,
                    },
                    secs,
                    2.0,
                )?;
                let summary = step.echo_summary(per_conn * conns, secs);
                eprintln!("step: {summary}");
                let over = summary["p99_us"].as_f64().unwrap_or(f64::MAX) > max_p99_ms * 1000.0
                    || summary["lost"].as_u64().unwrap_or(0) > 0;
                results.push(summary);
                if over && !steps.is_empty() {
                    break;
                }
            }
            let mut result = run.summary("echo");
            result["steps"] = Value::Array(results);
            run.finish(&common, result)
        }
        Cmd::Fanout {
            common,
            publish_url,
            publish_body,
            headers,
            pusher_auth,
            probes,
            probe_interval_ms,
            rate,
            secs,
            size,
            rss_again_after,
            quiet_secs,
        } => {
            let auth = pusher_auth
                .as_deref()
                .map(pusher::Auth::parse)
                .transpose()?;
            let publisher = Publisher::new(publish_url, publish_body, headers, size, auth)?;
            let mut run = Run::start(&common)?;
            let interval = Duration::from_millis(probe_interval_ms);
            // The workers listen for as long as the publisher may go on publishing.
            let listen =
                |every: Duration, count: u32| Publisher::budget(every, count).as_secs_f64() + 0.2;
            let latency = run.phase_with(listen(interval, probes), quiet_secs, || {
                publisher.paced(1, probes, interval)
            })?;
            let rss_after_latency = run.rss_now();
            let throughput = if rate > 0.0 {
                let count = (rate * secs).round().max(1.0) as u32;
                let every = Duration::from_secs_f64(1.0 / rate);
                Some(run.phase_with(listen(every, count), quiet_secs, || {
                    publisher.paced(probes + 1, count, every)
                })?)
            } else {
                None
            };
            let rss_after_throughput = throughput.as_ref().and_then(|_| run.rss_now());
            let rss_later = if rss_again_after > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(rss_again_after));
                run.rss_now()
            } else {
                None
            };
            let mut result = run.summary("fanout");
            result["latency"] = latency.fanout_summary(run.connected);
            result["throughput"] = throughput
                .map(|t| t.fanout_summary(run.connected))
                .unwrap_or(Value::Null);
            // Memory while the connections are still open: after the latency phase's publishes,
            // after the throughput phase, and --rss-again-after seconds later.
            let per_conn = |kib: Option<u64>| {
                kib.filter(|_| run.connected > 0)
                    .map(|k| (k as f64 - run.rss_before as f64) / run.connected as f64)
            };
            result["rss_after_latency_kib"] = json!(rss_after_latency);
            result["rss_per_conn_after_latency_kib"] = json!(per_conn(rss_after_latency));
            result["rss_after_throughput_kib"] = json!(rss_after_throughput);
            result["rss_later_kib"] = json!(rss_later);
            result["rss_per_conn_later_kib"] = json!(per_conn(rss_later));
            result["rss_again_after_s"] = json!(rss_again_after);
            result["size"] = json!(size);
            run.finish(&common, result)
        }
    }
}

/// A worker process and the end of its stdin the coordinator writes commands to.
struct Worker {
    child: Child,
    stdin: ChildStdin,
}

/// The coordinator's view of a run: the workers, their reports, and what the server used.
struct Run {
    workers: Vec<Worker>,
    reports: mpsc::Receiver<(usize, Report)>,
    latest: Vec<Counters>,
    conns: usize,
    connected: u64,
    failed: u64,
    connect_secs: f64,
    first_error: Option<String>,
    rss_of: Vec<u32>,
    rss_before: u64,
    rss_after: u64,
    started: Instant,
    last_progress: Instant,
    label: String,
}

/// One phase's results merged over the workers.
struct Merged {
    counters: Counters,
    closed: u64,
    timed: u64,
    hist: Histogram<u64>,
    fanout: std::collections::HashMap<u32, (u64, u64)>,
    first_ns: u64,
    last_ns: u64,
    publishes: Vec<(u32, u64)>,
    publish_errors: u64,
}

fn parse_sources(text: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| anyhow!("--sources is FIRST-LAST, e.g. 2-250"))?;
    let (first, last): (u8, u8) = (first.parse()?, last.parse()?);
    if first == 0 || first > last {
        bail!("--sources: bad range {text}");
    }
    Ok((first..=last)
        .map(|x| Ipv4Addr::new(127, 0, 0, x))
        .collect())
}

/// Connections per worker process: worker i connects to URL i % `urls`. `procs` 0 means one
/// worker per 9,000 connections, at least 2; with several URLs the count is rounded up to a
/// multiple of them, and each URL's share of `conns` (equal, the remainder going to the first
/// URLs) is spread evenly over its workers. Never more workers than connections, except that
/// every URL keeps at least one.
fn split(conns: usize, procs: usize, urls: usize) -> Vec<usize> {
    let urls = urls.max(1);
    let procs = if procs > 0 {
        procs
    } else {
        conns.div_ceil(9000).max(2)
    }
    .min(conns.max(1))
    .div_ceil(urls)
        * urls;
    (0..procs)
        .map(|index| {
            let url = index % urls;
            let share = conns / urls + usize::from(url < conns % urls);
            // This worker's rank among the workers of its URL, and how many those are.
            let (rank, peers) = (index / urls, procs / urls);
            share / peers + usize::from(rank < share % peers)
        })
        .collect()
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss::tree_kib(p)).sum()
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    (h.value_at_quantile(q) as f64 / 1000.0).round()
}

impl Run {
    fn start(common: &Common) -> anyhow::Result<Self> {
        let sources = parse_sources(&common.sources)?;
        let split = split(common.conns, common.procs, common.url.len());
        let rss_before = rss_kib(&common.rss_of);
        let exe = std::env::current_exe()?;
        let (tx, reports) = mpsc::channel();
        let mut workers = Vec::new();
        let procs = split.len();
        for (index, &conns) in split.iter().enumerate() {
            let plan = WorkerPlan {
                index,
                url: common.url[index % common.url.len()].clone(),
                conns,
                connect_rate: common.connect_rate / procs as f64,
                sources: sources.clone(),
                subscribe: common
                    .pusher
                    .as_deref()
                    .filter(|channel| !channel.is_empty())
                    .map(pusher::subscribe_frame)
                    .or_else(|| common.subscribe.clone()),
                pusher: common.pusher.is_some(),
                await_ack: common.await_ack,
                connect_timeout: common.connect_timeout,
                max_pending: common.max_pending.div_ceil(procs),
            };
            let mut child = Process::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a worker process")?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            writeln!(stdin, "{}", serde_json::to_string(&plan)?)?;
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Report>(&line) {
                        Ok(report) => {
                            if tx.send((index, report)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            eprintln!("worker {index}: bad report {line:?}: {e}");
                            break;
                        }
                    }
                }
            });
            workers.push(Worker { child, stdin });
        }
        let mut run = Run {
            latest: vec![Counters::default(); workers.len()],
            workers,
            reports,
            conns: common.conns,
            connected: 0,
            failed: 0,
            connect_secs: 0.0,
            first_error: None,
            rss_of: common.rss_of.clone(),
            rss_before,
            rss_after: 0,
            started: Instant::now(),
            last_progress: Instant::now(),
            label: common.label.clone(),
        };
        let deadline = common.conns as f64 / common.connect_rate + common.connect_timeout + 30.0;
        let mut pending = run.workers.len();
        while pending > 0 {
            match run.next(deadline)? {
                (
                    _,
                    Report::Connected {
                        ok,
                        failed,
                        secs,
                        first_error,
                    },
                ) => {
                    run.connected += ok;
                    run.failed += failed;
                    run.connect_secs = run.connect_secs.max(secs);
                    if run.first_error.is_none() {
                        run.first_error = first_error;
                    }
                    pending -= 1;
                }
                (index, other) => bail!("worker {index}: unexpected {other:?} while connecting"),
            }
        }
        eprintln!(
            "connected {} of {} in {:.2}s ({:.0}/s), failed {}{}",
            run.connected,
            common.conns,
            run.connect_secs,
            run.connected as f64 / run.connect_secs.max(1e-9),
            run.failed,
            run.first_error
                .as_ref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
        if !common.rss_of.is_empty() {
            // Let the server settle (handshake buffers freed, lazily started tasks run).
            std::thread::sleep(Duration::from_secs(2));
            run.rss_after = rss_kib(&common.rss_of);
        }
        Ok(run)
    }

    /// The servers' resident memory now (KiB), if --rss-of was given.
    fn rss_now(&self) -> Option<u64> {
        (!self.rss_of.is_empty()).then(|| rss_kib(&self.rss_of))
    }

    /// The next report, printing a progress line at most once a second.
    fn next(&mut self, limit_secs: f64) -> anyhow::Result<(usize, Report)> {
        loop {
            let left = Duration::from_secs_f64(limit_secs).saturating_sub(self.started.elapsed());
            let (index, report) = self
                .reports
                .recv_timeout(left.max(Duration::from_millis(1)))
                .map_err(|_| anyhow!("no report from the workers within {limit_secs:.0}s"))?;
            if let Report::Progress(counters) = report {
                self.latest[index] = counters;
                if self.last_progress.elapsed() >= Duration::from_secs(1) {
                    self.last_progress = Instant::now();
                    let sum = self.latest.iter().fold(Counters::default(), |mut a, c| {
                        a.connected += c.connected;
                        a.failed += c.failed;
                        a.sent += c.sent;
                        a.received += c.received;
                        a.closed += c.closed;
                        a
                    });
                    eprintln!(
                        "[{:6.1}s] open {}/{} failed {} closed {} sent {} received {}",
                        self.started.elapsed().as_secs_f64(),
                        sum.connected,
                        self.conns,
                        sum.failed,
                        sum.closed,
                        sum.sent,
                        sum.received
                    );
                }
                continue;
            }
            return Ok((index, report));
        }
    }

    fn phase(&mut self, mode: Mode, secs: f64, grace: f64) -> anyhow::Result<Merged> {
        self.phase_inner(mode, secs, grace, || (Vec::new(), 0))
    }

    /// A listening phase during which `during` runs on this thread (the publisher).
    fn phase_with(
        &mut self,
        secs: f64,
        grace: f64,
        during: impl FnOnce() -> (Vec<(u32, u64)>, u64),
    ) -> anyhow::Result<Merged> {
        self.phase_inner(Mode::Hold, secs, grace, || {
            // Give the workers a moment to reset their counters before the first publish.
            std::thread::sleep(Duration::from_millis(100));
            during()
        })
    }

    fn phase_inner(
        &mut self,
        mode: Mode,
        secs: f64,
        grace: f64,
        during: impl FnOnce() -> (Vec<(u32, u64)>, u64),
    ) -> anyhow::Result<Merged> {
        let command = serde_json::to_string(&Command::Phase { mode, secs, grace })?;
        for worker in &mut self.workers {
            writeln!(worker.stdin, "{command}")?;
            worker.stdin.flush()?;
        }
        let (publishes, publish_errors) = during();
        let mut merged = Merged {
            counters: Counters::default(),
            closed: 0,
            timed: 0,
            hist: proto::histogram(),
            fanout: Default::default(),
            first_ns: 0,
            last_ns: 0,
            publishes,
            publish_errors,
        };
        let limit = self.started.elapsed().as_secs_f64()
            + secs
            + grace
            + proto::MAX_DRAIN.as_secs_f64()
            + 30.0;
        let mut pending = self.workers.len();
        let closed_before: u64 = self.latest.iter().map(|c| c.closed).sum();
        while pending > 0 {
            match self.next(limit)? {
                (_, Report::PhaseDone(result)) => {
                    merged.add(result)?;
                    pending -= 1;
                }
                (index, other) => bail!("worker {index}: unexpected {other:?} in a phase"),
            }
        }
        merged.closed = merged.counters.closed.saturating_sub(closed_before);
        Ok(merged)
    }

    fn summary(&self, scenario: &str) -> Value {
        let per_conn = if self.rss_after > 0 && self.connected > 0 {
            json!((self.rss_after as f64 - self.rss_before as f64) / self.connected as f64)
        } else {
            Value::Null
        };
        json!({
            "scenario": scenario,
            "label": self.label,
            "conns": self.conns,
            "connected": self.connected,
            "failed": self.failed,
            "first_error": self.first_error,
            "connect_secs": self.connect_secs,
            "connect_rate": self.connected as f64 / self.connect_secs.max(1e-9),
            "rss_before_kib": self.rss_before,
            "rss_after_kib": self.rss_after,
            "rss_per_conn_kib": per_conn,
            "workers": self.workers.len(),
        })
    }

    fn finish(mut self, common: &Common, result: Value) -> anyhow::Result<()> {
        let quit = serde_json::to_string(&Command::Quit)?;
        for worker in &mut self.workers {
            let _ = writeln!(worker.stdin, "{quit}");
            let _ = worker.stdin.flush();
        }
        for worker in &mut self.workers {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if worker.child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = worker.child.kill();
                    let _ = worker.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        println!("{result}");
        if let Some(path) = &common.json {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(file, "{result}")?;
        }
        Ok(())
    }
}

impl Merged {
    fn add(&mut self, result: PhaseResult) -> anyhow::Result<()> {
        let c = result.counters;
        self.counters.connected += c.connected;
        self.counters.failed += c.failed;
        self.counters.sent += c.sent;
        self.counters.received += c.received;
        self.counters.closed += c.closed;
        self.timed += result.timed;
        self.hist.add(proto::decode_histogram(&result.hist)?)?;
        for (seq, count, latest) in result.fanout {
            let entry = self.fanout.entry(seq).or_insert((0, 0));
            entry.0 += count;
            entry.1 = entry.1.max(latest);
        }
        if result.first_ns > 0 && (self.first_ns == 0 || result.first_ns < self.first_ns) {
            self.first_ns = result.first_ns;
        }
        self.last_ns = self.last_ns.max(result.last_ns);
        Ok(())
    }

    fn echo_summary(&self, target_rate: f64, secs: f64) -> Value {
        json!({
            "target_rate": target_rate.round(),
            "secs": secs,
            "sent": self.counters.sent,
            "answered": self.timed,
            "lost": self.counters.sent.saturating_sub(self.timed),
            "closed": self.closed,
            "msgs_per_s": (self.timed as f64 / secs).round(),
            "p50_us": us(&self.hist, 0.5),
            "p99_us": us(&self.hist, 0.99),
            "p999_us": us(&self.hist, 0.999),
            "max_us": us(&self.hist, 1.0),
        })
    }

    fn fanout_summary(&self, subscribers: u64) -> Value {
        let mut last: Vec<f64> = self
            .publishes
            .iter()
            .filter_map(|(seq, _)| self.fanout.get(seq).map(|(_, l)| *l as f64 / 1e6))
            .collect();
        last.sort_by(f64::total_cmp);
        let expected = self.publishes.len() as u64 * subscribers;
        // Only this phase's successful publishes: not a late receipt of an earlier phase, nor
        // one of a publish the publisher counted as failed.
        let delivered: u64 = self
            .publishes
            .iter()
            .filter_map(|(seq, _)| self.fanout.get(seq).map(|(n, _)| *n))
            .sum();
        let first_publish = self.publishes.iter().map(|(_, t)| *t).min().unwrap_or(0);
        let span = self.last_ns.saturating_sub(first_publish) as f64 / 1e9;
        json!({
            "publishes": self.publishes.len(),
            "publish_errors": self.publish_errors,
            "subscribers": subscribers,
            "delivered": delivered,
            "missing": expected.saturating_sub(delivered),
            "closed": self.closed,
            "last_delivery_ms_median": last.get(last.len() / 2),
            "last_delivery_ms_max": last.last(),
            "delivery_p50_us": us(&self.hist, 0.5),
            "delivery_p99_us": us(&self.hist, 0.99),
            "deliveries_per_s": if span > 0.0 { (delivered as f64 / span).round() } else { 0.0 },
            "span_s": span,
        })
    }
}

/// POSTs timed payloads; one keep-alive connection, on the coordinator's thread.
struct Publisher {
    agent: ureq::Agent,
    url: String,
    body: String,
    headers: Vec<(String, String)>,
    size: usize,
    pusher: Option<pusher::Auth>,
}

impl Publisher {
    fn new(
        url: String,
        body: String,
        headers: Vec<String>,
        size: usize,
        pusher: Option<pusher::Auth>,
    ) -> anyhow::Result<Self> {
        let headers = headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| anyhow!("--header is `Name: value`, not {h:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        if !body.contains("{payload}") {
            bail!("--publish-body must contain {{payload}}");
        }
        Ok(Self {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
            url,
            body,
            headers,
            size,
            pusher,
        })
    }

    /// The longest `paced(_, count, every)` publishes for.
    fn budget(every: Duration, count: u32) -> Duration {
        every * count + PUBLISH_GRACE
    }

    /// Publish `count` payloads numbered from `first`, `every` apart (or back to back if a
    /// publish takes longer). Returns (sequence, publish time) per publish and the failures.
    /// A server that answers publishes slowly does not stretch the phase: what is not published
    /// within the phase's time and a grace of [`PUBLISH_GRACE`] counts as failed.
    fn paced(&self, first: u32, count: u32, every: Duration) -> (Vec<(u32, u64)>, u64) {
        let start = Instant::now();
        let budget = Self::budget(every, count);
        let mut sent = Vec::new();
        let mut errors = 0;
        for k in 0..count {
            if start.elapsed() > budget {
                let left = u64::from(count - k);
                eprintln!("publishing stopped after {budget:?}: {left} publishes not made");
                errors += left;
                break;
            }
            let due = start + every * k;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let seq = first + k;
            let ts = proto::now_ns();
            let body = self
                .body
                .replace("{payload}", &proto::payload(ts, seq, self.size));
            // A publish still unanswered when the budget runs out counts as failed.
            let left = budget.saturating_sub(start.elapsed());
            let url = match &self.pusher {
                Some(auth) => auth.signed_url(&self.url, &body, proto::now_ns() / 1_000_000_000),
                None => self.url.clone(),
            };
            let mut request = self
                .agent
                .post(&url)
                .timeout(left.max(Duration::from_millis(1)));
            for (name, value) in &self.headers {
                request = request.set(name, value);
            }
            match request.send_string(&body) {
                Ok(_) => sent.push((seq, ts)),
                Err(e) => {
                    errors += 1;
                    if errors == 1 {
                        eprintln!("publish {seq}: {e}");
                    }
                }
            }
        }
        (sent, errors)
    }
}

/// How far past its schedule a publisher may run before it gives up on the rest.
const PUBLISH_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    #[test]
    fn one_url_keeps_the_old_split() {
        assert_eq!(super::split(19000, 0, 1), vec![6334, 6333, 6333]);
        assert_eq!(super::split(1000, 0, 1), vec![500, 500]);
        assert_eq!(super::split(1, 0, 1), vec![1]);
        assert_eq!(super::split(10, 4, 1), vec![3, 3, 2, 2]);
    }

    #[test]
    fn several_urls_get_equal_shares() {
        let per_url = |split: &[usize], urls: usize| -> Vec<usize> {
            (0..urls)
                .map(|u| split.iter().skip(u).step_by(urls).sum())
                .collect()
        };
        // 6 nodes x 19,000: 13 workers by default, rounded up to 18.
        let s = super::split(114_000, 0, 6);
        assert_eq!(s.len(), 18);
        assert_eq!(per_url(&s, 6), vec![19000; 6]);
        assert!(s.iter().all(|&c| c < 20000));
        // An explicit --procs is rounded up too; a remainder goes to the first URLs.
        let s = super::split(1001, 3, 2);
        assert_eq!(s.len(), 4);
        assert_eq!(per_url(&s, 2), vec![501, 500]);
        assert_eq!(s.iter().sum::<usize>(), 1001);
        // Fewer connections than URLs: every URL still has a worker.
        assert_eq!(super::split(2, 0, 3).len(), 3);
    }

    #[test]
    fn sources_are_a_range_of_loopback_addresses() {
        let s = super::parse_sources("2-4").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].to_string(), "127.0.0.2");
        assert!(super::parse_sources("5-2").is_err());
        assert!(super::parse_sources("0-2").is_err());
        assert!(super::parse_sources("7").is_err());
    }
}
