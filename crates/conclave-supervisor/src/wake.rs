//! The user messages the supervisor writes to an agent's stdin: the first one of a session,
//! and the one that wakes an idle agent by quoting what arrived for it (so that reading it
//! costs no tool call). Bounded: at most [`MAX_WAKE_BYTES`] in all.

/// The largest wake message.
pub const MAX_WAKE_BYTES: usize = 2048;
/// The longest quote of one message body.
const MAX_BODY: usize = 600;

/// A message quoted in a wake.
#[derive(Debug, Clone, PartialEq)]
pub struct Quoted {
    pub id: String,
    pub sender: String,
    pub body: String,
}

/// How a session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new session.
    Fresh,
    /// A new session after a recycle: its predecessor left a handoff.
    Recycled,
    /// The last session again, after the supervisor (or the process) was restarted.
    Resumed,
    /// The last session again, after a crash of its process.
    AfterCrash,
}

/// The first user message of a session.
pub fn first_message(name: &str, role: Option<&str>, start: Start) -> String {
    let who = match role {
        Some(role) => format!("You are {name}, the {role} of this team."),
        None => format!("You are {name}, a member of this team."),
    };
    let what = match start {
        Start::Fresh => {
            "Call the conclave `status` tool, then `claim` a task and work on it; call `done` \
             when it is finished and claim the next. When nothing is ready for you, end your turn."
        }
        Start::Recycled => {
            "Your previous session ran out of context; read your handoff (it is in your context \
             at start, from your predecessor) and carry on: call `status`, then continue your task \
             or `claim` the next one."
        }
        Start::Resumed => {
            "The team's supervisor was restarted and resumed this session. Call `status` and \
             continue where you left off (claim a task if you hold none)."
        }
        Start::AfterCrash => {
            "Your process ended unexpectedly and was restarted; the task you held was released. \
             Call `status`, then `claim` a task again and continue."
        }
    };
    format!("{who} {what}")
}

/// The message asking an agent for a handoff before it is recycled.
pub fn handoff_request(used: i64, window: i64) -> String {
    format!(
        "Your context is nearly full ({used} of {window} tokens). Stop here and call the conclave \
         `handoff` tool now with a summary for your successor: your task and its state, what is \
         done, what is left, files touched, decisions and pitfalls. Then end your turn; a fresh \
         session continues from your handoff."
    )
}

/// The wake message quoting `messages` and `tasks` (id, title); `None` when there is nothing.
pub fn wake_message(messages: &[Quoted], tasks: &[(String, String)]) -> Option<String> {
    if messages.is_empty() && tasks.is_empty() {
        return None;
    }
    let mut text = String::from("Something arrived for you.");
    let mut left_out = 0;
    for message in messages {
        let line = format!(
            "\nMessage {} from {}: {}",
            message.id,
            message.sender,
            crate::stream::truncate(message.body.trim(), MAX_BODY)
        );
        if text.len() + line.len() > MAX_WAKE_BYTES - 200 {
            left_out += 1;
        } else {
            text.push_str(&line);
        }
    }
    for (id, title) in tasks {
        let line = format!(
            "\nTask {id} is ready for you: {}",
            crate::stream::truncate(title, 150)
        );
        if text.len() + line.len() > MAX_WAKE_BYTES - 200 {
            left_out += 1;
        } else {
            text.push_str(&line);
        }
    }
    if left_out > 0 {
        text.push_str(&format!(
            "\n({left_out} more not quoted: see `inbox` and `status`.)"
        ));
    }
    if !messages.is_empty() {
        text.push_str("\nThese messages are delivered; no need to read your inbox for them.");
    }
    if !tasks.is_empty() {
        text.push_str("\nClaim a ready task with `claim` if you hold none, and work on it.");
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_quotes_senders_bodies_and_tasks() {
        let text = wake_message(
            &[Quoted {
                id: "M-3".into(),
                sender: "alice".into(),
                body: "the parser is done".into(),
            }],
            &[("T-4".into(), "Wire the lexer".into())],
        )
        .expect("a wake");
        for part in [
            "M-3",
            "alice",
            "the parser is done",
            "T-4",
            "Wire the lexer",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        assert_eq!(wake_message(&[], &[]), None);
    }

    #[test]
    fn a_wake_is_bounded() {
        let messages: Vec<Quoted> = (0..50)
            .map(|n| Quoted {
                id: format!("M-{n}"),
                sender: "bob".into(),
                body: "y".repeat(1000),
            })
            .collect();
        let text = wake_message(&messages, &[]).expect("a wake");
        assert!(text.len() <= MAX_WAKE_BYTES, "{}", text.len());
        assert!(text.contains("more not quoted"));
    }
}
