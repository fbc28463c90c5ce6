//! The operator CLI: subcommands and an interactive shell that talk to a running hub's push
//! API (like RocketWS's `shell`). Each command becomes one push-API request; the reply's JSON is
//! printed, and failures say what went wrong (hub unreachable, wrong token, unknown id, ...).

use std::time::Duration;

use serde_json::{json, Value};

/// One operator command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Publish JSON to a channel.
    Publish { channel: String, data: Value },
    /// Send JSON to every connection.
    Broadcast { data: Value },
    /// Send a text frame to one connection.
    Send { id: String, text: String },
    /// Close one connection.
    Close {
        id: String,
        code: u16,
        reason: String,
    },
    /// List connections.
    Connections,
    /// List channels.
    Channels,
    /// Health and counters.
    Health,
    /// A RocketWS backend-port call (`emit`, `notify_all`, `total_subscribers`, ...).
    Rpc { method: String, params: Value },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No answer from the push API.
    #[error("cannot reach the push API at {url}: {reason} (is the hub running? see --push-url)")]
    Unreachable { url: String, reason: String },
    /// 401.
    #[error("the push API refused the token (401): pass --token or set SWITCHBOARD_TOKEN")]
    Unauthorized,
    /// Any other non-2xx status.
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    /// The command line could not be parsed.
    #[error("{0}")]
    Usage(String),
}

/// Where the push API is and how to authenticate.
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub base: String,
    /// Bearer token, if the hub wants one.
    pub token: Option<String>,
}

impl Command {
    fn request(&self) -> (&'static str, String, Option<Value>) {
        match self {
            Command::Publish { channel, data } => (
                "POST",
                "/api/publish".into(),
                Some(json!({"channel": channel, "data": data})),
            ),
            Command::Broadcast { data } => {
                ("POST", "/api/broadcast".into(), Some(json!({"data": data})))
            }
            Command::Send { id, text } => (
                "POST",
                format!("/api/connections/{id}/send"),
                Some(json!({"text": text})),
            ),
            Command::Close { id, code, reason } => (
                "POST",
                format!("/api/connections/{id}/close"),
                Some(json!({"code": code, "reason": reason})),
            ),
            Command::Connections => ("GET", "/api/connections".into(), None),
            Command::Channels => ("GET", "/api/channels".into(), None),
            Command::Health => ("GET", "/healthz".into(), None),
            Command::Rpc { method, params } => (
                "POST",
                "/".into(),
                Some(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})),
            ),
        }
    }

    /// Run the command against the push API and return the reply's JSON.
    pub async fn run(&self, target: &Target) -> Result<Value, CliError> {
        let (method, path, body) = self.request();
        let url = format!("{}{path}", target.base.trim_end_matches('/'));
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let mut request = client.request(
            awc::http::Method::from_bytes(method.as_bytes()).expect("valid method"),
            &url,
        );
        if let Some(token) = &target.token {
            request = request.bearer_auth(token);
        }
        let sent = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| CliError::Unreachable {
            url: target.base.clone(),
            reason: e.to_string(),
        })?;
        let bytes =
            response
                .body()
                .limit(64 * 1024 * 1024)
                .await
                .map_err(|e| CliError::Unreachable {
                    url: target.base.clone(),
                    reason: e.to_string(),
                })?;
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let status = response.status();
        if status.as_u16() == 401 {
            return Err(CliError::Unauthorized);
        }
        if !status.is_success() {
            let message = value["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            return Err(CliError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        if let Some(error) = value
            .get("error")
            .filter(|_| matches!(self, Command::Rpc { .. }))
        {
            return Err(CliError::Refused {
                status: 200,
                message: format!("JSON-RPC error {}: {}", error["code"], error["message"]),
            });
        }
        Ok(value)
    }
}

/// Parse JSON given on a command line. Text that is not JSON is an error, unless `as_string`
/// asks for it to be sent as a JSON string (a typo in an object must not go out as a string).
pub fn json_arg(text: &str, as_string: bool) -> Result<Value, CliError> {
    if as_string {
        return Ok(Value::String(text.to_owned()));
    }
    serde_json::from_str(text).map_err(|e| {
        CliError::Usage(format!(
            "`{text}` is not valid JSON ({e}); to send it as a string pass --string (shell: quote it, \"{text}\")"
        ))
    })
}

