//! Messages: addressed to an agent, a role (`role:<name>`) or everyone (`all`), threaded, with a
//! delivery row per recipient that stays unacknowledged (and so comes back in the inbox) until the
//! recipient acknowledges it: at-least-once delivery across reconnects and restarts.

use super::db::{OptionalExtension, Row, params};

use super::{Reader, Tx, ms_to_time, opt_time, validate_name, validate_text};
use crate::audience::Viewer;
use crate::error::{CoreError, Result};
use crate::event::{MessageAcked, MessageSent};
use crate::model::EventPayload;
use crate::model::{Actor, Delivery, Message, MessageKind, NewMessage};

const MAX_BODY: usize = 32 * 1024;
/// The most of a message's body its `message.sent` event carries: the event is kept forever and
/// goes to every live reader, while the message itself (read by id) keeps the whole body. The
/// dashboard and the supervisor's wake-ups quote far less than this.
const MAX_EVENT_BODY: usize = 4 * 1024;
const CUT_MARKER: &str = "… (cut; read the message by id)";
const MESSAGE_COLUMNS: &str = "id, sender, recipient, thread, kind, urgent, body, created_at";

/// The body as a `message.sent` event carries it: whole when short, else its first
/// [`MAX_EVENT_BODY`] bytes (on a character boundary) with a marker.
fn event_excerpt(body: &str) -> String {
    if body.len() <= MAX_EVENT_BODY {
        return body.to_string();
    }
    let mut end = MAX_EVENT_BODY - CUT_MARKER.len();
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARKER}", &body[..end])
}

/// Parses `M-12` (or `12`) into the row id.
pub fn parse_message_id(text: &str) -> Result<i64> {
    crate::model::parse_short_id(text, 'M', "message")
}

fn message_from_row(row: &Row<'_>) -> Result<Message> {
    let kind: String = row.get(4)?;
    Ok(Message {
        id: format!("M-{}", row.get::<i64>(0)?),
        sender: row.get(1)?,
        to: row.get(2)?,
        thread: row.get(3)?,
        kind: kind.parse().unwrap_or(MessageKind::Chat),
        urgent: row.get(5)?,
        body: row.get(6)?,
        created_at: ms_to_time(row.get(7)?),
        deliveries: Vec::new(),
    })
}

impl Reader<'_> {
    /// Messages with their delivery state: all of them, or those sent by or to `party`, or one
    /// thread; oldest first, at most `limit`.
    pub fn messages(
        &self,
        party: Option<&str>,
        thread: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m
             WHERE (?1 IS NULL OR m.sender = ?1
                    OR EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.agent = ?1))
               AND (?2 IS NULL OR m.thread = ?2)
             ORDER BY m.id DESC LIMIT ?3"
        );
        let rows = self.conn().query_map(
            &sql,
            params![party, thread, limit.clamp(1, 10_000)],
            message_from_row,
        )?;
        let mut messages: Vec<Message> = rows;
        messages.reverse();
        self.attach_deliveries(&mut messages)?;
        Ok(messages)
    }

    /// One message with its delivery state.
    pub fn message(&self, row_id: i64) -> Result<Message> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1");
        let message = self
            .conn()
            .query_row(&sql, params![row_id], message_from_row)
            .optional()?
            .ok_or_else(|| CoreError::not_found(format!("no message M-{row_id}")))?;
        let mut messages = vec![message];
        self.attach_deliveries(&mut messages)?;
        messages
            .pop()
            .ok_or_else(|| CoreError::not_found(format!("no message M-{row_id}")))
    }

    /// Whether `viewer` may read the message `id` (`M-<n>`); an unknown message is unreadable.
    pub fn may_read_message(&self, id: &str, viewer: &Viewer) -> Result<bool> {
        let Ok(row_id) = parse_message_id(id) else {
            return Ok(false);
        };
        let message = match self.message(row_id) {
            Ok(message) => message,
            Err(CoreError::NotFound(_)) => return Ok(false),
            Err(error) => return Err(error),
        };
        Ok(viewer.may_read_message(
            &message.sender,
            &message.to,
            message.deliveries.iter().map(|d| d.agent.as_str()),
        ))
    }

    /// The agent's unacknowledged messages, oldest first.
    pub fn inbox(&self, agent: &str) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN deliveries d ON d.message_id = m.id
             WHERE d.agent = ?1 AND d.acked_at IS NULL ORDER BY m.id"
        );
        let rows = self
            .conn()
            .query_map(&sql, params![agent], message_from_row)?;
        let mut messages: Vec<Message> = rows;
        self.attach_deliveries(&mut messages)?;
        Ok(messages)
    }

    pub fn unread_count(&self, agent: &str) -> Result<i64> {
        self.conn().query_row(
            "SELECT COUNT(*) FROM deliveries WHERE agent = ?1 AND acked_at IS NULL",
            params![agent],
            |row| row.get(0),
        )
    }

    fn attach_deliveries(&self, messages: &mut [Message]) -> Result<()> {
        for message in messages {
            let id = parse_message_id(&message.id)?;
            let rows = self.conn().query_map(
                "SELECT agent, acked_at FROM deliveries WHERE message_id = ?1 ORDER BY agent",
                params![id],
                |row| {
                    Ok(Delivery {
                        agent: row.get(0)?,
                        acked_at: opt_time(row.get(1)?),
                    })
                },
            )?;
            message.deliveries = rows;
        }
        Ok(())
    }

    /// The agents a recipient spec names, at this moment.
    fn resolve_recipients(&self, sender: &str, to: &str) -> Result<Vec<String>> {
        // A direct message reads its one recipient, not the whole team: sends stay flat as the
        // team grows (the writer holds its lock meanwhile).
        if to != "all" && !to.starts_with("role:") {
            return Ok(vec![self.agent(to)?.name]);
        }
        let role = to.strip_prefix("role:");
        if let Some(role) = role {
            validate_name("role", role)?;
        }
        let names: Vec<String> = self
            .agents()?
            .into_iter()
            .filter(|a| role.is_none_or(|role| a.role.as_deref() == Some(role)))
            .map(|a| a.name)
            .filter(|name| name != sender)
            .collect();
        if names.is_empty() {
            return Err(CoreError::not_found(format!(
                "{to:?} names no agent other than the sender"
            )));
        }
        Ok(names)
    }
}

