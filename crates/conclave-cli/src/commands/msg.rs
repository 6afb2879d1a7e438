//! `conclave msg send|inbox|list|thread`.

use std::time::Duration;

use conclave_core::model::{AckResult, Message, MessageAck, MessageList, NewMessage};

use crate::cli::MsgCommand;
use crate::context::Context;
use crate::output::{Table, clip, clock, note, outln, print_json, printable};

pub async fn run(context: &Context, command: MsgCommand) -> anyhow::Result<()> {
    if let MsgCommand::Inbox { .. } = command {
        context.require_agent("conclave msg inbox")?;
    }
    let client = context.client()?;
    match command {
        MsgCommand::Send {
            to,
            body,
            thread,
            kind,
            urgent,
        } => {
            let request = NewMessage {
                to,
                body,
                thread,
                kind: kind.unwrap_or_default(),
                urgent,
            };
            let message: Message = client.post("/api/messages", &request).await?;
            outln!("{}", message.id)?;
            let n_recipients = message.deliveries.len();
            note!(
                "conclave: sent {} to {} (thread {}, {n_recipients} recipient{})",
                message.id,
                message.to,
                message.thread,
                if n_recipients == 1 { "" } else { "s" }
            );
        }
        MsgCommand::Inbox { wait, json } => {
            let mut query = Vec::new();
            if let Some(wait) = wait {
                query.push(("wait", wait.to_string()));
            }
            let wait = Duration::from_secs(wait.unwrap_or(0));
            let inbox: MessageList = client.get_waiting("/api/inbox", &query, wait).await?;
            if json {
                print_json(&inbox)?;
            } else if inbox.messages.is_empty() {
                note!("no unread messages");
            } else {
                for message in &inbox.messages {
                    print_message(message)?;
                }
            }
            // Acknowledge only after printing: a crash in between means a redelivery, not a loss.
            if !inbox.messages.is_empty() {
                let ids = inbox
                    .messages
                    .iter()
                    .map(|message| message.id.clone())
                    .collect();
                let _: AckResult = client.post("/api/inbox/ack", &MessageAck { ids }).await?;
            }
        }
        MsgCommand::List {
            thread,
            limit,
            json,
        } => {
            let mut query = Vec::new();
            if let Some(thread) = thread {
                query.push(("thread", thread));
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            let list: MessageList = client.get("/api/messages", &query).await?;
            if json {
                print_json(&list)?;
            } else if list.messages.is_empty() {
                note!("no messages");
            } else {
                messages_table(&list.messages).print()?;
            }
        }
        MsgCommand::Thread { thread, json } => {
            let list: MessageList = client
                .get("/api/messages", &[("thread", thread.clone())])
                .await?;
            if json {
                print_json(&list)?;
            } else if list.messages.is_empty() {
                anyhow::bail!("no messages in thread {thread:?}");
            } else {
                for message in &list.messages {
                    print_message(message)?;
                }
            }
        }
    }
    Ok(())
}

/// A message in full: a header line, then the body indented.
fn print_message(message: &Message) -> std::io::Result<()> {
    let mut flags = Vec::new();
    if message.kind != Default::default() {
        flags.push(message.kind.to_string());
    }
    if message.urgent {
        flags.push("urgent".to_string());
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", flags.join(", "))
    };
    outln!(
        "{} {} {} → {} (thread {}){flags}",
        message.id,
        clock(message.created_at),
        message.sender,
        printable(&message.to),
        printable(&message.thread)
    )?;
    for line in message.body.lines() {
        outln!("    {}", printable(line))?;
    }
    Ok(())
}

fn messages_table(messages: &[Message]) -> Table {
    let mut table = Table::new(&["id", "time", "from", "to", "thread", "kind", "body"]);
    for message in messages {
        let kind = if message.urgent {
            format!("{}!", message.kind)
        } else {
            message.kind.to_string()
        };
        table.row(vec![
            message.id.clone(),
            clock(message.created_at),
            message.sender.clone(),
            message.to.clone(),
            message.thread.clone(),
            kind,
            clip(&message.body, 60),
        ]);
    }
    table
}
