//! `conclave hook <event>`: the command hook Claude Code runs on its hook events.
//!
//! It reads the hook's JSON on stdin, posts it to `$CONCLAVE_URL/hooks/<event>` with the agent's
//! token (`CONCLAVE_TOKEN`, `CONCLAVE_AGENT`), and prints the server's JSON answer on stdout (the
//! server speaks Claude Code's hook output format, see `conclave_server::hooks`). It always exits
//! 0: a hook that fails must never break the agent's session.
//!
//! When the server cannot be reached or answers with an error, the hook fails open: it prints
//! `{}` (the client goes ahead) and one warning line on stderr. In strict mode (`--strict` or
//! `CONCLAVE_STRICT=1`) a `pre-tool-use` on a file-writing tool fails closed instead: it denies
//! the edit with a reason saying that the server cannot be reached.
//!
//! This runs once per tool call, so it is built to start and finish fast: no async runtime, a
//! minimal blocking HTTP/1.1 client over one loopback TCP connection, a 1 s connect timeout and a
//! 5 s deadline for the whole exchange (10 s for `session-start`, which reads more).
//!
//! `CONCLAVE_URL` may list several servers (`URL1,URL2`): the hook posts to the first that
//! accepts a connection. An `https://` URL is spoken over TLS (rustls), trusting the built-in web
//! roots and the PEM CA file `CONCLAVE_CA_CERT` names. Agents that `conclave up` or `conclave
//! claude` start reach remote servers through their loopback relay, in plain HTTP.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use conclave_core::model::FILE_WRITING_TOOLS;
use conclave_core::project::Project;
use serde_json::{Value, json};

use crate::context::{ENV_AGENT, ENV_TOKEN, ENV_URL};

/// The events `conclave hook` accepts, spelled as in the server's `/hooks/<event>` paths.
pub const EVENTS: [&str; 7] = [
    "pre-tool-use",
    "post-tool-use",
    "session-start",
    "user-prompt-submit",
    "stop",
    "pre-compact",
    "session-end",
];

/// Set to `1` (or `true`) to make the hook fail closed, as `--strict` does.
pub const ENV_STRICT: &str = "CONCLAVE_STRICT";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(5);
const SESSION_START_DEADLINE: Duration = Duration::from_secs(10);
/// The largest answer read from the server (its hook answers are a few kilobytes).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Runs the hook for `event` (one of [`EVENTS`]) and writes its answer. Never fails: every
/// outcome is an answer on stdout (and maybe a warning on stderr), so the caller exits 0.
pub fn run(event: &str, strict_flag: bool) {
    let strict = strict_flag || env_flag(ENV_STRICT);
    let mut input = Vec::new();
    let outcome = match io::stdin().lock().read_to_end(&mut input) {
        Ok(_) => forward(event, &input),
        Err(error) => Err(Failure {
            url: None,
            detail: format!("cannot read the hook input on stdin: {error}"),
        }),
    };
    let answer = answer_for(event, strict, &input, outcome);
    if let Some(warning) = &answer.warning {
        eprintln!("conclave hook {event}: {warning}");
    }
    let mut stdout = io::stdout().lock();
    // A client that stopped reading cannot be told anything anyway.
    let _ = stdout.write_all(answer.stdout.as_bytes());
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// Why the server's answer could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The server URL tried, when one was known.
    pub url: Option<String>,
    pub detail: String,
}

/// What the hook prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The JSON for Claude Code, on stdout.
    pub stdout: String,
    /// One line for stderr, when something went wrong.
    pub warning: Option<String>,
}

/// Decides what to print, given the server's answer (the body of a 2xx) or why there is none.
pub fn answer_for(
    event: &str,
    strict: bool,
    input: &[u8],
    outcome: Result<String, Failure>,
) -> Answer {
    let failure = match outcome {
        Ok(body) => {
            return Answer {
                stdout: body,
                warning: None,
            };
        }
        Err(failure) => failure,
    };
    let url = failure.url.as_deref().unwrap_or("(unknown)");
    if strict && event == "pre-tool-use" && writes_a_file(input) {
        let reason = format!(
            "Conclave server at {url} cannot be reached: {}; edits are blocked in strict mode. \
             Ask the person running the team to start it (`conclave serve`), then try again.",
            failure.detail
        );
        let decision = json!({
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": reason,
            }
        });
        return Answer {
            stdout: decision.to_string(),
            warning: Some(format!(
                "Conclave server at {url} cannot be reached ({}); denied the edit (strict mode)",
                failure.detail
            )),
        };
    }
    Answer {
        stdout: "{}".to_string(),
        warning: Some(format!(
            "Conclave server at {url} cannot be reached ({}); going ahead without it",
            failure.detail
        )),
    }
}

