//! Notes (shared knowledge: decisions, discoveries, interfaces, warnings) and the full-text index
//! over notes, messages and task results.

use super::db::{OptionalExtension, Row, params};

use super::{Reader, Tx, json_list, ms_to_time, to_json_list, validate_name, validate_text};
use crate::audience::Viewer;
use crate::error::{CoreError, Result};
use crate::event::{NoteAdded, NoteSuperseded};
use crate::model::EventPayload;
use crate::model::{Actor, MessageKind, NewMessage, NewNote, Note, NoteKind, SearchHit, TaskId};

const NOTE_COLUMNS: &str =
    "id, author, kind, title, body, tags, files, task_id, supersedes, superseded_by, created_at";

/// Parses `N-12` (or `12`) into the row id.
pub fn parse_note_id(text: &str) -> Result<i64> {
    crate::model::parse_short_id(text, 'N', "note")
}

fn note_from_row(row: &Row<'_>) -> Result<Note> {
    let kind: String = row.get(2)?;
    Ok(Note {
        id: format!("N-{}", row.get::<i64>(0)?),
        author: row.get(1)?,
        kind: kind.parse().unwrap_or(NoteKind::Discovery),
        title: row.get(3)?,
        body: row.get(4)?,
        tags: json_list(&row.get::<String>(5)?),
        files: json_list(&row.get::<String>(6)?),
        task: row.get::<Option<i64>>(7)?.map(TaskId),
        supersedes: row.get::<Option<i64>>(8)?.map(|id| format!("N-{id}")),
        superseded_by: row.get::<Option<i64>>(9)?.map(|id| format!("N-{id}")),
        created_at: ms_to_time(row.get(10)?),
    })
}

/// Turns free text into an FTS5 query that cannot be a syntax error: every word becomes a quoted
/// term, and all must match.
fn fts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|word| !word.is_empty())
        .take(32)
        .map(|word| format!("\"{word}\""))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

impl Reader<'_> {
    pub fn note(&self, id: &str) -> Result<Note> {
        let row_id = parse_note_id(id)?;
        let sql = format!("SELECT {NOTE_COLUMNS} FROM notes WHERE id = ?1");
        self.conn()
            .query_row(&sql, params![row_id], note_from_row)
            .optional()?
            .ok_or_else(|| CoreError::not_found(format!("no note {id}")))
    }

    /// Notes, newest first; `kind` narrows; superseded notes are left out unless asked for.
    pub fn notes(
        &self,
        kind: Option<NoteKind>,
        include_superseded: bool,
        limit: i64,
    ) -> Result<Vec<Note>> {
        let sql = format!(
            "SELECT {NOTE_COLUMNS} FROM notes
             WHERE (?1 IS NULL OR kind = ?1) AND (?2 OR superseded_by IS NULL)
             ORDER BY id DESC LIMIT ?3"
        );
        let rows = self.conn().query_map(
            &sql,
            params![
                kind.map(NoteKind::as_str),
                include_superseded,
                limit.clamp(1, 10_000)
            ],
            note_from_row,
        )?;
        Ok(rows)
    }

    /// Full-text search; `kinds` narrows to `note`, `message` and/or `task`. Best matches first.
    /// Whether anything waits in the search backlog (`store/search_backlog.rs`).
    pub fn search_backlog_waits(&self) -> Result<bool> {
        let waits: i64 = self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM search_backlog)",
            params![],
            |row| row.get(0),
        )?;
        Ok(waits != 0)
    }

    /// Messages the viewer may not read ([`Viewer::may_read_message`]) are left out. What still
    /// waits in the search backlog is not found: [`crate::Store::search`] indexes it first.
    pub fn search(
        &self,
        text: &str,
        kinds: &[&str],
        limit: i64,
        viewer: &Viewer,
    ) -> Result<Vec<SearchHit>> {
        let Some(query) = fts_query(text) else {
            return Err(CoreError::invalid("the search query has no words"));
        };
        let (sql, query) = if self.conn().is_postgres() {
            // Every word must match (as FTS5's implicit AND does), stemmed by PostgreSQL's
            // English configuration; the snippet marks matches the same way.
            (
                "SELECT kind, ref, title, ts_headline('english', body, q,
                    'StartSel=\"[\", StopSel=\"]\", MaxWords=16, MinWords=4, \
                     MaxFragments=1, FragmentDelimiter=\"…\"')
                 FROM search_index, plainto_tsquery('english', ?1) AS q
                 WHERE document @@ q ORDER BY ts_rank(document, q) DESC, rowid LIMIT ?2",
                query.replace('"', ""),
            )
        } else {
            (
                "SELECT kind, ref, title, snippet(search_index, 3, '[', ']', '…', 16)
                 FROM search_index WHERE search_index MATCH ?1 ORDER BY rank LIMIT ?2",
                query,
            )
        };
        let rows = self
            .conn()
            .query_map(sql, params![query, limit.clamp(1, 1000) * 4], |row| {
                Ok(SearchHit {
                    kind: row.get(0)?,
                    id: row.get(1)?,
                    title: row.get(2)?,
                    snippet: row.get(3)?,
                })
            })?;
        let mut hits: Vec<SearchHit> = rows;
        if !kinds.is_empty() {
            hits.retain(|hit| kinds.contains(&hit.kind.as_str()));
        }
        if *viewer != Viewer::Admin {
            let mut readable = Vec::with_capacity(hits.len());
            for hit in hits {
                if hit.kind != "message" || self.may_read_message(&hit.id, viewer)? {
                    readable.push(hit);
                }
            }
            hits = readable;
        }
        hits.truncate(usize::try_from(limit.clamp(1, 1000)).unwrap_or(20));
        Ok(hits)
    }
}

