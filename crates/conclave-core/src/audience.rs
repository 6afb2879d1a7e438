//! Who may read a message: the one rule every read path (message lists, the event log and its
//! live stream, search over HTTP and MCP) applies.
//!
//! - A direct message (to an agent's name) is readable by its sender, its recipients and the
//!   admin.
//! - A role message (`role:<name>`) is readable by the agents of that role (those it was
//!   delivered to, and those holding the role when they read), its sender and the admin.
//! - A broadcast (`all`) is readable by every agent.
//! - A `message.acked` event is readable by the agent that acknowledged and the admin.
//!
//! Every other event and search hit is readable by everyone with a token.

use crate::event::Event;
use crate::model::{Actor, EventPayload};

/// The reader a rule is applied to: the admin (or the server itself), or one agent with its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// The admin token, the dashboard, or the server's own work: reads everything.
    Admin,
    Agent {
        name: String,
        role: Option<String>,
    },
}

impl Viewer {
    /// The viewer an actor is; `role` is the agent's role (ignored for the admin and system).
    pub fn of(actor: &Actor, role: Option<String>) -> Viewer {
        match actor {
            Actor::Agent(name) => Viewer::Agent {
                name: name.clone(),
                role,
            },
            Actor::Admin | Actor::System => Viewer::Admin,
        }
    }

    /// Whether this viewer may read a message sent by `sender` to `to` (as addressed: a name,
    /// `role:<name>` or `all`), delivered to `recipients`.
    pub fn may_read_message<'a>(
        &self,
        sender: &str,
        to: &str,
        recipients: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        let Viewer::Agent { name, role } = self else {
            return true;
        };
        if sender == name || to == "all" {
            return true;
        }
        if let (Some(addressed), Some(role)) = (to.strip_prefix("role:"), role.as_deref())
            && addressed == role
        {
            return true;
        }
        recipients.into_iter().any(|recipient| recipient == name)
    }

    /// Whether this viewer may read an event of the log: message events follow the message
    /// rule, every other event is readable by all.
    pub fn may_read_event(&self, event: &Event) -> bool {
        let Viewer::Agent { name, .. } = self else {
            return true;
        };
        match &event.payload {
            EventPayload::MessageSent(sent) => self.may_read_message(
                &event.actor,
                &sent.to,
                sent.recipients.iter().map(String::as_str),
            ),
            EventPayload::MessageAcked(_) => {
                event.actor == *name || event.agent.as_deref() == Some(name.as_str())
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, role: Option<&str>) -> Viewer {
        Viewer::Agent {
            name: name.to_string(),
            role: role.map(str::to_string),
        }
    }

    #[test]
    fn direct_messages_are_read_by_sender_recipients_and_admin_only() {
        let recipients = ["bob"];
        assert!(Viewer::Admin.may_read_message("alice", "bob", recipients));
        assert!(agent("alice", None).may_read_message("alice", "bob", recipients));
        assert!(agent("bob", None).may_read_message("alice", "bob", recipients));
        assert!(!agent("carol", None).may_read_message("alice", "bob", recipients));
    }

    #[test]
    fn role_and_broadcast_messages_are_read_by_their_audience() {
        let reviewers = ["rita"];
        assert!(agent("rita", Some("reviewer")).may_read_message("a", "role:reviewer", reviewers));
        // Took the role after the message was sent: still its audience.
        assert!(agent("rex", Some("reviewer")).may_read_message("a", "role:reviewer", reviewers));
        // Was a reviewer when it was sent, has another role now: it was delivered to it.
        assert!(agent("rita", Some("coder")).may_read_message("a", "role:reviewer", reviewers));
        assert!(!agent("carl", Some("coder")).may_read_message("a", "role:reviewer", reviewers));
        assert!(!agent("nobody", None).may_read_message("a", "role:reviewer", reviewers));
        assert!(agent("carl", None).may_read_message("a", "all", ["rita"]));
    }
}