/// Whether the hook input is a call of a file-writing tool (`Edit`, `Write`, ...).
fn writes_a_file(input: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(input) else {
        // Unreadable input in strict mode: it might be an edit, so treat it as one.
        return true;
    };
    value
        .get("tool_name")
        .and_then(Value::as_str)
        .is_some_and(|tool| FILE_WRITING_TOOLS.contains(&tool))
}

/// Posts the hook input to the server and returns its JSON answer.
fn forward(event: &str, input: &[u8]) -> Result<String, Failure> {
    let url = server_url().ok_or_else(|| Failure {
        url: None,
        detail: format!(
            "{ENV_URL} is not set and no running server was found for this folder \
             (`conclave claude` sets it)"
        ),
    })?;
    let fail = |detail: String| Failure {
        url: Some(url.clone()),
        detail,
    };
    let token = env_value(ENV_TOKEN).ok_or_else(|| {
        fail(format!(
            "{ENV_TOKEN} is not set (`conclave claude` sets it)"
        ))
    })?;
    let agent = env_value(ENV_AGENT);
    let endpoints = url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(Endpoint::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(&fail)?;
    let deadline = Instant::now()
        + if event == "session-start" {
            SESSION_START_DEADLINE
        } else {
            DEADLINE
        };
    let mut headers = vec![("Authorization", format!("Bearer {token}"))];
    if let Some(agent) = agent {
        headers.push(("X-Conclave-Agent", agent));
    }
    // This clone's root: on another host than the server's, paths are relative to it.
    if let Some(root) = std::env::current_dir()
        .ok()
        .and_then(|cwd| Project::find(&cwd))
        .and_then(|project| project.root().to_str().map(str::to_string))
        .filter(|root| root.chars().all(|c| c.is_ascii_graphic() || c == ' '))
    {
        headers.push(("X-Conclave-Root", root));
    }
    let (endpoint, connection) = connect_first(&endpoints, deadline).map_err(&fail)?;
    let path = format!("{}/hooks/{event}", endpoint.base_path);
    let response = endpoint
        .post_json_over(connection, &path, &headers, input, deadline)
        .map_err(&fail)?;
    let body = String::from_utf8_lossy(&response.body).trim().to_string();
    if !(200..300).contains(&response.status) {
        return Err(fail(format!(
            "it answered {}: {}",
            response.status,
            error_message(&body)
        )));
    }
    if body.is_empty() {
        return Ok("{}".to_string());
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(_)) => Ok(body),
        _ => Err(fail(format!(
            "it answered something that is not a JSON object: {}",
            excerpt(&body)
        ))),
    }
}

/// `CONCLAVE_URL`, else the URL the project's running server wrote in `.conclave/server.json`.
fn server_url() -> Option<String> {
    if let Some(url) = env_value(ENV_URL) {
        return Some(url.trim_end_matches('/').to_string());
    }
    let cwd = std::env::current_dir().ok()?;
    let info = Project::find(&cwd)?.read_server_info()?;
    Some(info.url.trim_end_matches('/').to_string())
}

/// The message of the server's `{"error":{"message":..}}` body, or an excerpt of the body.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| excerpt(body))
}

fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

fn env_flag(name: &str) -> bool {
    env_value(name).is_some_and(|value| matches!(value.as_str(), "1" | "true" | "yes"))
}

// The HTTP/1.1 exchange below is written by hand on purpose: the hook runs once per tool call,
// and a process that starts no async runtime and links no HTTP client stack (reqwest, hyper)
// finishes a loopback round trip in well under 10 ms. It only has to speak to our own server:
// one POST, `Connection: close`, an answer framed by Content-Length or chunked encoding. The
// tests at the end of this file run it against a real HTTP server (axum) and against peers
// that close early, stall or are not there.

/// Where an `http://host:port/base` (or `https://`) URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `https`: TLS over the connection.
    tls: bool,
    /// The host as given (brackets stripped from an IPv6 literal).
    host: String,
    port: u16,
    /// The `Host` header: the URL's authority.
    authority: String,
    /// The URL's path without a trailing slash (usually empty).
    base_path: String,
}

