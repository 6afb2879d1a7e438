//! File leases: paths and globs held exclusively or shared, with a TTL and fencing tokens.
//!
//! A request for several paths is granted whole or not at all. Leases past their expiry count as
//! free (the sweeper deletes them with an event); re-acquiring a lease one already holds extends
//! it and gives it a new, larger fencing token.

use rusqlite::{Row, params};

use super::{Reader, Tx, ms_to_time, validate_text};
use crate::error::{CoreError, LeaseConflict, Result};
use crate::event::{LeaseExpired, LeaseGranted, LeaseReleased};
use crate::model::EventPayload;
use crate::model::{Actor, Lease, LeaseMode, LeaseRelease, LeaseRequest, TaskId};
use crate::paths::{self, LeasePattern};

const LEASE_COLUMNS: &str =
    "pattern, mode, holder, task_id, reason, fencing_token, acquired_at, expires_at";

/// The longest a lease may be asked for (a day); longer work renews.
pub const MAX_LEASE_TTL_SECS: i64 = 24 * 3600;
const MAX_PATHS: usize = 100;

fn lease_from_row(row: &Row<'_>) -> rusqlite::Result<Lease> {
    let mode: String = row.get(1)?;
    Ok(Lease {
        path: row.get(0)?,
        mode: mode.parse().unwrap_or_default(),
        holder: row.get(2)?,
        task: row.get::<_, Option<i64>>(3)?.map(TaskId),
        reason: row.get(4)?,
        fencing_token: row.get(5)?,
        acquired_at: ms_to_time(row.get(6)?),
        expires_at: ms_to_time(row.get(7)?),
    })
}

