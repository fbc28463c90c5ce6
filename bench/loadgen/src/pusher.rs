//! The Pusher protocol, as far as the benchmark needs it (the sockudo peer): the subscribe
//! frame, the frames a client waits for or answers, and the signed HTTP events API.
//!
//! A publish is `POST /apps/{app_id}/events?auth_key=..&auth_timestamp=..&auth_version=1.0&
//! body_md5=..&auth_signature=..`, the signature being the hex HMAC-SHA256, keyed with the app's
//! secret, of `POST\n{path}\n{the other parameters, sorted, as key=value joined by &}`.

use anyhow::{anyhow, bail};
use hmac::{Hmac, Mac as _};
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// The frame the server sends first; a client subscribes only after it.
pub const ESTABLISHED: &str = "pusher:connection_established";
/// The server's answer to a subscribe.
pub const SUBSCRIBED: &str = "pusher_internal:subscription_succeeded";
/// The server's keep-alive question, and the client's answer.
pub const PING: &str = "\"pusher:ping\"";
pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// `{"event":"pusher:subscribe","data":{"channel":CHANNEL}}`.
pub fn subscribe_frame(channel: &str) -> String {
    let channel = serde_json::Value::from(channel);
    format!(r#"{{"event":"pusher:subscribe","data":{{"channel":{channel}}}}}"#)
}

/// An app's key and secret, for signing requests to its HTTP API.
#[derive(Clone, Debug)]
pub struct Auth {
    key: String,
    secret: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Auth {
    /// `KEY:SECRET`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (key, secret) = text
            .split_once(':')
            .ok_or_else(|| anyhow!("--pusher-auth is KEY:SECRET"))?;
        if key.is_empty() || secret.is_empty() {
            bail!("--pusher-auth: empty key or secret");
        }
        Ok(Self {
            key: key.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The sorted query string without the signature, and the signature.
    fn sign(&self, path: &str, body: &str, timestamp: u64) -> (String, String) {
        let md5 = hex(&Md5::digest(body.as_bytes()));
        // Already in key order: auth_key < auth_timestamp < auth_version < body_md5.
        let query = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={md5}",
            self.key
        );
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).expect("HMAC takes any key");
        mac.update(format!("POST\n{path}\n{query}").as_bytes());
        (query, hex(&mac.finalize().into_bytes()))
    }

    /// `url` (`http://host:port/apps/{id}/events`) with the signed query for `body`.
    pub fn signed_url(&self, url: &str, body: &str, timestamp: u64) -> String {
        let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
        let path = url[after_scheme..]
            .find('/')
            .map(|i| &url[after_scheme + i..])
            .unwrap_or("/");
        let (query, signature) = self.sign(path, body, timestamp);
        format!("{url}?{query}&auth_signature={signature}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_pusher_documentation_example() {
        let auth = Auth::parse("278d425bdf160c739803:7ad3773142a6692b25b8").unwrap();
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let (query, signature) = auth.sign("/apps/3/events", body, 1353088179);
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            signature,
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        let url = auth.signed_url("http://127.0.0.1:6001/apps/3/events", body, 1353088179);
        assert!(url.starts_with("http://127.0.0.1:6001/apps/3/events?auth_key="));
        assert!(url.ends_with(&format!("&auth_signature={signature}")));
    }

    #[test]
    fn subscribe_frame_is_pusher_json() {
        assert_eq!(
            subscribe_frame("bench"),
            r#"{"event":"pusher:subscribe","data":{"channel":"bench"}}"#
        );
        assert!(Auth::parse("nokey").is_err());
    }
}