/// A server's answer.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "{url}: the hook speaks http or https to the server, not {scheme}"
                ));
            }
            None => return Err(format!("{url} is not a URL like http://127.0.0.1:7420")),
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("{url}: {port:?} is not a port number"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// One `POST` with a JSON body over a fresh connection, finished before `deadline`.
    #[cfg(test)]
    fn post_json(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        deadline: Instant,
    ) -> Result<Response, String> {
        let stream = self.connect(deadline)?;
        self.post_json_over(stream, path, headers, body, deadline)
    }

    /// One `POST` with a JSON body over `stream` (a fresh connection to this endpoint),
    /// finished before `deadline`.
    fn post_json_over(
        &self,
        stream: TcpStream,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        deadline: Instant,
    ) -> Result<Response, String> {
        let mut request = String::with_capacity(256);
        let _ = write!(
            request,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\nUser-Agent: conclave-hook/{}\r\n",
            self.authority,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in headers {
            if value.chars().any(char::is_control) {
                return Err(format!("the {name} header would carry a control character"));
            }
            let _ = write!(request, "{name}: {value}\r\n");
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);

        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(|error| error.to_string())?;
        // The same socket, to bound each read by what is left of the deadline.
        let socket = stream
            .try_clone()
            .map_err(|error| describe_io("setting up the connection", &error))?;
        let mut connection: Box<dyn ReadWrite> = if self.tls {
            Box::new(tls_stream(&self.host, stream)?)
        } else {
            Box::new(stream)
        };
        connection
            .write_all(&bytes)
            .map_err(|error| describe_io("sending the request", &error))?;
        connection
            .flush()
            .map_err(|error| describe_io("sending the request", &error))?;
        read_response(&mut connection, &socket, deadline)
    }

    fn connect(&self, deadline: Instant) -> Result<TcpStream, String> {
        let addresses = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|error| format!("cannot resolve {}: {error}", self.host))?;
        let mut last_error = format!("{} resolves to no address", self.host);
        for address in addresses {
            let timeout = remaining(deadline)?.min(CONNECT_TIMEOUT);
            match TcpStream::connect_timeout(&address, timeout) {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = describe_io("connecting", &error),
            }
        }
        Err(last_error)
    }
}

/// A connection the hook speaks over: plain TCP or TLS on it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The first endpoint of `endpoints` that accepts a connection, with that connection.
fn connect_first(
    endpoints: &[Endpoint],
    deadline: Instant,
) -> Result<(&Endpoint, TcpStream), String> {
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match endpoint.connect(deadline) {
            Ok(stream) => return Ok((endpoint, stream)),
            Err(error) => failures.push(format!("{}: {error}", endpoint.authority)),
        }
    }
    Err(failures.join("; "))
}

/// A TLS client connection to `host` over `stream`: the built-in web roots and the CA file
/// `CONCLAVE_CA_CERT` names are trusted.
fn tls_stream(
    host: &str,
    stream: TcpStream,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = env_value(conclave_client::ENV_CA_CERT) {
        let certificates = CertificateDer::pem_file_iter(&path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| format!("cannot read the CA certificate {path}: {error}"))?;
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| format!("the CA certificate {path}: {error}"))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|error| format!("{host} is not a TLS server name: {error}"))?;
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|error| format!("TLS: {error}"))?;
    Ok(rustls::StreamOwned::new(connection, stream))
}

/// Reads the whole answer: the request said `Connection: close`, so the answer ends where the
/// connection does; `Content-Length` (or the chunked framing) tells a whole answer from one cut
/// short. The socket's read timeout (set to the deadline) bounds each read.
fn read_response(
    stream: &mut dyn ReadWrite,
    socket: &TcpStream,
    deadline: Instant,
) -> Result<Response, String> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        socket
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|error| error.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            // A TLS peer that closes without close_notify: the framing below tells whether
            // the answer is whole.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(describe_io("reading the answer", &error)),
        }
        if buffer.len() > MAX_RESPONSE_BYTES {
            return Err(format!("its answer is over {MAX_RESPONSE_BYTES} bytes"));
        }
    }
    let end = find(&buffer, b"\r\n\r\n")
        .map(|position| position + 4)
        .ok_or_else(|| "the connection closed before an answer".to_string())?;
    let (head, raw_body) = buffer.split_at(end);
    let status = String::from_utf8_lossy(head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {}",
                excerpt(&String::from_utf8_lossy(head))
            )
        })?;
    let chunked = header_value(head, "transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let content_length =
        header_value(head, "content-length").and_then(|value| value.parse::<usize>().ok());
    let body = match (chunked, content_length) {
        (true, _) => dechunk(raw_body)?,
        (false, Some(length)) => raw_body
            .get(..length)
            .ok_or("the connection closed in the middle of the answer")?
            .to_vec(),
        (false, None) => raw_body.to_vec(),
    };
    Ok(Response { status, body })
}

