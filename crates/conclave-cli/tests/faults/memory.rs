//! Memory a stalled reader can pin, measured on a real `conclave serve` process: a live event
//! stream that never reads, while an agent makes 200 of the largest writes the API accepts (a
//! `done` naming 1,000 long file paths, a body just under the 256 KiB limit). The server's peak
//! resident set must stay under 100 MiB (issue 13), whatever the reader holds back.

use std::io::Write as _;
use std::net::TcpStream;

use serde_json::json;

use crate::harness::{Project, Server, add_agent, http};

/// The bound issue 13 sets for the server process.
const MAX_PEAK_RSS_KIB: u64 = 100 * 1024;
const WRITES: usize = 200;

#[tokio::test]
async fn a_stalled_reader_and_200_maximal_writes_keep_the_server_under_100_mib() {
    let project = Project::new("");
    let server = Server::start(&project, "memory.log");
    let admin = project.admin_token();
    let http = http();

    // The stalled reader: a raw connection that asks for the stream and never reads a byte.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stalled = TcpStream::connect(&address).expect("connect");
    write!(
        stalled,
        "GET /api/events/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {admin}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");

    let alice = add_agent(&http, &server.url, &admin, "alice").await;
    let files: Vec<String> = (0..1000)
        .map(|n| format!("src/{}/{n}.rs", "d".repeat(200)))
        .collect();
    let body = json!({ "summary": "done", "files": files });
    assert!(
        body.to_string().len() < 256 * 1024,
        "within the API's limit"
    );
    for n in 0..WRITES {
        let created: serde_json::Value = http
            .post(format!("{}/api/tasks", server.url))
            .bearer_auth(&admin)
            .json(&json!({ "title": format!("big {n}") }))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let id = created["id"].as_str().expect("id").to_string();
        let claim = http
            .post(format!("{}/api/tasks/claim", server.url))
            .bearer_auth(&alice)
            .json(&json!({ "id": id }))
            .send()
            .await
            .expect("claim");
        assert!(claim.status().is_success(), "claim {id}");
        let done = http
            .post(format!("{}/api/tasks/{id}/done", server.url))
            .bearer_auth(&alice)
            .json(&body)
            .send()
            .await
            .expect("done");
        assert!(done.status().is_success(), "done {id}: {}", done.status());
    }
    let peak = server.peak_rss_kib().expect("VmHWM readable on Linux");
    eprintln!("stalled reader + {WRITES} maximal writes: server peak RSS {peak} KiB");
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "server peak RSS {peak} KiB, over {MAX_PEAK_RSS_KIB} KiB"
    );
    drop(stalled);
}