/// One line naming the hub that answers at `target`, from its `/healthz` (version, process id,
/// listener, uptime), so an operator sees which hub a command went to. An unreachable hub is
/// an error; a push API that does not identify itself is described as such.
pub async fn identify(target: &Target) -> Result<String, CliError> {
    let health = match Command::Health.run(target).await {
        Ok(health) => health,
        Err(e @ CliError::Unreachable { .. }) => return Err(e),
        Err(e) => {
            return Ok(format!(
                "the push API at {} did not identify itself (/healthz: {e})",
                target.base
            ))
        }
    };
    let hub = &health["hub"];
    let Some(pid) = hub["pid"].as_u64() else {
        return Ok(format!(
            "the server at {} answers /healthz without naming itself; is it a Switchboard hub?",
            target.base
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let up = now.saturating_sub(hub["started_at"].as_u64().unwrap_or(now));
    Ok(format!(
        "answered by switchboard {} (pid {pid}, push listener {}, up {}, {} connection(s))",
        hub["version"].as_str().unwrap_or("?"),
        hub["push"].as_str().unwrap_or("?"),
        uptime(up),
        health["connections"],
    ))
}

/// `3h02m`, `5m07s`, `42s`.
fn uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The shell's help text.
pub const SHELL_HELP: &str = "\
commands:
  publish CHANNEL JSON        publish JSON to a channel (every dialect's subscribers)
  broadcast JSON              send JSON to every connection
  send ID TEXT...             send a text frame to one connection
  close ID [CODE [REASON...]] close one connection (default code 1000)
  connections                 list connections
  channels                    list channels
  health                      counters
  emit CHANNEL JSON           RocketWS: emit to a channel
  notify_all JSON             RocketWS: notify every connection once
  total_subscribers [CHANNEL] RocketWS: count subscribers
  available_channels          RocketWS: list channel names
  ping                        RocketWS: ping
  help                        this text
  quit                        leave (also Ctrl-D)";

/// Parse one shell line. `Ok(None)` for an empty line.
pub fn parse_shell_line(line: &str) -> Result<Option<Command>, CliError> {
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let tail = tail.trim();
    let need = |ok: bool, usage: &str| {
        if ok {
            Ok(())
        } else {
            Err(CliError::Usage(format!("usage: {usage}")))
        }
    };
    let command = match word {
        "" => return Ok(None),
        "publish" => {
            need(
                !first.is_empty() && !tail.is_empty(),
                "publish CHANNEL JSON",
            )?;
            Command::Publish {
                channel: first.into(),
                data: json_arg(tail, false)?,
            }
        }
        "broadcast" => {
            need(!rest.is_empty(), "broadcast JSON")?;
            Command::Broadcast {
                data: json_arg(rest, false)?,
            }
        }
        "send" => {
            need(!first.is_empty() && !tail.is_empty(), "send ID TEXT")?;
            Command::Send {
                id: first.into(),
                text: tail.into(),
            }
        }
        "close" => {
            need(!first.is_empty(), "close ID [CODE [REASON]]")?;
            let (code, reason) = tail.split_once(char::is_whitespace).unwrap_or((tail, ""));
            let code = if code.is_empty() {
                1000
            } else {
                code.parse()
                    .map_err(|_| CliError::Usage(format!("close: `{code}` is not a close code")))?
            };
            Command::Close {
                id: first.into(),
                code,
                reason: reason.trim().into(),
            }
        }
        "connections" => Command::Connections,
        "channels" => Command::Channels,
        "health" => Command::Health,
        "emit" => {
            need(!first.is_empty() && !tail.is_empty(), "emit CHANNEL JSON")?;
            Command::Rpc {
                method: "emit".into(),
                params: json!({"channel": first, "data": json_arg(tail, false)?}),
            }
        }
        "notify_all" => {
            need(!rest.is_empty(), "notify_all JSON")?;
            Command::Rpc {
                method: "notify_all".into(),
                params: json!({"data": json_arg(rest, false)?}),
            }
        }
        "total_subscribers" => Command::Rpc {
            method: "total_subscribers".into(),
            params: json!({"channel": (!rest.is_empty()).then_some(rest)}),
        },
        "available_channels" | "ping" => Command::Rpc {
            method: word.into(),
            params: json!({}),
        },
        other => {
            return Err(CliError::Usage(format!(
                "unknown command `{other}`; type help"
            )))
        }
    };
    Ok(Some(command))
}

/// The interactive shell: read lines (with history), run them, print replies. Returns when
/// the input ends or on `quit`.
pub async fn shell(target: &Target) -> anyhow::Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    match identify(target).await {
        Ok(hub) => println!("switchboard shell on {}: {hub} (type help)", target.base),
        Err(e) => println!("switchboard shell on {}: {e} (type help)", target.base),
    }
    loop {
        let line = match editor.readline("switchboard> ") {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Eof)
            | Err(rustyline::error::ReadlineError::Interrupted) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let _ = editor.add_history_entry(line.as_str());
        match line.trim() {
            "quit" | "exit" => return Ok(()),
            "help" | "?" => {
                println!("{SHELL_HELP}");
                continue;
            }
            _ => {}
        }
        match parse_shell_line(&line) {
            Ok(None) => {}
            Ok(Some(command)) => match command.run(target).await {
                Ok(reply) => println!("{}", serde_json::to_string_pretty(&reply)?),
                Err(e) => println!("error: {e}"),
            },
            Err(e) => println!("error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_parse_into_commands() {
        assert_eq!(
            parse_shell_line("publish news {\"a\": 1}").unwrap(),
            Some(Command::Publish {
                channel: "news".into(),
                data: json!({"a": 1})
            })
        );
        assert_eq!(
            parse_shell_line("send abc hello there").unwrap(),
            Some(Command::Send {
                id: "abc".into(),
                text: "hello there".into()
            })
        );
        assert_eq!(
            parse_shell_line("close abc 4000 go away").unwrap(),
            Some(Command::Close {
                id: "abc".into(),
                code: 4000,
                reason: "go away".into()
            })
        );
        assert_eq!(
            parse_shell_line("total_subscribers").unwrap(),
            Some(Command::Rpc {
                method: "total_subscribers".into(),
                params: json!({"channel": null})
            })
        );
        assert_eq!(parse_shell_line("   ").unwrap(), None);
        assert!(parse_shell_line("publish onlychannel").is_err());
        assert!(parse_shell_line("close abc loud").is_err());
        assert!(parse_shell_line("launch").is_err());
        assert!(parse_shell_line("publish news hello").is_err());
        assert!(parse_shell_line("broadcast {\"a\": 1").is_err());
        assert_eq!(
            parse_shell_line("broadcast \"hello\"").unwrap(),
            Some(Command::Broadcast {
                data: json!("hello")
            })
        );
    }
}