/// The value of a header in a response head (case-insensitive name).
fn header_value(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head)
        .lines()
        .skip(1)
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").ok_or("a chunked answer was cut short")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if raw.len() < size {
            return Err("a chunked answer was cut short".to_string());
        }
        body.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("no answer in time".to_string())
    } else {
        Ok(left)
    }
}

fn describe_io(what: &str, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("timed out {what}"),
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        _ => format!("{what}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        let cases = [
            ("http://127.0.0.1:7420", ("127.0.0.1", 7420, "")),
            ("http://localhost:80/base/", ("localhost", 80, "/base")),
            ("http://[::1]:9000", ("::1", 9000, "")),
            ("http://example.com", ("example.com", 80, "")),
        ];
        for (url, (host, port, path)) in cases {
            let endpoint = Endpoint::parse(url).expect(url);
            assert_eq!(
                (
                    endpoint.host.as_str(),
                    endpoint.port,
                    endpoint.base_path.as_str()
                ),
                (host, port, path),
                "{url}"
            );
        }
        assert!(Endpoint::parse("https://build-1").expect("https").tls);
        assert_eq!(Endpoint::parse("https://build-1").expect("https").port, 443);
        for bad in ["ftp://x:1", "127.0.0.1:7420", "http://:80", "http://h:x"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk(b"3\r\n{\"a\r\n2;x=1\r\n\":\r\n2\r\n1}\r\n0\r\n\r\n").as_deref(),
            Ok(&b"{\"a\":1}"[..])
        );
        assert!(dechunk(b"5\r\nab").is_err());
    }

    /// One helper per case: (event, strict, tool) with the server down → (decision?, stdout).
    fn down(event: &str, strict: bool, tool: &str) -> Answer {
        let input = json!({"tool_name": tool, "tool_input": {"file_path": "a.rs"}}).to_string();
        let failure = Failure {
            url: Some("http://127.0.0.1:9".to_string()),
            detail: "connection refused".to_string(),
        };
        answer_for(event, strict, input.as_bytes(), Err(failure))
    }

    #[test]
    fn an_unreachable_server_fails_open_unless_strict_on_an_edit() {
        let open = [
            ("pre-tool-use", false, "Write"),
            ("pre-tool-use", true, "Bash"),
            ("post-tool-use", true, "Write"),
            ("session-start", true, ""),
        ];
        for (event, strict, tool) in open {
            let answer = down(event, strict, tool);
            assert_eq!(answer.stdout, "{}", "{event} {strict} {tool}");
            assert!(
                answer
                    .warning
                    .is_some_and(|w| w.contains("cannot be reached")),
                "{event}"
            );
        }
        for tool in FILE_WRITING_TOOLS {
            let answer = down("pre-tool-use", true, tool);
            let value: Value = serde_json::from_str(&answer.stdout).expect("json");
            assert_eq!(
                value["hookSpecificOutput"]["permissionDecision"], "deny",
                "{tool}"
            );
            let reason = value["hookSpecificOutput"]["permissionDecisionReason"]
                .as_str()
                .unwrap_or_default();
            assert!(
                reason.starts_with("Conclave server at http://127.0.0.1:9 cannot be reached: connection refused; edits are blocked in strict mode"),
                "{reason}"
            );
        }
    }

    #[test]
    fn the_server_answer_is_passed_through() {
        let answer = answer_for("stop", true, b"{}", Ok("{\"decision\":\"block\"}".into()));
        assert_eq!(
            answer,
            Answer {
                stdout: "{\"decision\":\"block\"}".into(),
                warning: None
            }
        );
    }

    /// A real HTTP server (axum on 127.0.0.1:0, on a runtime in a thread of its own, as the
    /// hook itself has none); returns its URL.
    fn serve(router: axum::Router) -> String {
        let (address_sender, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                address_sender
                    .send(listener.local_addr().expect("address"))
                    .expect("send the address");
                axum::serve(listener, router).await.expect("serve");
            });
        });
        format!("http://{}", address.recv().expect("the server's address"))
    }

    /// A peer on 127.0.0.1:0 that reads the whole request, writes `replies` one by one (a pause
    /// between them, so that they arrive as separate reads), waits `linger`, then closes.
    fn raw_peer(replies: Vec<&'static [u8]>, linger: Duration) -> Endpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            // Read the request to its end: closing with unread bytes would reset the connection
            // and lose what was written.
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut chunk) {
                request.extend_from_slice(&chunk[..n]);
                if let Some(end) = find(&request, b"\r\n\r\n") {
                    let length = header_value(&request[..end], "content-length")
                        .and_then(|value| value.parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            for reply in replies {
                let _ = stream.write_all(reply);
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(linger);
        });
        Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("url")
    }

    fn post_stop(endpoint: &Endpoint, deadline: Duration) -> Result<Response, String> {
        endpoint.post_json(
            &format!("{}/hooks/stop", endpoint.base_path),
            &[("Authorization", "Bearer secret".to_string())],
            b"{\"session_id\":\"s\"}",
            Instant::now() + deadline,
        )
    }

    #[test]
    fn a_real_server_answers_with_content_length_and_chunks() {
        use axum::Router;
        use axum::body::{Body, Bytes};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::post;
        let echo = |headers: HeaderMap, body: String| async move {
            let auth = headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string();
            axum::Json(json!({"auth": auth, "got": body}))
        };
        let streamed = || async {
            let parts = ["{\"decision\":", "\"block\"}"]
                .map(|part| Ok::<_, std::io::Error>(Bytes::from(part)));
            Body::from_stream(futures::stream::iter(parts))
        };
        let refused = || async {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "unknown token"}})),
            )
        };
        let url = serve(
            Router::new()
                .route("/base/hooks/stop", post(echo))
                .route("/streamed/hooks/stop", post(streamed))
                .route("/refused/hooks/stop", post(refused)),
        );

        let started = Instant::now();
        let endpoint = Endpoint::parse(&format!("{url}/base/")).expect("url");
        let response = post_stop(&endpoint, DEADLINE).expect("an answer");
        assert_eq!(response.status, 200);
        let value: Value = serde_json::from_slice(&response.body).expect("json");
        assert_eq!(
            value,
            json!({"auth": "Bearer secret", "got": "{\"session_id\":\"s\"}"})
        );
        // The server closes after its answer, as asked: no wait for a deadline.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        let endpoint = Endpoint::parse(&format!("{url}/streamed")).expect("url");
        let response = post_stop(&endpoint, DEADLINE).expect("a chunked answer");
        assert_eq!(response.body, b"{\"decision\":\"block\"}");

        let endpoint = Endpoint::parse(&format!("{url}/refused")).expect("url");
        let response = post_stop(&endpoint, DEADLINE).expect("an error answer");
        assert_eq!(response.status, 401);
        assert_eq!(
            error_message(&String::from_utf8_lossy(&response.body)),
            "unknown token"
        );
    }

    #[test]
    fn a_chunked_answer_split_across_reads_is_put_together() {
        let endpoint = raw_peer(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"",
                b"\r\n3\r\n:1}\r\n0\r\n\r\n",
            ],
            Duration::ZERO,
        );
        let response = post_stop(&endpoint, DEADLINE).expect("an answer");
        assert_eq!(
            (response.status, &response.body[..]),
            (200, &b"{\"a\":1}"[..])
        );
    }

    #[test]
    fn a_server_that_closes_early_is_an_error_not_an_answer() {
        let cases: [(Vec<&'static [u8]>, &str); 4] = [
            (vec![], "the connection closed before an answer"),
            (
                vec![b"HTTP/1.1 200 OK\r\nContent-Le"],
                "the connection closed before an answer",
            ),
            (
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"a\":"],
                "the connection closed in the middle of the answer",
            ),
            (
                vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"a\""],
                "a chunked answer was cut short",
            ),
        ];
        for (replies, expected) in cases {
            let endpoint = raw_peer(replies, Duration::ZERO);
            assert_eq!(
                post_stop(&endpoint, DEADLINE).expect_err(expected),
                expected
            );
        }
    }

    #[test]
    fn a_silent_server_times_out_at_the_deadline() {
        let endpoint = raw_peer(vec![], Duration::from_secs(5));
        let started = Instant::now();
        let error = post_stop(&endpoint, Duration::from_millis(300)).expect_err("no answer");
        assert!(
            error == "timed out reading the answer" || error == "no answer in time",
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_dead_port_is_refused_quickly() {
        // Bind then drop a listener to find a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("port");
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("url");
        let started = Instant::now();
        let error = endpoint
            .post_json("/hooks/stop", &[], b"{}", Instant::now() + DEADLINE)
            .expect_err("nothing listens");
        assert_eq!(error, "connection refused");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
