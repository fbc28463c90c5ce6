//! The mock application behind the relays: answers as fast as it can, in two formats.
//! - ws2api: `GET /{id}` -> "ok" (admit), `POST /{id}` -> the body back (relayed to the client),
//!   `DELETE /{id}` -> 200.
//! - Pushpin's WebSocket-over-HTTP (`Content-Type: application/websocket-events`): OPEN is
//!   accepted, TEXT/BINARY are echoed, PING answered, CLOSE returned; on a path starting with
//!   `/fanout` the OPEN answer also subscribes the connection to channel `bench` (GRIP).

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// Content type of WebSocket-over-HTTP requests and responses.
const EVENTS: &str = "application/websocket-events";

pub fn run(listen: &str, workers: usize) -> anyhow::Result<()> {
    let listen = listen.to_string();
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new()
                .route("/{tail:.*}", web::get().to(|| async { "ok" }))
                .route("/{tail:.*}", web::delete().to(HttpResponse::Ok))
                .route("/{tail:.*}", web::post().to(post))
        })
        .workers(workers)
        .backlog(4096)
        .max_connection_rate(4096)
        .bind(&listen)?
        .run()
        .await
    })?;
    Ok(())
}

async fn post(request: HttpRequest, body: web::Bytes) -> HttpResponse {
    let events = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(EVENTS));
    if !events {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("text/plain"));
        return HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, content_type))
            .body(body);
    }
    let fanout = request.path().starts_with("/fanout");
    match answer_events(&body, fanout) {
        Ok((answer, opened)) => {
            let mut response = HttpResponse::Ok();
            response.insert_header((CONTENT_TYPE, EVENTS));
            // GRIP only where the connection subscribes: with it on, plain TEXT answers
            // would need Pushpin's "m:" prefix to reach the client.
            if opened && fanout {
                response.insert_header(("Sec-WebSocket-Extensions", "grip"));
            }
            response.body(answer)
        }
        Err(e) => HttpResponse::BadRequest().body(e),
    }
}

/// Parse a WebSocket-over-HTTP body (`TYPE[ hexlen]\r\n[content\r\n]`...) and build the
/// answer. Returns the answer and whether it accepts an OPEN.
pub fn answer_events(mut body: &[u8], fanout: bool) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    let mut opened = false;
    while !body.is_empty() {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("event line without CRLF")?;
        let line = std::str::from_utf8(&body[..end]).map_err(|_| "event line is not UTF-8")?;
        body = &body[end + 2..];
        let (kind, content) = match line.split_once(' ') {
            Some((kind, len)) => {
                let len = usize::from_str_radix(len, 16).map_err(|_| "bad content length")?;
                if body.len() < len + 2 {
                    return Err("content shorter than its length".into());
                }
                let content = &body[..len];
                body = &body[len + 2..];
                (kind, Some(content))
            }
            None => (line, None),
        };
        match kind {
            "OPEN" => {
                opened = true;
                out.extend_from_slice(b"OPEN\r\n");
                if fanout {
                    event(
                        &mut out,
                        "TEXT",
                        br#"c:{"type":"subscribe","channel":"bench"}"#,
                    );
                }
            }
            "TEXT" | "BINARY" => event(&mut out, kind, content.unwrap_or_default()),
            "PING" => event(&mut out, "PONG", content.unwrap_or_default()),
            "CLOSE" => event(&mut out, "CLOSE", content.unwrap_or_default()),
            _ => {}
        }
    }
    Ok((out, opened))
}

fn event(out: &mut Vec<u8>, kind: &str, content: &[u8]) {
    out.extend_from_slice(format!("{kind} {:x}\r\n", content.len()).as_bytes());
    out.extend_from_slice(content);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::answer_events;

    #[test]
    fn open_text_and_close_are_answered() {
        let body = b"OPEN\r\nTEXT 1a\r\n#sb00000000000000010000000\r\nCLOSE 2\r\n\x03\xe8\r\n";
        let (answer, opened) = answer_events(body, false).unwrap();
        assert!(opened);
        assert_eq!(
            answer,
            b"OPEN\r\nTEXT 1a\r\n#sb00000000000000010000000\r\nCLOSE 2\r\n\x03\xe8\r\n".to_vec()
        );
    }

    #[test]
    fn fanout_paths_subscribe_on_open() {
        let (answer, _) = answer_events(b"OPEN\r\n", true).unwrap();
        let text = String::from_utf8(answer).unwrap();
        assert_eq!(
            text,
            "OPEN\r\nTEXT 28\r\nc:{\"type\":\"subscribe\",\"channel\":\"bench\"}\r\n"
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(answer_events(b"TEXT zz\r\nabc\r\n", false).is_err());
        assert!(answer_events(b"TEXT 10\r\nabc\r\n", false).is_err());
        assert!(answer_events(b"OPEN", false).is_err());
    }
}
