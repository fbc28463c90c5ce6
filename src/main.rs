//! The `switchboard` binary: reads flags and the config, sets up logging, binds the listeners
//! and runs the hub until SIGTERM or SIGINT. With a subcommand it is the operator CLI instead,
//! talking to a running hub's push API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::cli::{self, Command, Target};
use switchboard::config::{Address, Config, PUSH_TOKEN_ENV};
use switchboard::Listeners;

/// Exit code for a configuration or usage error (the config is checked before any port is bound).
const EXIT_CONFIG: u8 = 2;

/// Switchboard: a WebSocket connection hub.
#[derive(Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    /// The config file. Without this flag, ./config.toml is used if present, else the defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override server.listen (the WebSocket routes and sample page), e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Override push.listen (the push API), e.g. 127.0.0.1:8081.
    #[arg(long, value_name = "ADDR")]
    push_listen: Option<String>,
    /// Override log.level (RUST_LOG, when set, wins over both).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Operator commands: the push API's base URL. Default: the SWITCHBOARD_PUSH_URL
    /// environment variable, else push.listen of the config file (--config or ./config.toml).
    #[arg(long, value_name = "URL", global = true)]
    push_url: Option<String>,
    /// Operator commands: the push API's bearer token (default: the config's push token,
    /// SWITCHBOARD_PUSH_TOKEN included).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Without a subcommand the hub runs.
    #[command(subcommand)]
    command: Option<Operator>,
}

/// Operator commands against a running hub.
#[derive(Subcommand)]
enum Operator {
    /// Publish JSON to a channel (with --string: the text as a JSON string).
    Publish {
        channel: String,
        data: String,
        /// Send DATA as a JSON string instead of parsing it as JSON.
        #[arg(long)]
        string: bool,
    },
    /// Send JSON to every connection (with --string: the text as a JSON string).
    Broadcast {
        data: String,
        /// Send DATA as a JSON string instead of parsing it as JSON.
        #[arg(long)]
        string: bool,
    },
    /// Send a text frame to one connection.
    Send { id: String, text: String },
    /// Close one connection.
    Close {
        id: String,
        #[arg(long, default_value_t = 1000)]
        code: u16,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List connections.
    Connections,
    /// List channels.
    Channels,
    /// Interactive shell with history (type help).
    Shell,
}

/// Exit code for an operator command that failed.
const EXIT_COMMAND_FAILED: u8 = 1;

/// The environment variable naming the push API's base URL for operator commands.
const PUSH_URL_ENV: &str = "SWITCHBOARD_PUSH_URL";

/// The push API's base URL for operator commands and where it came from, in words.
fn push_target_url(cli: &Cli, config: Option<&(Config, Option<String>)>) -> (String, String) {
    if let Some(url) = &cli.push_url {
        return (url.clone(), "--push-url".into());
    }
    if let Some(url) = std::env::var(PUSH_URL_ENV).ok().filter(|u| !u.is_empty()) {
        return (url, PUSH_URL_ENV.into());
    }
    let (listen, source) = match config {
        Some((config, _)) if cli.push_listen.is_some() => {
            (config.push.listen.0, "--push-listen".to_owned())
        }
        Some((config, Some(file))) => (config.push.listen.0, format!("push.listen in {file}")),
        _ => (
            "127.0.0.1:8081".parse().expect("literal"),
            "the built-in default: no --push-url, no config file".to_owned(),
        ),
    };
    let host = match listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    (format!("http://{host}:{}", listen.port()), source)
}

fn operate(cli: &Cli, operator: &Operator) -> ExitCode {
    let json = |data: &str, string: bool| cli::json_arg(data, string);
    let command = match operator {
        Operator::Publish {
            channel,
            data,
            string,
        } => json(data, *string).map(|data| Command::Publish {
            channel: channel.clone(),
            data,
        }),
        Operator::Broadcast { data, string } => {
            json(data, *string).map(|data| Command::Broadcast { data })
        }
        Operator::Send { id, text } => Ok(Command::Send {
            id: id.clone(),
            text: text.clone(),
        }),
        Operator::Close { id, code, reason } => Ok(Command::Close {
            id: id.clone(),
            code: *code,
            reason: reason.clone(),
        }),
        Operator::Connections => Ok(Command::Connections),
        Operator::Channels => Ok(Command::Channels),
        // The shell parses its own lines.
        Operator::Shell => Ok(Command::Health),
    };
    let command = match command {
        Ok(command) => command,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The config is read only when a flag does not already say what it would.
    let needs_config =
        cli.token.is_none() || (cli.push_url.is_none() && std::env::var_os(PUSH_URL_ENV).is_none());
    let config = match needs_config.then(|| load(cli)).transpose() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("switchboard: config error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (base, source) = push_target_url(cli, config.as_ref());
    eprintln!("switchboard: push API {base} (from {source})");
    let token = cli.token.clone().or_else(|| {
        config
            .as_ref()
            .and_then(|(c, _)| c.push.token().map(str::to_owned))
    });
    let target = Target { base, token };
    let system = actix_web::rt::System::new();
    if let Operator::Shell = operator {
        return match system.block_on(cli::shell(&target)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard: {e:#}");
                ExitCode::from(EXIT_COMMAND_FAILED)
            }
        };
    }
    let result = system.block_on(async {
        let hub = cli::identify(&target).await?;
        eprintln!("switchboard: {hub}");
        command.run(&target).await
    });
    match result {
        Ok(reply) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&reply).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(EXIT_COMMAND_FAILED)
        }
    }
}

/// The config of `--config`, or `./config.toml` if present, with the flags applied, the push
/// token's sources read, and validated; the built-in defaults when there is no file.
/// The file's full path is returned too (for messages), `None` without a file.
fn load(cli: &Cli) -> anyhow::Result<(Config, Option<String>)> {
    let default_path = PathBuf::from("config.toml");
    let path = match &cli.config {
        Some(path) => Some(path.clone()),
        None => default_path.exists().then_some(default_path),
    };
    let (mut config, origin) = match &path {
        Some(path) => {
            // The full path, so an operator sees which `./config.toml` was meant.
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            (Config::read(path)?, shown.display().to_string())
        }
        None => (Config::parse("", "defaults")?, "defaults".into()),
    };
    if let Some(listen) = &cli.listen {
        config.server.listen =
            Address::parse(listen).map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    }
    if let Some(listen) = &cli.push_listen {
        config.push.listen =
            Address::parse(listen).map_err(|e| anyhow::anyhow!("--push-listen: {e}"))?;
    }
    if let Some(level) = &cli.log_level {
        config.log.level = level.clone();
    }
    config.resolve_push_token(&origin, std::env::var(PUSH_TOKEN_ENV).ok())?;
    config.validate(&origin)?;
    Ok((config, path.is_some().then_some(origin)))
}

/// SIGTERM and SIGINT, installed before the server starts (a failure is an error exit, not
/// a panic).
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => log::info!("SIGTERM received"),
            _ = self.int.recv() => log::info!("SIGINT received"),
        }
    }
}

