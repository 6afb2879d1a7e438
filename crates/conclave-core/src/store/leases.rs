//! File leases: paths and globs held exclusively or shared, with a TTL and fencing tokens.
//!
//! A request for several paths is granted whole or not at all. Leases past their expiry count as
//! free (the sweeper deletes them with an event); re-acquiring a lease one already holds extends
//! it and gives it a new, larger fencing token.

use super::db::{Row, params};

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
/// The longest lease on a glob that can cover the whole tree (`**`, `*`, `**/*.rs`): such a lease
/// stops every other agent's edits, so it must be renewed by work in progress, not parked.
pub const MAX_WHOLE_TREE_TTL_SECS: i64 = 600;
/// Paths in one lease request.
pub const MAX_PATHS: usize = 100;
/// Conflicts named in a refusal (the first found; the answer says when there may be more).
pub const MAX_REPORTED_CONFLICTS: usize = 5;

fn lease_from_row(row: &Row<'_>) -> Result<Lease> {
    let mode: String = row.get(1)?;
    Ok(Lease {
        path: row.get(0)?,
        mode: mode.parse().unwrap_or_default(),
        holder: row.get(2)?,
        task: row.get::<Option<i64>>(3)?.map(TaskId),
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
        let rows = self
            .conn()
            .query_map(&sql, params![now_ms], lease_from_row)?;
        Ok(rows)
    }

    /// How many leases are in force at `now_ms`, counted on the expiry index.
    pub fn live_lease_count(&self, now_ms: i64) -> Result<usize> {
        let count: i64 = self.conn().query_row(
            "SELECT count(*) FROM leases WHERE expires_at > ?1",
            params![now_ms],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// The live leases that could overlap `pattern`, found through indexes rather than by reading
    /// every lease: for a literal path (or a glob's literal prefix `P`), the leases on `P`, on its
    /// ancestors and beneath it, and the globs whose own literal prefix is related to `P`. A glob
    /// that starts with a wildcard (`**/*.rs`) can cover anything and is compared with every lease.
    pub(crate) fn leases_near(&self, pattern: &LeasePattern, now_ms: i64) -> Result<Vec<Lease>> {
        let prefix = pattern.literal_prefix();
        if prefix.is_empty() {
            return self.leases(now_ms);
        }
        let mut near = self.leases_on(&ancestors_and_self(prefix), now_ms)?;
        let beneath = format!(
            "SELECT {LEASE_COLUMNS} FROM leases
             WHERE pattern > ?1 || '/' AND pattern < ?1 || '0' AND expires_at > ?2"
        );
        let rows = self
            .conn()
            .query_map(&beneath, params![prefix, now_ms], lease_from_row)?;
        for lease in rows {
            // Globs are read below, once.
            if !is_glob_text(&lease.path) {
                near.push(lease);
            }
        }
        let globs =
            format!("SELECT {LEASE_COLUMNS} FROM leases WHERE is_glob = 1 AND expires_at > ?1");
        let rows = self
            .conn()
            .query_map(&globs, params![now_ms], lease_from_row)?;
        for lease in rows {
            let related = paths::normalize_lease_path(&lease.path).map_or(true, |held| {
                let held_prefix = held.literal_prefix();
                held_prefix.is_empty() || prefixes_related(held_prefix, prefix)
            });
            if related {
                near.push(lease);
            }
        }
        Ok(near)
    }

    /// The holders of live leases that overlap `pattern`, each once.
    pub fn lease_holders_overlapping(
        &self,
        pattern: &LeasePattern,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        let mut holders: Vec<String> = Vec::new();
        for lease in self.leases_near(pattern, now_ms)? {
            if !holders.contains(&lease.holder) && stored_pattern_overlaps(pattern, &lease.path) {
                holders.push(lease.holder);
            }
        }
        Ok(holders)
    }

    /// The live leases tied to `task`.
    fn leases_of_task(&self, task: TaskId, now_ms: i64) -> Result<Vec<Lease>> {
        let sql =
            format!("SELECT {LEASE_COLUMNS} FROM leases WHERE task_id = ?1 AND expires_at > ?2");
        let rows = self
            .conn()
            .query_map(&sql, params![task.0, now_ms], lease_from_row)?;
        Ok(rows)
    }

    /// The live leases on exactly these patterns.
    fn leases_on(&self, patterns: &[&str], now_ms: i64) -> Result<Vec<Lease>> {
        // The patterns go as one JSON list, unpacked by each engine's own JSON function. On
        // PostgreSQL as an array (`= ANY`), not a set: it then looks each pattern up in the
        // index instead of scanning every lease.
        let test = if self.conn().is_postgres() {
            "= ANY (ARRAY(SELECT jsonb_array_elements_text(?1::jsonb)))"
        } else {
            "IN (SELECT value FROM json_each(?1))"
        };
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases
             WHERE pattern {test} AND expires_at > ?2"
        );
        let list = serde_json::to_string(patterns)?;
        let rows = self
            .conn()
            .query_map(&sql, params![list, now_ms], lease_from_row)?;
        Ok(rows)
    }

    /// How many live leases `holder` has.
    fn lease_count(&self, holder: &str, now_ms: i64) -> Result<usize> {
        let count: i64 = self.conn().query_row(
            "SELECT count(*) FROM leases WHERE holder = ?1 AND expires_at > ?2",
            params![holder, now_ms],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    pub fn leases_of(&self, holder: &str, now_ms: i64) -> Result<Vec<Lease>> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE holder = ?1 AND expires_at > ?2 ORDER BY pattern"
        );
        let rows = self
            .conn()
            .query_map(&sql, params![holder, now_ms], lease_from_row)?;
        Ok(rows)
    }

    /// The live leases held by others that stand against `holder` taking `pattern` in `mode`.
    pub fn lease_conflicts(
        &self,
        holder: &str,
        pattern: &LeasePattern,
        mode: LeaseMode,
        now_ms: i64,
    ) -> Result<Vec<LeaseConflict>> {
        let mut conflicts = Vec::new();
        conflicts_with(
            &self.leases_near(pattern, now_ms)?,
            holder,
            pattern,
            mode,
            &mut conflicts,
        );
        Ok(conflicts)
    }
}

/// `path` and each of its ancestors (`a/b/c`, `a/b`, `a`).
fn ancestors_and_self(path: &str) -> Vec<&str> {
    let mut all = vec![path];
    all.extend(path.match_indices('/').map(|(at, _)| &path[..at]));
    all
}

/// Whether one literal path is the other or lies beneath it.
fn prefixes_related(a: &str, b: &str) -> bool {
    let beneath = |inner: &str, outer: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    a == b || beneath(a, b) || beneath(b, a)
}

/// Whether stored (normalized) lease text is a glob: `*`, `?` and `[` are always wildcards in
/// a normalized pattern.
fn is_glob_text(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Adds to `found` the leases of `live` that stand against `holder` taking `pattern` in `mode`,
/// stopping once [`MAX_REPORTED_CONFLICTS`] are known: a refusal names a few, never every pair.
fn conflicts_with(
    live: &[Lease],
    holder: &str,
    pattern: &LeasePattern,
    mode: LeaseMode,
    found: &mut Vec<LeaseConflict>,
) {
    let conflicting = live
        .iter()
        .filter(|lease| lease.holder != holder)
        .filter(|lease| !(mode == LeaseMode::Shared && lease.mode == LeaseMode::Shared))
        .filter(|lease| {
            !found
                .iter()
                .any(|known| known.held == lease.path && known.holder == lease.holder)
        })
        .filter(|lease| stored_pattern_overlaps(pattern, &lease.path))
        .take(MAX_REPORTED_CONFLICTS.saturating_sub(found.len()))
        .map(|lease| LeaseConflict {
            requested: pattern.as_str().to_string(),
            held: lease.path.clone(),
            holder: lease.holder.clone(),
            task: lease.task,
            mode: lease.mode,
            expires_at: lease.expires_at,
        });
    let conflicting: Vec<LeaseConflict> = conflicting.collect();
    found.extend(conflicting);
}

/// Whether `pattern` overlaps a stored (already normalized) lease path. Two literal paths overlap
/// when one is the other or lies beneath it, which a string comparison decides without parsing;
/// anything with a glob goes through the exact glob intersection.
fn stored_pattern_overlaps(pattern: &LeasePattern, stored: &str) -> bool {
    if !is_glob_text(stored) && !pattern.is_glob() {
        return prefixes_related(pattern.as_str(), stored);
    }
    match paths::normalize_lease_path(stored) {
        Ok(held) => paths::overlaps(pattern, &held),
        // A stored lease always normalized once; if it no longer does, be safe: it conflicts.
        Err(_) => true,
    }
}

impl Tx<'_> {
    /// Grants every requested lease to `holder`, or none (with the first conflicts named).
    ///
    /// Under the writer lock this reads only the leases that can overlap each requested pattern
    /// (see `leases_near`), compares each pair at most once, and stops at
    /// [`MAX_REPORTED_CONFLICTS`].
    pub fn acquire_leases(&mut self, holder: &str, request: LeaseRequest) -> Result<Vec<Lease>> {
        let patterns = normalize_all(&request.paths)?;
        if let Some(reason) = &request.reason {
            validate_text("reason", reason, 1000, false)?;
        }
        let whole_tree = patterns.iter().any(LeasePattern::covers_whole_tree);
        let ttl = match request.ttl_secs {
            Some(ttl) if whole_tree && ttl > MAX_WHOLE_TREE_TTL_SECS => {
                return Err(CoreError::invalid(format!(
                    "a lease on a glob that covers the whole tree may last at most \
                     {MAX_WHOLE_TREE_TTL_SECS} seconds, not {ttl}; lease a directory or renew it"
                )));
            }
            Some(ttl) => ttl,
            None if whole_tree => self.config().lease_ttl_secs.min(MAX_WHOLE_TREE_TTL_SECS),
            None => self.config().lease_ttl_secs,
        };
        if !(1..=MAX_LEASE_TTL_SECS).contains(&ttl) {
            return Err(CoreError::invalid(format!(
                "ttl must be between 1 and {MAX_LEASE_TTL_SECS} seconds, not {ttl}"
            )));
        }
        let task = match request.task {
            Some(task) => {
                let task = self.read().task(task)?;
                // A lease tied to someone else's task would vanish when that task ends.
                if task.assignee.as_deref() != Some(holder) {
                    return Err(CoreError::forbidden(format!(
                        "{} is not your task ({}); a lease can only serve a task you hold",
                        task.id,
                        task.assignee.as_deref().map_or_else(
                            || "nobody holds it".to_string(),
                            |a| format!("held by {a}")
                        )
                    )));
                }
                Some(task.id)
            }
            None => self.read().held_tasks(holder)?.first().map(|task| task.id),
        };
        let now = self.now_ms();
        self.purge_expired_leases()?;
        let mut conflicts = Vec::new();
        let mut mine = Vec::new();
        for pattern in &patterns {
            let candidates = self.read().leases_near(pattern, now)?;
            conflicts_with(&candidates, holder, pattern, request.mode, &mut conflicts);
            if conflicts.len() >= MAX_REPORTED_CONFLICTS {
                break;
            }
            mine.extend(
                candidates
                    .into_iter()
                    .filter(|lease| lease.holder == holder && lease.path == pattern.as_str()),
            );
        }
        if !conflicts.is_empty() {
            return Err(CoreError::LeaseConflict(conflicts));
        }
        let limit = self.config().max_leases_per_agent;
        let new = patterns
            .iter()
            .filter(|pattern| !mine.iter().any(|lease| lease.path == pattern.as_str()))
            .count();
        let held = self.read().lease_count(holder, now)?;
        if held + new > limit {
            return Err(CoreError::invalid(format!(
                "{holder} holds {held} leases and asks for {new} more; the limit is {limit} per \
                 agent: release what you no longer edit, or lease a directory"
            )));
        }
        let expires = now + ttl * 1000;
        let mut granted = Vec::with_capacity(patterns.len());
        for pattern in &patterns {
            let fencing_token = self.next_fencing_token()?;
            let renewed = self.conn().execute(
                "UPDATE leases SET mode = ?3, task_id = ?4, reason = COALESCE(?5, reason),
                    fencing_token = ?6, expires_at = ?7, ttl_ms = ?8
                 WHERE holder = ?1 AND pattern = ?2",
                params![
                    holder,
                    pattern.as_str(),
                    request.mode.as_str(),
                    task.map(|t| t.0),
                    request.reason,
                    fencing_token,
                    expires,
                    ttl * 1000
                ],
            )? == 1;
            if !renewed {
                self.conn().execute(
                    "INSERT INTO leases (pattern, mode, holder, task_id, reason, fencing_token,
                        acquired_at, expires_at, ttl_ms, is_glob)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        pattern.as_str(),
                        request.mode.as_str(),
                        holder,
                        task.map(|t| t.0),
                        request.reason,
                        fencing_token,
                        now,
                        expires,
                        ttl * 1000,
                        pattern.is_glob()
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

    /// Extends every live lease the holder has by its own TTL (used when it touches files): a
    /// 5-second lease stays a 5-second lease.
    pub fn renew_leases(&mut self, holder: &str) -> Result<()> {
        let now = self.now_ms();
        self.conn().execute(
            "UPDATE leases SET expires_at = MAX(expires_at, ?2 + COALESCE(ttl_ms, ?3))
             WHERE holder = ?1 AND expires_at > ?2",
            params![holder, now, self.config().lease_ttl_secs * 1000],
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
        let texts: Vec<&str> = patterns.iter().map(LeasePattern::as_str).collect();
        let live = self.read().leases_on(&texts, now)?;
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
        let leases = self.read().leases_of_task(task, self.now_ms())?;
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
            self.conn()
                .query_map(&sql, params![self.now_ms()], lease_from_row)?
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
        self.conn().query_row(
            "UPDATE counters SET value = value + 1 WHERE name = 'fencing_token' RETURNING value",
            params![],
            |row| row.get(0),
        )
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
