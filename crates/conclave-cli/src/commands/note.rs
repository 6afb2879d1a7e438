//! `conclave note add|list|search`.

use conclave_core::model::{NewNote, Note, NoteList, SearchResults};

use crate::cli::NoteCommand;
use crate::context::Context;
use crate::output::{Table, clip, note, outln, print_json};

pub async fn run(context: &Context, command: NoteCommand) -> anyhow::Result<()> {
    let client = context.client()?;
    match command {
        NoteCommand::Add {
            title,
            kind,
            body,
            tags,
            files,
            supersedes,
            task,
        } => {
            let kind_given = kind.is_some();
            let request = NewNote {
                title,
                kind: kind.unwrap_or_default(),
                body,
                tags,
                files,
                supersedes,
                task,
            };
            let note: Note = client.post("/api/notes", &request).await?;
            outln!("{}", note.id)?;
            let superseding = note
                .supersedes
                .as_ref()
                .map(|old| format!(", superseding {old}"))
                .unwrap_or_default();
            if kind_given {
                note!(
                    "conclave: recorded {} ({}){superseding}",
                    note.id,
                    note.kind
                );
            } else {
                note!(
                    "conclave: recorded {} as a {} note{superseding} (the default kind; choose \
                     another with --kind decision|discovery|interface|warning)",
                    note.id,
                    note.kind
                );
            }
        }
        NoteCommand::List { kind, all, json } => {
            let mut query = Vec::new();
            if let Some(kind) = kind {
                query.push(("kind", kind.to_string()));
            }
            if all {
                query.push(("all", "true".to_string()));
            }
            let list: NoteList = client.get("/api/notes", &query).await?;
            if json {
                print_json(&list)?;
            } else if list.notes.is_empty() {
                note!("no notes");
            } else {
                let mut table = Table::new(&["id", "kind", "author", "tags", "title"]);
                for note in &list.notes {
                    let title = match &note.superseded_by {
                        Some(newer) => format!("{} (superseded by {newer})", clip(&note.title, 60)),
                        None => clip(&note.title, 70),
                    };
                    table.row(vec![
                        note.id.clone(),
                        note.kind.to_string(),
                        note.author.clone(),
                        if note.tags.is_empty() {
                            "-".to_string()
                        } else {
                            note.tags.join(",")
                        },
                        title,
                    ]);
                }
                table.print()?;
            }
        }
        NoteCommand::Search { query, kind, json } => {
            let mut params = vec![("q", query)];
            if let Some(kind) = kind {
                params.push(("kind", kind));
            }
            let result: SearchResults = client.get("/api/search", &params).await?;
            if json {
                print_json(&result)?;
            } else if result.hits.is_empty() {
                note!("no matches");
            } else {
                let mut table = Table::new(&["id", "kind", "title", "snippet"]);
                for hit in &result.hits {
                    table.row(vec![
                        hit.id.clone(),
                        hit.kind.clone(),
                        clip(&hit.title, 40),
                        clip(&hit.snippet, 80),
                    ]);
                }
                table.print()?;
            }
        }
    }
    Ok(())
}
