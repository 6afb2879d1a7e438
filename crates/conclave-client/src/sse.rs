//! The server's event stream (`/api/events/stream`, server-sent events) as a sequence of
//! [`Event`]s: the one SSE reader of the workspace, used by `conclave log --follow` and by the
//! supervisor.
//!
//! Frames are split on bytes, not text: a network chunk may end inside a multi-byte character,
//! which is decoded only once its frame is complete.

use std::collections::VecDeque;
use std::fmt;

use anyhow::Context as _;
use conclave_core::model::Event;
use reqwest::Response;

use crate::Client;

/// The path of the event stream.
pub const EVENTS_PATH: &str = "/api/events/stream";

/// One message of a server-sent event stream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub data: Option<String>,
}

/// Splits a byte stream into SSE messages (blank-line separated; comments ignored).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Takes the next chunk of bytes; returns the messages it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        self.buffer
            .extend(chunk.iter().copied().filter(|byte| *byte != b'\r'));
        let mut messages = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut message = SseMessage::default();
            for line in text.lines() {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => message.id = Some(value.to_string()),
                    "data" => match &mut message.data {
                        Some(data) => {
                            data.push('\n');
                            data.push_str(value);
                        }
                        None => message.data = Some(value.to_string()),
                    },
                    _ => {}
                }
            }
            if message != SseMessage::default() {
                messages.push(message);
            }
        }
        messages
    }
}

/// A message on the stream whose data is not an event (the stream itself is fine).
#[derive(Debug, Clone)]
pub struct BadEvent {
    pub data: String,
    pub reason: String,
}

impl fmt::Display for BadEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut clipped: String = self.data.chars().take(200).collect();
        if clipped.len() < self.data.len() {
            clipped.push('…');
        }
        write!(
            f,
            "unexpected event on the stream ({}): {clipped}",
            self.reason
        )
    }
}

impl std::error::Error for BadEvent {}

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    response: Response,
    parser: SseParser,
    ready: VecDeque<SseMessage>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the server ended the stream. A message that is not an
    /// event is a [`BadEvent`] error, after which the stream may be read on.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            while let Some(message) = self.ready.pop_front() {
                if let Some(data) = message.data {
                    return decode(data).map(Some);
                }
            }
            let chunk = self
                .response
                .chunk()
                .await
                .context("the event stream broke off")?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.ready.extend(self.parser.push(&chunk));
        }
    }
}

fn decode(data: String) -> anyhow::Result<Event> {
    serde_json::from_str(&data).map_err(|error| {
        BadEvent {
            reason: error.to_string(),
            data,
        }
        .into()
    })
}

impl Client {
    /// Opens the event stream with `query` (filters, `after`), resuming after `last_event_id`.
    pub async fn events(
        &self,
        query: &[(&str, String)],
        last_event_id: Option<i64>,
    ) -> anyhow::Result<EventStream> {
        let response = self.open_stream(EVENTS_PATH, query, last_event_id).await?;
        Ok(EventStream {
            response,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_survive_any_chunking() {
        let stream =
            b": keep-alive\n\nid: 1\ndata: {\"a\":1}\n\nid: 2\r\ndata: x\r\ndata: y\r\n\r\n";
        for split in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut messages = parser.push(&stream[..split]);
            messages.extend(parser.push(&stream[split..]));
            assert_eq!(
                messages,
                vec![
                    SseMessage {
                        id: Some("1".into()),
                        data: Some("{\"a\":1}".into())
                    },
                    SseMessage {
                        id: Some("2".into()),
                        data: Some("x\ny".into())
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_character_split_across_chunks_arrives_whole() {
        let frame = "id: 7\ndata: {\"seq\":7,\"ts\":\"2030-01-01T00:00:00Z\",\"actor\":\"a\",\
            \"kind\":\"message.sent\",\"task\":null,\"agent\":null,\"data\":{\"id\":\"M-1\",\
            \"to\":\"b\",\"recipients\":[\"b\"],\"thread\":\"t\",\"kind\":\"chat\",\"urgent\":false,\
            \"body\":\"né € 🦀\"}}\n\n";
        let bytes = frame.as_bytes();
        let crab = frame.find('🦀').expect("the crab");
        // Cut inside the 4-byte crab, and at every other byte too.
        for split in (0..bytes.len()).chain([crab + 1, crab + 2, crab + 3]) {
            let mut parser = SseParser::default();
            let mut messages = parser.push(&bytes[..split]);
            messages.extend(parser.push(&bytes[split..]));
            assert_eq!(messages.len(), 1, "split at {split}");
            let data = messages.remove(0).data.expect("data");
            let event = decode(data).expect("an event");
            let wire = serde_json::to_value(&event).expect("the event as JSON");
            assert_eq!(wire["data"]["body"], "né € 🦀", "split at {split}");
        }
    }

    #[test]
    fn data_that_is_not_an_event_is_a_bad_event() {
        let error = decode("{\"not\":1}".into()).expect_err("not an event");
        assert!(error.is::<BadEvent>(), "{error:#}");
        assert!(error.to_string().contains("not"), "{error}");
    }
}
