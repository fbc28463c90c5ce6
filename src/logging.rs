//! The log line formats `env_logger` writes: `text` for people (`[time LEVEL target] id=... message`)
//! and `json` for log shippers (one object per line: `timestamp`, `level`, `target`, `message`,
//! and each key-value of the record, such as the connection `id`, as a field of its own).
//! Per-connection lines carry the id as a `log` key-value (`log::info!(id:% = id; "...")`),
//! never inside the message text, so both formats can place it.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

use crate::config::LogFormat;

/// Install the logger: `level` is the filter when `RUST_LOG` is not set.
pub fn init(level: &str, format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    match format {
        LogFormat::Text => builder.format(|buf, record| {
            let style = buf.default_level_style(record.level());
            write!(
                buf,
                "[{} {style}{:<5}{style:#} {}] ",
                buf.timestamp(),
                record.level(),
                record.target()
            )?;
            let mut fields = Fields::default();
            // A source that fails to list its pairs only loses them, not the line.
            let _ = record.key_values().visit(&mut fields);
            for (key, value) in &fields.0 {
                write!(buf, "{key}={} ", value.as_str().unwrap_or_default())?;
            }
            writeln!(buf, "{}", record.args())
        }),
        LogFormat::Json => builder.format(|buf, record| {
            let mut fields = Fields::default();
            let _ = record.key_values().visit(&mut fields);
            let mut line = fields.0;
            line.insert(
                "timestamp".into(),
                buf.timestamp_micros().to_string().into(),
            );
            line.insert("level".into(), record.level().as_str().into());
            line.insert("target".into(), record.target().into());
            line.insert("message".into(), record.args().to_string().into());
            writeln!(buf, "{}", Json::Object(line))
        }),
    };
    builder.init();
}

/// The key-values of one record, each rendered as text.
#[derive(Default)]
struct Fields(Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.insert(key.to_string(), value.to_string().into());
        Ok(())
    }
}
