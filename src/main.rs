//! The `switchboard` binary: reads flags and the config, sets up logging, binds the listeners
//! and runs the hub until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
