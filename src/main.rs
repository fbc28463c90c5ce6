//! The `switchboard` binary: reads flags and the config, sets up logging, binds the listeners
//! and runs the hub until SIGTERM or SIGINT. With a subcommand it is the operator CLI instead,
//! talking to a running hub's push API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::cli::{self, Command, Target};
use switchboard::config::{Address, Config};
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
    /// Operator commands: the push API's base URL (default: from the config's push.listen).
    #[arg(long, value_name = "URL", global = true)]
    push_url: Option<String>,
    /// Operator commands: the push API's bearer token (default: the config's push.token).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Without a subcommand the hub runs.
    #[command(subcommand)]
    command: Option<Operator>,
}

/// Operator commands against a running hub.
#[derive(Subcommand)]
enum Operator {
    /// Publish JSON (or a bare string) to a channel.
    Publish { channel: String, data: String },
    /// Send JSON (or a bare string) to every connection.
    Broadcast { data: String },
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

fn operate(cli: &Cli, operator: &Operator) -> ExitCode {
    let configured = || load(cli).ok();
    let base = cli.push_url.clone().unwrap_or_else(|| {
        let listen = configured().map_or_else(
            || "127.0.0.1:8081".parse().expect("literal"),
            |c| c.push.listen.0,
        );
        let host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            listen.ip().to_string()
        };
        format!("http://{host}:{}", listen.port())
    });
    let token = cli
        .token
        .clone()
        .or_else(|| configured().and_then(|c| c.push.token));
    let target = Target { base, token };
    let command = match operator {
        Operator::Publish { channel, data } => Command::Publish {
            channel: channel.clone(),
            data: cli::json_arg(data),
        },
        Operator::Broadcast { data } => Command::Broadcast {
            data: cli::json_arg(data),
        },
        Operator::Send { id, text } => Command::Send {
            id: id.clone(),
            text: text.clone(),
        },
        Operator::Close { id, code, reason } => Command::Close {
            id: id.clone(),
            code: *code,
            reason: reason.clone(),
        },
        Operator::Connections => Command::Connections,
        Operator::Channels => Command::Channels,
        Operator::Shell => {
            let result = actix_web::rt::System::new().block_on(cli::shell(&target));
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchboard: {e:#}");
                    ExitCode::from(EXIT_COMMAND_FAILED)
                }
            };
        }
    };
    match actix_web::rt::System::new().block_on(command.run(&target)) {
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

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let default_path = PathBuf::from("config.toml");
    let (mut config, origin) = match &cli.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None if default_path.exists() => (Config::load(&default_path)?, "config.toml".into()),
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
    config.validate(&origin)?;
    Ok(config)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = int.recv() => log::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(operator) = &cli.command {
        return operate(&cli, operator);
    }
    let config = match load(&cli) {
        Ok(config) => config,
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
    let routes: Vec<String> = config
        .routes
        .iter()
        .map(|r| format!("ws://{ws}{} ({})", r.path, r.dialect.name()))
        .collect();
    log::info!("routes: {}", routes.join(", "));
    if config.server.page {
        log::info!("open http://{ws}/ in a browser for the sample page");
    }
    let result = actix_web::rt::System::new().block_on(switchboard::run(
        config,
        listeners,
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