/// jemalloc gives freed memory back to the system (its background thread purges it), where
/// glibc's malloc kept a load's peak in its arenas after every client had gone.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Purge freed pages in the background, so memory goes back after a load has left.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("switchboard: jemalloc background thread not started: {e}");
    }
    if let Some(operator) = &cli.command {
        return operate(&cli, operator);
    }
    let config = match load(&cli) {
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("switchboard: config error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(config.log.level.as_str()),
    )
    .init();
    let listeners = match Listeners::bind(&config) {
        Ok(listeners) => listeners,
        Err(e) => {
            log::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let (ws, push) = match (listeners.websocket_addr(), listeners.push_addr()) {
        (Ok(ws), Ok(push)) => (ws, push),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("listening websocket={ws} push={push}");
    if let Some(metrics) = listeners.metrics_addr() {
        log::info!("listening metrics={metrics} (GET /metrics only, no token)");
    }
    log::info!("dashboard: http://{push}/dashboard, metrics: http://{push}/metrics");
    let routes: Vec<String> = config
        .routes
        .iter()
        .map(|r| format!("ws://{ws}{} ({})", r.path, r.dialect.name()))
        .collect();
    log::info!("routes: {}", routes.join(", "));
    if config.server.page {
        log::info!("open http://{ws}/ in a browser for the sample page");
    }
    let result = actix_web::rt::System::new().block_on(async move {
        let signals = ShutdownSignals::install()
            .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM/SIGINT handlers: {e}"))?;
        switchboard::run(config, listeners, signals.recv()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
