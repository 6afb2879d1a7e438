//! The client's transport rules, seen from a scripted server: headers, and the single retry of a
//! mutating request with the same `Idempotency-Key` after the connection broke.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::support::TestProject;

/// A request as the scripted server saw it: the request line and headers (names lower-cased).
#[derive(Debug)]
struct SeenRequest {
    line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl SeenRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

fn read_request(stream: &mut TcpStream) -> SeenRequest {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("request line");
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').expect("header colon");
        headers.push((name.trim().to_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().expect("length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    SeenRequest {
        line: line.trim_end().to_string(),
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

const TASK: &str = r#"{"id":"T-7","title":"retried","body":"","status":"ready","priority":0,"role":null,
"caps":[],"depends_on":[],"assignee":null,"claim_expires_at":null,"attempts":0,"result":null,"files":[],
"parent":null,"created_by":"alice","created_at":"2030-01-01T00:00:00Z","updated_at":"2030-01-01T00:00:00Z"}"#;

#[test]
fn a_broken_connection_is_retried_once_with_the_same_idempotency_key() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        // First attempt: read it whole, then hang up without answering.
        let (mut stream, _) = listener.accept().expect("first connection");
        let first = read_request(&mut stream);
        drop(stream);
        // Second attempt: answer as the real server would.
        let (mut stream, _) = listener.accept().expect("second connection");
        let second = read_request(&mut stream);
        let response = format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{TASK}",
            TASK.len()
        );
        stream.write_all(response.as_bytes()).expect("answer");
        (first, second)
    });

    let project = TestProject::empty();
    let run = project.run_with_env(
        &[
            ("CONCLAVE_URL", &url),
            ("CONCLAVE_AGENT", "alice"),
            ("CONCLAVE_TOKEN", "secret"),
        ],
        &["task", "add", "retried"],
    );
    assert_eq!(run.ok(), "T-7");
    let (first, second) = server.join().expect("scripted server");

    assert_eq!(first.line, "POST /api/tasks HTTP/1.1");
    let key = first
        .header("idempotency-key")
        .expect("a mutating request carries a key");
    assert!(key.len() >= 16, "key too guessable: {key}");
    assert_eq!(
        second.header("idempotency-key"),
        Some(key),
        "the retry must reuse the key"
    );
    assert_eq!(first.body, second.body);
    for request in [&first, &second] {
        assert_eq!(request.header("authorization"), Some("Bearer secret"));
        assert_eq!(request.header("x-conclave-agent"), Some("alice"));
    }
    let body: serde_json::Value = serde_json::from_str(&first.body).expect("json body");
    assert_eq!(body["title"], "retried");
}

#[test]
fn reads_carry_no_idempotency_key_and_errors_show_the_servers_message() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("connection");
        let request = read_request(&mut stream);
        let body = r#"{"error":{"code":"forbidden","message":"agents may not do that"}}"#;
        let response = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).expect("answer");
        request
    });
    let project = TestProject::empty();
    let run = project.run_with_env(
        &[
            ("CONCLAVE_URL", &url),
            ("CONCLAVE_AGENT", "alice"),
            ("CONCLAVE_TOKEN", "secret"),
        ],
        &["task", "list"],
    );
    assert_eq!(run.fails_with(1), "error: agents may not do that\n");
    let request = server.join().expect("scripted server");
    assert_eq!(request.line, "GET /api/tasks HTTP/1.1");
    assert_eq!(request.header("idempotency-key"), None);
}