/// Files one note may name.
const MAX_NOTE_FILES: usize = 100;

impl Tx<'_> {
    /// A decision, interface or warning that names a task or files reaches the agents working on
    /// them: the task's holder and the holders of leases on those files (not the author).
    fn tell_those_concerned(
        &mut self,
        actor: &Actor,
        id: &str,
        kind: &NoteKind,
        title: &str,
        task: Option<TaskId>,
        files: &[String],
    ) -> Result<()> {
        let mut concerned: Vec<(String, String)> = Vec::new();
        if let Some(task) = task
            && let Some(task) = self.read().find_task(task)?
            && let Some(holder) = task.assignee.clone().filter(|_| super::is_held(&task))
        {
            concerned.push((holder, format!("your task {}", task.id)));
        }
        let now = self.now_ms();
        for file in files {
            // A file a note names may be written loosely (`./src/a.rs`); one that is no valid
            // lease path concerns no lease.
            let Ok(pattern) = crate::paths::normalize_lease_path(file) else {
                continue;
            };
            for holder in self.read().lease_holders_overlapping(&pattern, now)? {
                if !concerned.iter().any(|(who, _)| *who == holder) {
                    concerned.push((holder, format!("{} (you hold a lease on it)", pattern)));
                }
            }
        }
        for (agent, what) in concerned {
            if actor.agent() == Some(agent.as_str()) {
                continue;
            }
            let body = format!(
                "new {kind} {id} \"{title}\" by {} concerns {what}. Read it (search {id}) and check that your work fits.",
                actor.name()
            );
            self.notify(&agent, &body)?;
        }
        Ok(())
    }

    pub fn add_note(&mut self, actor: &Actor, new: NewNote) -> Result<Note> {
        let title = new.title.trim().to_string();
        validate_text("title", &title, 200, true)?;
        let body = new.body.unwrap_or_default();
        validate_text("body", &body, 64 * 1024, false)?;
        for tag in &new.tags {
            validate_name("tag", tag)?;
        }
        if new.files.len() > MAX_NOTE_FILES {
            return Err(CoreError::invalid(format!(
                "{} files named; a note may name at most {MAX_NOTE_FILES}",
                new.files.len()
            )));
        }
        for file in &new.files {
            validate_text("file", file, 1000, true)?;
        }
        let supersedes = match &new.supersedes {
            Some(id) => {
                let old = self.read().note(id)?;
                if let Some(newer) = &old.superseded_by {
                    return Err(CoreError::conflict(format!(
                        "{} is already superseded by {newer}; supersede that one instead",
                        old.id
                    )));
                }
                Some(old)
            }
            None => None,
        };
        let task = match new.task {
            Some(task) => Some(self.read().task(task)?.id),
            None => match actor.agent() {
                Some(agent) => self.read().first_held_task(agent)?,
                None => None,
            },
        };
        let row_id = self.conn().insert(
            "INSERT INTO notes (author, kind, title, body, tags, files, task_id, supersedes, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                actor.name(),
                new.kind.as_str(),
                title,
                body,
                to_json_list(&new.tags)?,
                to_json_list(&new.files)?,
                task.map(|t| t.0),
                supersedes.as_ref().map(|old| parse_note_id(&old.id)).transpose()?,
                self.now_ms()
            ],
            "id",
        )?;
        let id = format!("N-{row_id}");
        let tags_text = new.tags.join(" ");
        self.index_search("note", &id, &title, &format!("{body} {tags_text}"))?;
        let added = NoteAdded {
            id: id.clone(),
            kind: new.kind,
            title: title.clone(),
            supersedes: new.supersedes.clone(),
        };
        self.emit(
            actor.name(),
            task,
            actor.agent(),
            EventPayload::NoteAdded(added),
        )?;
        if matches!(
            new.kind,
            NoteKind::Decision | NoteKind::Interface | NoteKind::Warning
        ) {
            self.tell_those_concerned(actor, &id, &new.kind, &title, new.task, &new.files)?;
        }
        if let Some(old) = supersedes {
            self.conn().execute(
                "UPDATE notes SET superseded_by = ?2 WHERE id = ?1",
                params![parse_note_id(&old.id)?, row_id],
            )?;
            let superseded = NoteSuperseded {
                id: old.id.clone(),
                by: id.clone(),
            };
            self.emit(
                actor.name(),
                old.task,
                None,
                EventPayload::NoteSuperseded(superseded),
            )?;
            // Whoever may have built on the old note must hear that it changed.
            let others = self
                .read()
                .agents()?
                .into_iter()
                .any(|a| a.name != actor.name());
            if others {
                self.send_message(
                    &Actor::System,
                    NewMessage {
                        to: "all".to_string(),
                        body: format!(
                            "{} {} \"{}\" was superseded by {id} \"{title}\" ({}). Check that your work still fits.",
                            old.kind, old.id, old.title, actor.name()
                        ),
                        thread: None,
                        kind: MessageKind::Alert,
                        urgent: true,
                    },
                )?;
            }
        }
        self.read().note(&id)
    }

    pub(crate) fn index_search(
        &mut self,
        kind: &str,
        id: &str,
        title: &str,
        body: &str,
    ) -> Result<()> {
        if self.conn().is_postgres() {
            // PostgreSQL keeps its `tsvector` column itself, at no cost a batch would spare.
            return self.index_now(kind, id, title, body);
        }
        self.conn().execute(
            "INSERT INTO search_backlog (kind, ref, title, body) VALUES (?1, ?2, ?3, ?4)",
            params![kind, id, title, body],
        )?;
        Ok(())
    }

    /// Moves the oldest `max` entries waiting in the search backlog into the full-text index,
    /// in the order they were written; answers how many. (SQLite only: PostgreSQL has none.)
    pub(crate) fn index_search_backlog(&mut self, max: usize) -> Result<usize> {
        let waiting: Vec<(i64, String, String, String, String)> = self.conn().query_map(
            "SELECT id, kind, ref, title, body FROM search_backlog ORDER BY id LIMIT ?1",
            params![max as i64],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )?;
        let Some(last) = waiting.last().map(|entry| entry.0) else {
            return Ok(0);
        };
        for (_, kind, id, title, body) in &waiting {
            self.index_now(kind, id, title, body)?;
        }
        self.conn()
            .execute("DELETE FROM search_backlog WHERE id <= ?1", params![last])?;
        Ok(waiting.len())
    }

    fn index_now(&mut self, kind: &str, id: &str, title: &str, body: &str) -> Result<()> {
        // Only a task's result is indexed again (done again after a reopen). Its row is found by
        // rowid (task T-n is row -n), never by a scan of the index's unindexed columns; notes and
        // messages take positive rowids, given explicitly so that they never run into the
        // negative range.
        if kind == "task" {
            let row = id.parse::<TaskId>()?.0;
            self.conn()
                .execute("DELETE FROM search_index WHERE rowid = ?1", params![-row])?;
            self.conn().execute(
                "INSERT INTO search_index (rowid, kind, ref, title, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![-row, kind, id, title, body],
            )?;
        } else {
            self.conn().execute(
                "INSERT INTO search_index (rowid, kind, ref, title, body) VALUES (
                    (SELECT coalesce(max(rowid), 0) + 1 FROM search_index WHERE rowid > 0),
                    ?1, ?2, ?3, ?4)",
                params![kind, id, title, body],
            )?;
        }
        Ok(())
    }
}
