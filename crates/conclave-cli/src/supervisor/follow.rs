//! Follows the server's event log over SSE (`/api/events/stream`) and hands each event to the
//! supervisor; reconnects after a failure with `Last-Event-ID`, so nothing is skipped.

use std::time::Duration;

use conclave_core::model::Event;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::Client;

/// Delay before reconnecting after the stream broke.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Sends every event after `after` to `events` until `shutdown` or until the receiver is gone.
pub async fn follow_events(
    client: Client,
    mut after: i64,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    loop {
        let opened = tokio::select! {
            opened = client.open_stream("/api/events/stream", &[], Some(after)) => opened,
            () = shutdown.cancelled() => return,
        };
        match opened {
            Ok(response) => {
                let mut body = response.bytes_stream();
                let mut buffer = String::new();
                loop {
                    let chunk = tokio::select! {
                        chunk = body.next() => chunk,
                        () = shutdown.cancelled() => return,
                    };
                    let Some(Ok(chunk)) = chunk else { break };
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let frame: String = buffer.drain(..end + 2).collect();
                        let Some(event) = parse_frame(&frame) else {
                            continue;
                        };
                        after = after.max(event.seq);
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                tracing::info!("the event stream ended; reconnecting");
            }
            Err(error) => tracing::warn!(%error, "cannot follow the event stream"),
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The event in one SSE frame (its `data:` lines), if it holds one.
pub fn parse_frame(frame: &str) -> Option<Event> {
    let data: Vec<&str> = frame
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_events_and_keep_alives_are_skipped() {
        let frame = "id: 7\ndata: {\"seq\":7,\"ts\":\"2030-01-01T00:00:00Z\",\"actor\":\"a\",\
            \"kind\":\"task.ready\",\"task\":3,\"agent\":null,\"data\":{}}\n\n";
        let event = parse_frame(frame).expect("an event");
        assert_eq!((event.seq, event.kind()), (7, "task.ready"));
        assert!(parse_frame(":\n\n").is_none());
    }
}