fn normalize_all(inputs: &[String]) -> Result<Vec<LeasePattern>> {
    if inputs.is_empty() {
        return Err(CoreError::invalid("no paths given"));
    }
    if inputs.len() > MAX_PATHS {
        return Err(CoreError::invalid(format!(
            "{} paths in one request; the limit is {MAX_PATHS}",
            inputs.len()
        )));
    }
    let mut patterns: Vec<LeasePattern> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let pattern = paths::normalize_lease_path(input)?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

impl Reader<'_> {
    /// Leases in force at the reader's time (`now_ms`), ordered by path.
    pub fn leases(&self, now_ms: i64) -> Result<Vec<Lease>> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE expires_at > ?1 ORDER BY pattern, holder"
        );
        let mut statement = self.conn().prepare_cached(&sql)?;
        let rows = statement.query_map(params![now_ms], lease_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The live leases that could overlap `pattern`: for a literal path, those on the path itself,
    /// above it or beneath it, and every glob; for a glob, all of them. Saves reading every lease
    /// when many are held.
    fn leases_near(&self, pattern: &LeasePattern, now_ms: i64) -> Result<Vec<Lease>> {
        if pattern.is_glob() {
            return self.leases(now_ms);
        }
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE expires_at > ?1 AND (
                pattern = ?2
                OR instr(pattern, '*') > 0 OR instr(pattern, '?') > 0 OR instr(pattern, '[') > 0
                OR substr(?2, 1, length(pattern) + 1) = pattern || '/'
                OR substr(pattern, 1, length(?2) + 1) = ?2 || '/')
             ORDER BY pattern, holder"
        );
        let mut statement = self.conn().prepare_cached(&sql)?;
        let rows = statement.query_map(params![now_ms, pattern.as_str()], lease_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn leases_of(&self, holder: &str, now_ms: i64) -> Result<Vec<Lease>> {
        let mut leases = self.leases(now_ms)?;
        leases.retain(|lease| lease.holder == holder);
        Ok(leases)
    }

    /// The live leases held by others that stand against `holder` taking `pattern` in `mode`.
    pub fn lease_conflicts(
        &self,
        holder: &str,
        pattern: &LeasePattern,
        mode: LeaseMode,
        now_ms: i64,
    ) -> Result<Vec<LeaseConflict>> {
        Ok(conflicts_with(&self.leases(now_ms)?, holder, pattern, mode))
    }
}

/// Which of `live` stand against `holder` taking `pattern` in `mode`.
fn conflicts_with(
    live: &[Lease],
    holder: &str,
    pattern: &LeasePattern,
    mode: LeaseMode,
) -> Vec<LeaseConflict> {
    live.iter()
        .filter(|lease| lease.holder != holder)
        .filter(|lease| !(mode == LeaseMode::Shared && lease.mode == LeaseMode::Shared))
        .filter(|lease| stored_pattern_overlaps(pattern, &lease.path))
        .map(|lease| LeaseConflict {
            requested: pattern.as_str().to_string(),
            held: lease.path.clone(),
            holder: lease.holder.clone(),
            task: lease.task,
            mode: lease.mode,
            expires_at: lease.expires_at,
        })
        .collect()
}

/// Whether `pattern` overlaps a stored (already normalized) lease path. Two literal paths overlap
/// when one is the other or lies beneath it, which a string comparison decides without parsing;
/// anything with a glob goes through the exact glob intersection.
fn stored_pattern_overlaps(pattern: &LeasePattern, stored: &str) -> bool {
    let stored_is_glob = stored.contains(['*', '?', '[']);
    if !stored_is_glob && !pattern.is_glob() {
        let requested = pattern.as_str();
        let beneath = |inner: &str, outer: &str| {
            inner.len() > outer.len()
                && inner.starts_with(outer)
                && inner.as_bytes()[outer.len()] == b'/'
        };
        return requested == stored || beneath(requested, stored) || beneath(stored, requested);
    }
    match paths::normalize_lease_path(stored) {
        Ok(held) => paths::overlaps(pattern, &held),
        // A stored lease always normalized once; if it no longer does, be safe: it conflicts.
        Err(_) => true,
    }
}

impl Tx<'_> {
    /// Grants every requested lease to `holder`, or none (with the conflicts named).
    pub fn acquire_leases(&mut self, holder: &str, request: LeaseRequest) -> Result<Vec<Lease>> {
        let patterns = normalize_all(&request.paths)?;
        if let Some(reason) = &request.reason {
            validate_text("reason", reason, 1000, false)?;
        }
        let ttl = request.ttl_secs.unwrap_or(self.config().lease_ttl_secs);
        if !(1..=MAX_LEASE_TTL_SECS).contains(&ttl) {
            return Err(CoreError::invalid(format!(
                "ttl must be between 1 and {MAX_LEASE_TTL_SECS} seconds, not {ttl}"
            )));
        }
        let task = match request.task {
            Some(task) => Some(self.read().task(task)?.id),
            None => self.read().held_tasks(holder)?.first().map(|task| task.id),
        };
        let now = self.now_ms();
        self.purge_expired_leases()?;
        let mut conflicts = Vec::new();
        let mut mine = Vec::new();
        for pattern in &patterns {
            let candidates = self.read().leases_near(pattern, now)?;
            conflicts.extend(conflicts_with(&candidates, holder, pattern, request.mode));
            mine.extend(
                candidates
                    .into_iter()
                    .filter(|lease| lease.holder == holder),
            );
        }
        if !conflicts.is_empty() {
            return Err(CoreError::LeaseConflict(conflicts));
        }
        let expires = now + ttl * 1000;
        let mut granted = Vec::with_capacity(patterns.len());
        for pattern in &patterns {
            let fencing_token = self.next_fencing_token()?;
            let renewed = self.conn().execute(
                "UPDATE leases SET mode = ?3, task_id = ?4, reason = COALESCE(?5, reason),
                    fencing_token = ?6, expires_at = ?7
                 WHERE holder = ?1 AND pattern = ?2",
                params![
                    holder,
                    pattern.as_str(),
                    request.mode.as_str(),
                    task.map(|t| t.0),
                    request.reason,
                    fencing_token,
                    expires
                ],
            )? == 1;
            if !renewed {
                self.conn().execute(
                    "INSERT INTO leases (pattern, mode, holder, task_id, reason, fencing_token,
                        acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        pattern.as_str(),
                        request.mode.as_str(),
                        holder,
                        task.map(|t| t.0),
                        request.reason,
                        fencing_token,
                        now,
                        expires
                    ],
                )?;
            }
            let kind = if renewed {
                EventPayload::LeaseRenewed
            } else {
                EventPayload::LeaseGranted
            };
            let granted_data = LeaseGranted {
                path: pattern.as_str().to_string(),
                mode: request.mode,
                ttl_secs: ttl,
                fencing_token,
                reason: request.reason.clone(),
            };
            self.emit(holder, task, Some(holder), kind(granted_data))?;
            let acquired_at = mine
                .iter()
                .find(|lease| renewed && lease.holder == holder && lease.path == pattern.as_str())
                .map_or_else(|| super::ms_to_time(now), |lease| lease.acquired_at);
            granted.push(Lease {
                path: pattern.as_str().to_string(),
                mode: request.mode,
                holder: holder.to_string(),
                task,
                reason: request.reason.clone(),
                fencing_token,
                acquired_at,
                expires_at: super::ms_to_time(expires),
            });
        }
        Ok(granted)
    }

    /// Extends every live lease the holder has (used when it touches files).
    pub fn renew_leases(&mut self, holder: &str) -> Result<()> {
        let expires = self.now_ms() + self.config().lease_ttl_secs * 1000;
        self.conn().execute(
            "UPDATE leases SET expires_at = MAX(expires_at, ?2) WHERE holder = ?1 AND expires_at > ?3",
            params![holder, expires, self.now_ms()],
        )?;
        Ok(())
    }

    /// Releases leases by path. The holder releases its own; the admin, with `force`, anyone's.
    pub fn release_leases(&mut self, actor: &Actor, release: LeaseRelease) -> Result<Vec<Lease>> {
        let patterns = normalize_all(&release.paths)?;
        if release.force && !actor.is_admin() {
            return Err(CoreError::forbidden(
                "only an admin may force-release leases",
            ));
        }
        let now = self.now_ms();
        let live = self.read().leases(now)?;
        let mut released = Vec::new();
        for pattern in &patterns {
            let matching: Vec<&Lease> =
                live.iter().filter(|l| l.path == pattern.as_str()).collect();
            let mine: Vec<&Lease> = matching
                .iter()
                .copied()
                .filter(|lease| actor.agent() == Some(lease.holder.as_str()) || release.force)
                .collect();
            if mine.is_empty() {
                return Err(match matching.first() {
                    Some(lease) if actor.is_admin() => CoreError::forbidden(format!(
                        "{} is held by {}; pass --force to release it as admin",
                        lease.path, lease.holder
                    )),
                    Some(lease) => CoreError::forbidden(format!(
                        "{} is held by {}, not by you; only its holder or an admin may release it",
                        lease.path, lease.holder
                    )),
                    None => CoreError::not_found(format!("no lease on {}", pattern.as_str())),
                });
            }
            released.extend(mine.into_iter().cloned());
        }
        for lease in &released {
            self.delete_lease(actor.name(), lease, "released")?;
        }
        Ok(released)
    }

    /// Releases every lease tied to a task (when it is done, failed, cancelled or reassigned).
    pub(crate) fn release_task_leases(
        &mut self,
        actor: &str,
        task: TaskId,
        why: &str,
    ) -> Result<()> {
        let leases: Vec<Lease> = self
            .read()
            .leases(self.now_ms())?
            .into_iter()
            .filter(|lease| lease.task == Some(task))
            .collect();
        for lease in &leases {
            self.delete_lease(actor, lease, why)?;
        }
        Ok(())
    }

    /// Releases every lease an agent holds; returns their paths.
    pub(crate) fn release_all_leases(
        &mut self,
        actor: &str,
        holder: &str,
        why: &str,
    ) -> Result<Vec<String>> {
        let leases = self.read().leases_of(holder, self.now_ms())?;
        for lease in &leases {
            self.delete_lease(actor, lease, why)?;
        }
        Ok(leases.into_iter().map(|lease| lease.path).collect())
    }

    fn delete_lease(&mut self, actor: &str, lease: &Lease, why: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM leases WHERE holder = ?1 AND pattern = ?2",
            params![lease.holder, lease.path],
        )?;
        let released = LeaseReleased {
            path: lease.path.clone(),
            why: why.to_string(),
            fencing_token: lease.fencing_token,
        };
        self.emit(
            actor,
            lease.task,
            Some(&lease.holder),
            EventPayload::LeaseReleased(released),
        )
    }

    /// Deletes leases past their expiry, each with a `lease.expired` event.
    pub(crate) fn purge_expired_leases(&mut self) -> Result<Vec<Lease>> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE expires_at <= ?1");
        let expired: Vec<Lease> = {
            let mut statement = self.conn().prepare_cached(&sql)?;
            let rows = statement.query_map(params![self.now_ms()], lease_from_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for lease in &expired {
            self.conn().execute(
                "DELETE FROM leases WHERE holder = ?1 AND pattern = ?2",
                params![lease.holder, lease.path],
            )?;
            let expired = LeaseExpired {
                path: lease.path.clone(),
                fencing_token: lease.fencing_token,
            };
            self.emit(
                crate::model::SYSTEM_NAME,
                lease.task,
                Some(&lease.holder),
                EventPayload::LeaseExpired(expired),
            )?;
        }
        Ok(expired)
    }

    fn next_fencing_token(&mut self) -> Result<i64> {
        Ok(self.conn().query_row(
            "UPDATE counters SET value = value + 1 WHERE name = 'fencing_token' RETURNING value",
            [],
            |row| row.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_literal_fast_path_agrees_with_the_glob_intersection() {
        let paths = [
            "src",
            "src/a.rs",
            "src/a.rs/x",
            "srcx/a.rs",
            "src/b.rs",
            "docs/src",
            "a",
            "ab",
        ];
        for requested in paths {
            for stored in paths {
                let pattern = paths::normalize_lease_path(requested).expect("pattern");
                let held = paths::normalize_lease_path(stored).expect("held");
                assert_eq!(
                    stored_pattern_overlaps(&pattern, stored),
                    paths::overlaps(&pattern, &held),
                    "{requested} vs {stored}"
                );
            }
        }
    }
}
