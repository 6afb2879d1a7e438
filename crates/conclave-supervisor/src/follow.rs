//! Follows the server's event log (the client crate's SSE reader) and hands each event to the
//! supervisor; reconnects after a failure with `Last-Event-ID`, so nothing is skipped.

use std::time::Duration;

use conclave_client::Client;
use conclave_client::sse::BadEvent;
use conclave_core::model::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
            opened = client.events(&[], Some(after)) => opened,
            () = shutdown.cancelled() => return,
        };
        match opened {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    next = stream.next_event() => next,
                    () = shutdown.cancelled() => return,
                };
                match next {
                    Ok(Some(event)) => {
                        after = after.max(event.seq);
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                    // One event the supervisor cannot read is skipped, not re-read forever.
                    Err(error) if error.is::<BadEvent>() => {
                        tracing::warn!(error = %format!("{error:#}"), "skipping an event");
                    }
                    Ok(None) | Err(_) => {
                        tracing::info!("the event stream ended; reconnecting");
                        break;
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "cannot follow the event stream"),
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