impl Tx<'_> {
    pub fn send_message(&mut self, actor: &Actor, new: NewMessage) -> Result<Message> {
        validate_text("message body", &new.body, MAX_BODY, true)?;
        let to = new.to.trim().to_string();
        let recipients = self.read().resolve_recipients(actor.name(), &to)?;
        if let Some(thread) = &new.thread {
            validate_text("thread", thread, 200, true)?;
        }
        let row_id = self.conn().insert(
            "INSERT INTO messages (sender, recipient, thread, kind, urgent, body, created_at)
             VALUES (?1, ?2, '', ?3, ?4, ?5, ?6)",
            params![
                actor.name(),
                to,
                new.kind.as_str(),
                new.urgent,
                new.body,
                self.now_ms()
            ],
            "id",
        )?;
        let id = format!("M-{row_id}");
        let thread = new.thread.clone().unwrap_or_else(|| id.clone());
        self.conn().execute(
            "UPDATE messages SET thread = ?2 WHERE id = ?1",
            params![row_id, thread],
        )?;
        for recipient in &recipients {
            self.conn().execute(
                "INSERT INTO deliveries (message_id, agent) VALUES (?1, ?2)",
                params![row_id, recipient],
            )?;
        }
        self.index_search(
            "message",
            &id,
            &format!("{} → {}", actor.name(), to),
            &new.body,
        )?;
        self.emit(
            actor.name(),
            None,
            actor.agent(),
            EventPayload::MessageSent(MessageSent {
                id,
                to,
                recipients,
                thread,
                kind: new.kind,
                urgent: new.urgent,
                body: event_excerpt(&new.body),
            }),
        )?;
        // A reply answers what came before it in the thread: the messages the replying agent
        // was sent there count as read (docs/dashboard.md, "What read means").
        if let (Some(agent), Some(thread)) = (actor.agent(), new.thread.as_deref()) {
            self.ack_thread_before(agent, thread, row_id)?;
        }
        self.read().message(row_id)
    }

    /// Acknowledges, for `agent`, every message it was sent in `thread` before `before`.
    fn ack_thread_before(&mut self, agent: &str, thread: &str, before: i64) -> Result<()> {
        let answered: Vec<String> = {
            self.conn().query_map(
                "SELECT 'M-' || m.id FROM messages m JOIN deliveries d ON d.message_id = m.id
                 WHERE m.thread = ?1 AND m.id < ?2 AND d.agent = ?3 AND d.acked_at IS NULL
                 ORDER BY m.id",
                params![thread, before, agent],
                |row| row.get(0),
            )?
        };
        if !answered.is_empty() {
            self.ack_messages(agent, &answered)?;
        }
        Ok(())
    }

    /// Acknowledges messages for `agent`; unknown or already acknowledged ids are ignored, so a
    /// retried acknowledgement is harmless. Returns the ids newly acknowledged.
    pub fn ack_messages(&mut self, agent: &str, ids: &[String]) -> Result<Vec<String>> {
        let mut acked = Vec::new();
        for id in ids {
            let row_id = parse_message_id(id)?;
            let changed = self.conn().execute(
                "UPDATE deliveries SET acked_at = ?3 WHERE message_id = ?1 AND agent = ?2 AND acked_at IS NULL",
                params![row_id, agent, self.now_ms()],
            )?;
            if changed == 1 {
                acked.push(format!("M-{row_id}"));
            }
        }
        if !acked.is_empty() {
            self.emit(
                agent,
                None,
                Some(agent),
                EventPayload::MessageAcked(MessageAcked { ids: acked.clone() }),
            )?;
        }
        Ok(acked)
    }
}
