//! The local relay: a loopback HTTP reverse proxy, run inside `conclave up` (and `conclave
//! claude`), through which a host's agents reach a remote team server.
//!
//! Claude Code's MCP configuration and its HTTP hooks take one URL each, and a live session
//! keeps the URL it started with. When `--server` names several servers (`URL1,URL2`), or one
//! that speaks HTTPS, the agents are pointed at this relay instead (`http://127.0.0.1:PORT`): it
//! forwards every request, unchanged but for its hop-by-hop headers and `Host`, to the server its
//! [`Client`] currently uses, and streams the answer back (event streams included). When that
//! server cannot be connected to, the request never left, so the relay sends it to the next
//! URL, and keeps trying the list for up to [`PATIENCE`] (a server being restarted) before it
//! answers 502. The agents' sessions live on; their tokens are checked by whichever server
//! answers, since every server of a team serves the same store.
//!
//! A request whose connection broke after it was sent is not repeated (it may have been
//! applied): the relay answers 502 and the client's own retry, with its idempotency key where
//! it has one, decides.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use conclave_client::Client;
use futures::TryStreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderName};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a request waits for some server of the list to accept a connection (a server
/// being restarted) before the relay answers 502. Below Claude Code's 10 s hook timeout.
pub const PATIENCE: Duration = Duration::from_secs(8);
/// The pause after every URL of the list refused a connection, before the next round.
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// The largest request body relayed (the server's own limit is 256 KiB).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

type RelayBody = BoxBody<Bytes, std::io::Error>;

/// A running relay; it stops when dropped.
#[derive(Debug)]
pub struct Relay {
    url: String,
    stop: CancellationToken,
}

impl Relay {
    /// Binds a free loopback port and relays to `upstream`'s servers until dropped.
    pub async fn start(upstream: Client) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot bind the relay to 127.0.0.1")?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, upstream, stop.clone()));
        Ok(Relay { url, stop })
    }

    /// `http://127.0.0.1:PORT`, what agents are given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(listener: TcpListener, upstream: Client, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "relay: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let upstream = upstream.clone();
                async move { Ok::<_, Infallible>(forward(&upstream, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!(%error, "relay: connection closed with an error");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Headers that belong to one connection, not to the request or answer relayed.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Relays one request; every failure is an answer (502 with a JSON error body).
async fn forward(upstream: &Client, request: Request<Incoming>) -> Response<RelayBody> {
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return error_answer(
                StatusCode::BAD_REQUEST,
                &format!("the relay could not read the request: {error}"),
            );
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_string();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut refused_in_round = 0;
    loop {
        let base = upstream.base_url().to_string();
        let mut outgoing = upstream
            .http()
            .request(parts.method.clone(), format!("{base}{path}"));
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                outgoing = outgoing.header(name, value);
            }
        }
        match outgoing.body(body.clone()).send().await {
            Ok(answer) => return relay_answer(answer),
            Err(error) if error.is_connect() => {
                refused_in_round += 1;
                upstream.fail_over(&base);
                if tokio::time::Instant::now() >= deadline {
                    return error_answer(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "no conclave server of {} accepts connections",
                            upstream.urls().join(", ")
                        ),
                    );
                }
                if refused_in_round >= upstream.urls().len() {
                    refused_in_round = 0;
                    tokio::time::sleep(ROUND_PAUSE).await;
                }
            }
            Err(error) => {
                return error_answer(
                    StatusCode::BAD_GATEWAY,
                    &format!("the conclave server at {base} failed: {error}"),
                );
            }
        }
    }
}

/// The server's answer, streamed as it arrives.
fn relay_answer(answer: reqwest::Response) -> Response<RelayBody> {
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    let frames = answer
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(std::io::Error::other);
    response
        .body(StreamBody::new(frames).boxed())
        .unwrap_or_else(|error| {
            error_answer(
                StatusCode::BAD_GATEWAY,
                &format!("the relay cannot pass the answer on: {error}"),
            )
        })
}

fn error_answer(status: StatusCode, message: &str) -> Response<RelayBody> {
    let body = serde_json::json!({"error": {"code": "relay", "message": message}}).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with `body`, in two chunks, and hands over the
    /// request head it read.
    async fn upstream(body: &'static str) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (heads, received) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 8192];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                let _ = heads
                    .send(String::from_utf8_lossy(&buffer[..n]).into_owned())
                    .await;
                let (first, second) = body.split_at(body.len() / 2);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\
                     connection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
                    first.len(),
                    second.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (url, received)
    }

    #[tokio::test]
    async fn requests_go_to_the_next_server_when_one_refuses_and_answers_stream_back() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let (live, mut heads) = upstream(r#"{"relayed":true}"#).await;
        let client =
            Client::with_ca(format!("{dead},{live}"), "admin".into(), None, None).expect("client");
        let relay = Relay::start(client.clone()).await.expect("relay");

        let answer = reqwest::Client::new()
            .post(format!("{}/hooks/stop?x=1", relay.url()))
            .header("Authorization", "Bearer agent-token")
            .header("X-Conclave-Root", "/clone")
            .body("{}")
            .send()
            .await
            .expect("the relay answers");
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.expect("body"), r#"{"relayed":true}"#);
        let head = heads
            .recv()
            .await
            .expect("a request reached the live server");
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("POST /hooks/stop?x=1 HTTP/1.1"), "{head}");
        // The request's own credentials, not the relay's client's; Host names the server.
        assert!(
            lower.contains("authorization: bearer agent-token"),
            "{head}"
        );
        assert!(lower.contains("x-conclave-root: /clone"), "{head}");
        let host = live.trim_start_matches("http://");
        assert!(lower.contains(&format!("host: {host}")), "{head}");
        assert_eq!(
            client.base_url(),
            live,
            "it stays with the server that answered"
        );
    }
}
