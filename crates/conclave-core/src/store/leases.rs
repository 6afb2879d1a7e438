//! File leases: paths and globs held exclusively or shared, with a TTL and fencing tokens.
//!
//! A request for several paths is granted whole or not at all. Leases past their expiry count as
//! free (the sweeper deletes them with an event); re-acquiring a lease one already holds extends
//! it and gives it a new, larger fencing token.
//!
//! # Checking a request outside the writer lock
//!
//! Comparing a request's globs with every nearby held glob is the costly part of a grant (at the
//! caps, 100 asked × 256 held long globs), and everything under the writer lock stalls every
//! other write. So the comparison runs first on a read snapshot ([`Reader::lease_snapshot`]),
//! which records which lease rows of other holders overlap the request, and the grant under the
//! lock ([`Tx::acquire_leases_after`]) compares only what the snapshot cannot vouch for:
//!
//! - A lease row never changes its holder or its pattern (a re-grant after a release is a new
//!   row), and row ids only grow (`AUTOINCREMENT` on SQLite; on PostgreSQL writes are serialized
//!   by the store's lock, so ids are handed out in commit order). Rows with an id above the
//!   snapshot's largest are compared under the lock, but only up to a fixed budget
//!   ([`MAX_PAIRS_UNDER_LOCK`] requested × new-row pairs; only rows of other holders whose mode
//!   could refuse the request count).
//! - A row the snapshot found overlapping is re-read under the lock by id: its mode (a renewal
//!   may turn shared into exclusive) and its expiry are judged then, without comparing again.
//! - Any other row of the snapshot does not overlap the request, whatever happens to its mode
//!   or expiry. The snapshot reads rows whatever their expiry, so a clock that steps back cannot
//!   revive a lease it skipped.
//!
//! The work under the lock is therefore bounded in every case: when the snapshot cannot vouch for
//! the request within the budget, the grant does no comparison at all and answers
//! [`SnapshotStale`] (as [`CoreError::LeaseSnapshotStale`] from [`Tx::acquire_leases_after`]),
//! writing nothing; the server takes a fresh snapshot and tries again a bounded number of times.
//! That happens when more rows were granted since the snapshot than the budget allows (unless
//! rows the snapshot vouches for already refuse the request), and when the snapshot stopped at
//! [`MAX_REPORTED_CONFLICTS`] conflicts and none of them still stands: rows it never examined
//! could conflict (a request racing the release of every lease it collided with). Comparing
//! everything under the lock is left to [`Tx::acquire_leases`], which takes no snapshot.

use super::db::{Row, params};

use super::{Reader, Tx, ms_to_time, validate_text};
use crate::error::{CoreError, LeaseConflict, Result};
use crate::event::{LeaseExpired, LeaseGranted, LeaseReleased};
use crate::model::EventPayload;
use crate::model::{Actor, Lease, LeaseMode, LeaseRelease, LeaseRequest, TaskId};
use crate::paths::{self, LeasePattern};

const LEASE_COLUMNS: &str =
    "pattern, mode, holder, task_id, reason, fencing_token, acquired_at, expires_at";
/// [`LEASE_COLUMNS`] after the row id, for [`HeldRow`].
const HELD_COLUMNS: &str =
    "id, pattern, mode, holder, task_id, reason, fencing_token, acquired_at, expires_at";
/// "Whatever its expiry", as the `now_ms` of a lease query.
const ANY_EXPIRY: i64 = i64::MIN;

/// The longest a lease may be asked for (a day); longer work renews.
pub const MAX_LEASE_TTL_SECS: i64 = 24 * 3600;
/// The longest lease on a glob that can cover the whole tree (`**`, `*`, `**/*.rs`): such a lease
/// stops every other agent's edits, so it must be renewed by work in progress, not parked.
pub const MAX_WHOLE_TREE_TTL_SECS: i64 = 600;
/// Paths in one lease request.
pub const MAX_PATHS: usize = 100;
/// Conflicts named in a refusal (the first found; the answer says when there may be more).
pub const MAX_REPORTED_CONFLICTS: usize = 5;
/// The most requested × held pairs a grant after a snapshot compares under the writer lock
/// (rows granted since the snapshot × patterns asked). Each comparison is bounded by the
/// pattern caps, so this bounds the time every other write waits for a grant; past it the grant
/// answers [`SnapshotStale`] instead of comparing. The whole request at the caps is 25,600 pairs.
pub const MAX_PAIRS_UNDER_LOCK: usize = 2_000;

/// Rows a lease snapshot may read and compare to run in place on a server's request thread
/// ([`Reader::lease_snapshot_within`]); a request near more rows takes a blocking thread.
pub const SNAPSHOT_IN_PLACE_ROWS: usize = 256;

fn lease_from_row(row: &Row<'_>) -> Result<Lease> {
    lease_at(row, 0)
}

/// The lease whose [`LEASE_COLUMNS`] start at column `at`.
fn lease_at(row: &Row<'_>, at: usize) -> Result<Lease> {
    let mode: String = row.get(at + 1)?;
    Ok(Lease {
        path: row.get(at)?,
        mode: mode.parse().unwrap_or_default(),
        holder: row.get(at + 2)?,
        task: row.get::<Option<i64>>(at + 3)?.map(TaskId),
        reason: row.get(at + 4)?,
        fencing_token: row.get(at + 5)?,
        acquired_at: ms_to_time(row.get(at + 6)?),
        expires_at: ms_to_time(row.get(at + 7)?),
    })
}

/// A lease row as a grant compares it: its id, and its pattern parsed once per request.
#[derive(Debug, Clone)]
struct HeldRow {
    id: i64,
    lease: Lease,
    /// `None` when the stored text no longer normalizes (then it is taken to overlap anything).
    pattern: Option<LeasePattern>,
    /// The length of the pattern's literal prefix, read once per row rather than per pair.
    prefix_len: usize,
}

fn held_from_row(row: &Row<'_>) -> Result<HeldRow> {
    let lease = lease_at(row, 1)?;
    Ok(HeldRow::new(row.get(0)?, lease))
}

impl HeldRow {
    fn new(id: i64, lease: Lease) -> HeldRow {
        let pattern = paths::normalize_lease_path(&lease.path).ok();
        let prefix_len = pattern
            .as_ref()
            .map_or(0, |held| held.literal_prefix().len());
        HeldRow {
            id,
            lease,
            pattern,
            prefix_len,
        }
    }

    /// A row whose overlap is already known, left unparsed.
    fn unparsed(id: i64, lease: Lease) -> HeldRow {
        HeldRow {
            id,
            lease,
            pattern: None,
            prefix_len: 0,
        }
    }

    /// The literal prefix of the pattern (empty when it starts with a wildcard).
    fn literal_prefix(&self) -> &str {
        self.pattern
            .as_ref()
            .map_or("", |held| &held.as_str()[..self.prefix_len])
    }

    /// Whether `pattern` overlaps this row. Two literal paths overlap when one is the other or
    /// lies beneath it, which a string comparison decides; anything with a glob goes through the
    /// exact glob intersection.
    fn overlaps(&self, pattern: &LeasePattern) -> bool {
        match &self.pattern {
            Some(held) if !held.is_glob() && !pattern.is_glob() => {
                prefixes_related(pattern.as_str(), held.as_str())
            }
            Some(held) => paths::overlaps(pattern, held),
            // A stored lease always normalized once; if it no longer does, be safe: it conflicts.
            None => true,
        }
    }

    /// Whether this row stands against `holder` taking a lease in `mode` at `now_ms` (overlap
    /// aside).
    fn opposes(&self, holder: &str, mode: LeaseMode, now_ms: i64) -> bool {
        lease_opposes(&self.lease, holder, mode, now_ms)
    }

    fn conflict(&self, requested: &LeasePattern) -> LeaseConflict {
        LeaseConflict {
            requested: requested.as_str().to_string(),
            held: self.lease.path.clone(),
            holder: self.lease.holder.clone(),
            task: self.lease.task,
            mode: self.lease.mode,
            expires_at: self.lease.expires_at,
        }
    }
}

/// The lease rows a request's patterns are compared with, read once per request: every glob
/// (each parsed once, not once per requested pattern), every literal when some requested pattern
/// starts with a wildcard, and per requested pattern the literals related to its literal prefix
/// (through the pattern index).
struct NearLeases {
    /// Rows expiring after this count (`ANY_EXPIRY`: all).
    after_ms: i64,
    /// The most literal rows [`NearLeases::near`] reads per pattern (one past a bound).
    row_limit: i64,
    globs: Vec<HeldRow>,
    /// Every literal row, read only when some requested pattern has no literal prefix.
    literals: Option<Vec<HeldRow>>,
}

impl NearLeases {
    fn read(reader: &Reader<'_>, patterns: &[LeasePattern], after_ms: i64) -> Result<NearLeases> {
        match Self::read_within(reader, patterns, after_ms, None)? {
            Some(near) => Ok(near),
            None => unreachable!("an unbounded read is never over its bound"),
        }
    }

    /// Like [`NearLeases::read`], but `None` as soon as either shared list would hold more than
    /// `max_rows` rows (reading at most one row past it): what a request that must stay cheap
    /// gives up on.
    fn read_within(
        reader: &Reader<'_>,
        patterns: &[LeasePattern],
        after_ms: i64,
        max_rows: Option<usize>,
    ) -> Result<Option<NearLeases>> {
        let limit = max_rows.map_or(i64::MAX, |rows| rows as i64 + 1);
        // The live rows of one kind (globs or literals), or `None` past the bound.
        let held = |is_glob: i64| -> Result<Option<Vec<HeldRow>>> {
            let sql = format!(
                "SELECT {HELD_COLUMNS} FROM leases WHERE is_glob = ?1 AND expires_at > ?2 LIMIT ?3"
            );
            let rows =
                reader
                    .conn()
                    .query_map(&sql, params![is_glob, after_ms, limit], held_from_row)?;
            Ok(max_rows.is_none_or(|max| rows.len() <= max).then_some(rows))
        };
        let Some(globs) = held(1)? else {
            return Ok(None);
        };
        let literals = if patterns.iter().any(|p| p.literal_prefix().is_empty()) {
            let Some(rows) = held(0)? else {
                return Ok(None);
            };
            Some(rows)
        } else {
            None
        };
        Ok(Some(NearLeases {
            after_ms,
            row_limit: limit,
            globs,
            literals,
        }))
    }

    /// The rows that could overlap `pattern` (a superset of those that do): literal rows
    /// related to its literal prefix and globs whose own literal prefix is related to it (a
    /// glob that starts with a wildcard is related to everything).
    fn near<'n>(&'n self, reader: &Reader<'_>, pattern: &LeasePattern) -> Result<Vec<HeldRef<'n>>> {
        let prefix = pattern.literal_prefix();
        let related = |row: &HeldRow| {
            let held_prefix = row.literal_prefix();
            held_prefix.is_empty() || prefix.is_empty() || prefixes_related(held_prefix, prefix)
        };
        let mut near: Vec<HeldRef<'n>> = Vec::new();
        if prefix.is_empty() {
            near.extend(self.literals.iter().flatten().map(HeldRef::Shared));
        } else {
            let exact = serde_json::to_string(&ancestors_and_self(prefix))?;
            let sql = format!(
                "SELECT {HELD_COLUMNS} FROM leases
                 WHERE pattern {} AND expires_at > ?2
                 UNION ALL
                 SELECT {HELD_COLUMNS} FROM leases
                 WHERE pattern > ?3 || '/' AND pattern < ?3 || '0' AND is_glob = 0
                   AND expires_at > ?2
                 LIMIT ?4",
                in_json_list(reader),
            );
            let rows = reader.conn().query_map(
                &sql,
                params![exact, self.after_ms, prefix, self.row_limit],
                held_from_row,
            )?;
            near.extend(rows.into_iter().map(HeldRef::Owned));
        }
        near.extend(
            self.globs
                .iter()
                .filter(|row| related(row))
                .map(HeldRef::Shared),
        );
        Ok(near)
    }
}

/// Whether `lease` stands against `holder` taking a lease in `mode` at `now_ms` (overlap aside).
fn lease_opposes(lease: &Lease, holder: &str, mode: LeaseMode, now_ms: i64) -> bool {
    lease.holder != holder
        && !(mode == LeaseMode::Shared && lease.mode == LeaseMode::Shared)
        && lease.expires_at.timestamp_millis() > now_ms
}

/// A row of [`NearLeases::near`]: read for one pattern, or one of the rows read per request.
enum HeldRef<'n> {
    Owned(HeldRow),
    Shared(&'n HeldRow),
}

impl std::ops::Deref for HeldRef<'_> {
    type Target = HeldRow;

    fn deref(&self) -> &HeldRow {
        match self {
            HeldRef::Owned(row) => row,
            HeldRef::Shared(row) => row,
        }
    }
}

/// `IN` a list given as a JSON text parameter (`?1`), unpacked by each engine's own JSON
/// function. On PostgreSQL as an array (`= ANY`), not a set: it then looks each value up in the
/// index instead of scanning every lease.
fn in_json_list(reader: &Reader<'_>) -> &'static str {
    if reader.conn().is_postgres() {
        "= ANY (ARRAY(SELECT jsonb_array_elements_text(?1::jsonb)))"
    } else {
        "IN (SELECT value FROM json_each(?1))"
    }
}

/// What a lease request learned from a read snapshot, outside the writer lock, for
/// [`Tx::acquire_leases_after`] (see the module documentation of `store::leases`).
#[derive(Debug, Clone)]
pub struct LeaseSnapshot {
    holder: String,
    /// The request's normalized patterns, in order: a snapshot serves only its own request.
    patterns: Vec<String>,
    /// Every lease row present in the snapshot has an id at most this.
    max_id: i64,
    /// The rows of other holders overlapping the request: (row id, index of the first requested
    /// pattern found to overlap it), whatever their mode or expiry.
    pub(crate) overlapping: Vec<(i64, usize)>,
    /// Whether the search stopped at [`MAX_REPORTED_CONFLICTS`] conflicts before examining
    /// every candidate row.
    stopped_early: bool,
    /// Pairs compared while taking the snapshot.
    pub compared: usize,
}

/// What a grant did under the writer lock (tests assert on it: counts, not times).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LockedWork {
    /// Requested × held pairs whose overlap was computed under the lock.
    pub compared: usize,
    /// Whether everything was compared under the lock (only [`Tx::acquire_leases`], which has
    /// no snapshot, does that).
    pub full_check: bool,
}

/// Why a grant after a snapshot did not decide: deciding would have taken more than the
/// bounded work under the writer lock. Nothing was written; take a fresh snapshot and retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotStale {
    /// More rows that could refuse the request were granted since the snapshot than
    /// [`MAX_PAIRS_UNDER_LOCK`] allows comparing (`new_rows` is a lower bound).
    TooManyNewRows { new_rows: usize, asked: usize },
    /// The snapshot stopped at its first conflicts and none of them stands any more: rows it
    /// never examined could conflict.
    ConflictsGone,
    /// The snapshot was taken for another holder or another request.
    OtherRequest,
}

impl std::fmt::Display for SnapshotStale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotStale::TooManyNewRows { new_rows, asked } => write!(
                f,
                "at least {new_rows} leases were granted nearby while {asked} paths were checked"
            ),
            SnapshotStale::ConflictsGone => f.write_str(
                "every lease this request collided with was released while it was checked",
            ),
            SnapshotStale::OtherRequest => {
                f.write_str("the lease check was made for another request")
            }
        }
    }
}

/// What a grant after a snapshot came to.
#[derive(Debug)]
pub(crate) enum GrantOutcome {
    Granted(Vec<Lease>),
    /// Nothing compared and nothing written (see [`SnapshotStale`]).
    Stale(SnapshotStale),
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
    #[cfg(test)]
    pub(crate) fn leases_near(&self, pattern: &LeasePattern, now_ms: i64) -> Result<Vec<Lease>> {
        let near = NearLeases::read(self, std::slice::from_ref(pattern), now_ms)?;
        Ok(near
            .near(self, pattern)?
            .into_iter()
            .map(|row| row.lease.clone())
            .collect())
    }

    /// The holders of live leases that overlap `pattern`, each once.
    pub fn lease_holders_overlapping(
        &self,
        pattern: &LeasePattern,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        let near = NearLeases::read(self, std::slice::from_ref(pattern), now_ms)?;
        let mut holders: Vec<String> = Vec::new();
        for row in near.near(self, pattern)? {
            if !holders.contains(&row.lease.holder) && row.overlaps(pattern) {
                holders.push(row.lease.holder.clone());
            }
        }
        Ok(holders)
    }

    /// Which lease rows of others overlap `holder`'s request, read from this (snapshot) reader
    /// outside the writer lock; [`Tx::acquire_leases_after`] then compares under the lock only
    /// what changed since. Rows are read whatever their expiry; the search stops at
    /// [`MAX_REPORTED_CONFLICTS`] rows that would refuse the request now.
    pub fn lease_snapshot(&self, holder: &str, request: &LeaseRequest) -> Result<LeaseSnapshot> {
        match self.snapshot_within(holder, request, None)? {
            Some(snapshot) => Ok(snapshot),
            None => unreachable!("an unbounded snapshot is never over its budget"),
        }
    }

    /// [`Reader::lease_snapshot`] when it reads and compares at most `max_rows` rows (about
    /// [`SNAPSHOT_IN_PLACE_ROWS`] keeps it within tens of microseconds), else `None`, having read
    /// at most one row past that: a server runs a small request's snapshot in place this way,
    /// and hands only a big one to a blocking thread.
    pub fn lease_snapshot_within(
        &self,
        holder: &str,
        request: &LeaseRequest,
        max_rows: usize,
    ) -> Result<Option<LeaseSnapshot>> {
        self.snapshot_within(holder, request, Some(max_rows))
    }

    fn snapshot_within(
        &self,
        holder: &str,
        request: &LeaseRequest,
        max_rows: Option<usize>,
    ) -> Result<Option<LeaseSnapshot>> {
        let patterns = normalize_all(&request.paths)?;
        let now = chrono::Utc::now().timestamp_millis();
        // Read before the rows: a row committed later has a larger id and is compared under
        // the lock, even if the reads below see it too.
        let max_id: i64 = self.conn().query_row(
            "SELECT COALESCE(max(id), 0) FROM leases",
            params![],
            |row| row.get(0),
        )?;
        let Some(near) = NearLeases::read_within(self, &patterns, ANY_EXPIRY, max_rows)? else {
            return Ok(None);
        };
        let mut snapshot = LeaseSnapshot {
            holder: holder.to_string(),
            patterns: patterns.iter().map(|p| p.as_str().to_string()).collect(),
            max_id,
            overlapping: Vec::new(),
            stopped_early: false,
            compared: 0,
        };
        let mut rows_seen = 0;
        let mut conflicts = 0;
        let mut found = std::collections::HashSet::new();
        'patterns: for (index, pattern) in patterns.iter().enumerate() {
            let rows = near.near(self, pattern)?;
            rows_seen += rows.len();
            if max_rows.is_some_and(|max| rows_seen > max) {
                return Ok(None);
            }
            for row in rows {
                if row.lease.holder == holder || found.contains(&row.id) {
                    continue;
                }
                snapshot.compared += 1;
                if !row.overlaps(pattern) {
                    continue;
                }
                found.insert(row.id);
                snapshot.overlapping.push((row.id, index));
                if row.opposes(holder, request.mode, now) {
                    conflicts += 1;
                    if conflicts >= MAX_REPORTED_CONFLICTS {
                        snapshot.stopped_early = true;
                        break 'patterns;
                    }
                }
            }
        }
        Ok(Some(snapshot))
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
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases
             WHERE pattern {} AND expires_at > ?2",
            in_json_list(self)
        );
        let list = serde_json::to_string(patterns)?;
        let rows = self
            .conn()
            .query_map(&sql, params![list, now_ms], lease_from_row)?;
        Ok(rows)
    }

    /// The live lease rows with these ids (unparsed: their overlap is already known).
    fn live_lease_rows(&self, ids: &[i64], now_ms: i64) -> Result<Vec<(i64, Lease)>> {
        let in_ids = if self.conn().is_postgres() {
            "= ANY (ARRAY(SELECT jsonb_array_elements_text(?1::jsonb)::bigint))"
        } else {
            "IN (SELECT value FROM json_each(?1))"
        };
        let sql =
            format!("SELECT {HELD_COLUMNS} FROM leases WHERE id {in_ids} AND expires_at > ?2");
        let list = serde_json::to_string(ids)?;
        self.conn().query_map(&sql, params![list, now_ms], |row| {
            Ok((row.get(0)?, lease_at(row, 1)?))
        })
    }

    /// The live lease rows with an id above `above` that stand against `holder` taking a lease
    /// in `mode` (overlap aside), at most `limit` of them (unparsed).
    fn opposing_rows_above(
        &self,
        above: i64,
        holder: &str,
        mode: LeaseMode,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Lease)>> {
        // Shared does not stand against shared: a shared request meets only exclusive rows.
        let modes = match mode {
            LeaseMode::Exclusive => "",
            LeaseMode::Shared => "AND mode = 'exclusive'",
        };
        let sql = format!(
            "SELECT {HELD_COLUMNS} FROM leases
             WHERE id > ?1 AND expires_at > ?2 AND holder <> ?3 {modes}
             ORDER BY id LIMIT {limit}"
        );
        self.conn()
            .query_map(&sql, params![above, now_ms, holder], |row| {
                Ok((row.get(0)?, lease_at(row, 1)?))
            })
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
        let near = NearLeases::read(self, std::slice::from_ref(pattern), now_ms)?;
        let mut conflicts = Vec::new();
        conflicts_with(
            &near.near(self, pattern)?,
            holder,
            pattern,
            mode,
            now_ms,
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

/// Adds to `found` the rows of `live` that stand against `holder` taking `pattern` in `mode`,
/// stopping once [`MAX_REPORTED_CONFLICTS`] are known: a refusal names a few, never every pair.
/// Answers how many pairs it compared.
fn conflicts_with(
    live: &[HeldRef<'_>],
    holder: &str,
    pattern: &LeasePattern,
    mode: LeaseMode,
    now_ms: i64,
    found: &mut Vec<LeaseConflict>,
) -> usize {
    let mut compared = 0;
    for row in live {
        if found.len() >= MAX_REPORTED_CONFLICTS {
            break;
        }
        let known = found
            .iter()
            .any(|known| known.held == row.lease.path && known.holder == row.lease.holder);
        if known || !row.opposes(holder, mode, now_ms) {
            continue;
        }
        compared += 1;
        if row.overlaps(pattern) {
            found.push(row.conflict(pattern));
        }
    }
    compared
}

impl Tx<'_> {
    /// Grants every requested lease to `holder`, or none (with the first conflicts named),
    /// comparing the request with every nearby lease under the writer lock. Servers take a
    /// [`LeaseSnapshot`] first and call [`Tx::acquire_leases_after`] instead.
    ///
    /// This reads only the leases that can overlap each requested pattern (see `leases_near`),
    /// parses each once, compares each pair at most once, and stops at
    /// [`MAX_REPORTED_CONFLICTS`].
    pub fn acquire_leases(&mut self, holder: &str, request: LeaseRequest) -> Result<Vec<Lease>> {
        match self.acquire_leases_checked(holder, request, None)?.0 {
            GrantOutcome::Granted(leases) => Ok(leases),
            // Without a snapshot everything is compared: there is nothing to be stale.
            GrantOutcome::Stale(stale) => Err(CoreError::LeaseSnapshotStale(stale.to_string())),
        }
    }

    /// Grants like [`Tx::acquire_leases`], comparing under the lock only the lease rows that
    /// `snapshot` (taken for this holder and request outside the lock) cannot vouch for, and at
    /// most [`MAX_PAIRS_UNDER_LOCK`] pairs: see the module documentation of `store::leases`.
    /// When that is not enough to decide, it compares nothing, writes nothing and answers
    /// [`CoreError::LeaseSnapshotStale`]: take a fresh snapshot and call it again.
    pub fn acquire_leases_after(
        &mut self,
        holder: &str,
        request: LeaseRequest,
        snapshot: &LeaseSnapshot,
    ) -> Result<Vec<Lease>> {
        match self
            .acquire_leases_checked(holder, request, Some(snapshot))?
            .0
        {
            GrantOutcome::Granted(leases) => Ok(leases),
            GrantOutcome::Stale(stale) => Err(CoreError::LeaseSnapshotStale(stale.to_string())),
        }
    }

    /// The grant, and what it compared under the lock.
    pub(crate) fn acquire_leases_checked(
        &mut self,
        holder: &str,
        request: LeaseRequest,
        snapshot: Option<&LeaseSnapshot>,
    ) -> Result<(GrantOutcome, LockedWork)> {
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
            None => self.read().first_held_task(holder)?,
        };
        let now = self.now_ms();
        let mut work = LockedWork::default();
        let conflicts = match snapshot {
            Some(snapshot) => {
                match self.conflicts_since(holder, &request, &patterns, snapshot, now, &mut work)? {
                    Ok(conflicts) => conflicts,
                    Err(stale) => return Ok((GrantOutcome::Stale(stale), work)),
                }
            }
            None => {
                work.full_check = true;
                let mut conflicts = Vec::new();
                let near = NearLeases::read(&self.read(), &patterns, now)?;
                for pattern in &patterns {
                    let candidates = near.near(&self.read(), pattern)?;
                    work.compared += conflicts_with(
                        &candidates,
                        holder,
                        pattern,
                        request.mode,
                        now,
                        &mut conflicts,
                    );
                    if conflicts.len() >= MAX_REPORTED_CONFLICTS {
                        break;
                    }
                }
                conflicts
            }
        };
        if !conflicts.is_empty() {
            return Err(CoreError::LeaseConflict(conflicts));
        }
        // After the check, which reads only live rows: a stale answer writes nothing at all.
        self.purge_expired_leases()?;
        let texts: Vec<&str> = patterns.iter().map(LeasePattern::as_str).collect();
        let mine: Vec<Lease> = self
            .read()
            .leases_on(&texts, now)?
            .into_iter()
            .filter(|lease| lease.holder == holder)
            .collect();
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
        // One counter update for the whole request: its tokens are consecutive, in request
        // order, and larger than every token granted before.
        let last_token = self.next_fencing_tokens(patterns.len())?;
        let first_token = last_token - (patterns.len() as i64 - 1);
        for (fencing_token, pattern) in (first_token..).zip(&patterns) {
            // `mine` holds every live lease of this holder on these patterns (the expired ones
            // were purged above), so only those need the renewing update.
            let held_already = mine.iter().any(|lease| lease.path == pattern.as_str());
            let renewed = held_already
                && self.conn().execute(
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
        Ok((GrantOutcome::Granted(granted), work))
    }

    /// The conflicts of `holder`'s request with the live leases, as far as `snapshot` leaves
    /// them to be judged under the lock, comparing at most [`MAX_PAIRS_UNDER_LOCK`] pairs; or,
    /// having compared nothing, why the snapshot cannot decide.
    fn conflicts_since(
        &self,
        holder: &str,
        request: &LeaseRequest,
        patterns: &[LeasePattern],
        snapshot: &LeaseSnapshot,
        now: i64,
        work: &mut LockedWork,
    ) -> Result<std::result::Result<Vec<LeaseConflict>, SnapshotStale>> {
        // A snapshot serves only the request it was taken for.
        let same_request = snapshot.holder == holder
            && snapshot
                .patterns
                .iter()
                .map(String::as_str)
                .eq(patterns.iter().map(LeasePattern::as_str));
        if !same_request {
            return Ok(Err(SnapshotStale::OtherRequest));
        }
        let reader = self.read();
        let mut conflicts = Vec::new();
        // The rows the snapshot found overlapping still overlap (a row's pattern is fixed):
        // only their mode and expiry are judged again, without comparing.
        // (A row above `max_id` the snapshot happened to see is compared as a new row.)
        let ids: Vec<i64> = snapshot
            .overlapping
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id <= snapshot.max_id)
            .collect();
        let overlapping: std::collections::HashMap<i64, usize> =
            snapshot.overlapping.iter().copied().collect();
        for (id, lease) in reader.live_lease_rows(&ids, now)? {
            if conflicts.len() >= MAX_REPORTED_CONFLICTS {
                break;
            }
            if !lease_opposes(&lease, holder, request.mode, now) {
                continue;
            }
            if let Some(requested) = overlapping.get(&id).and_then(|index| patterns.get(*index)) {
                conflicts.push(HeldRow::unparsed(id, lease).conflict(requested));
            }
        }
        if conflicts.is_empty() && snapshot.stopped_early {
            // Every conflict it found has gone and it never looked further: only a fresh
            // snapshot can tell, not a comparison of everything under the lock.
            return Ok(Err(SnapshotStale::ConflictsGone));
        }
        // Rows granted since are compared with every requested pattern, within the budget:
        // read one row more than it allows, to know when it would be exceeded.
        let fit = (MAX_PAIRS_UNDER_LOCK / patterns.len().max(1)).max(1);
        let new_rows =
            reader.opposing_rows_above(snapshot.max_id, holder, request.mode, now, fit + 1)?;
        if new_rows.len() > fit {
            if !conflicts.is_empty() {
                // Refused by the rows the snapshot vouches for, whatever the new rows are.
                return Ok(Ok(conflicts));
            }
            return Ok(Err(SnapshotStale::TooManyNewRows {
                new_rows: new_rows.len(),
                asked: patterns.len(),
            }));
        }
        for (id, lease) in new_rows {
            if conflicts.len() >= MAX_REPORTED_CONFLICTS {
                break;
            }
            let row = HeldRow::new(id, lease);
            let requested = patterns.iter().find(|pattern| {
                work.compared += 1;
                row.overlaps(pattern)
            });
            if let Some(requested) = requested {
                conflicts.push(row.conflict(requested));
            }
        }
        Ok(Ok(conflicts))
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

    /// Takes `count` fencing tokens at once; answers the last (the others are the `count - 1`
    /// before it).
    fn next_fencing_tokens(&mut self, count: usize) -> Result<i64> {
        self.conn().query_row(
            "UPDATE counters SET value = value + ?1 WHERE name = 'fencing_token' RETURNING value",
            params![count],
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
                let row = HeldRow {
                    id: 1,
                    lease: Lease {
                        path: stored.to_string(),
                        mode: LeaseMode::Exclusive,
                        holder: "b".to_string(),
                        task: None,
                        reason: None,
                        fencing_token: 1,
                        acquired_at: chrono::Utc::now(),
                        expires_at: chrono::Utc::now(),
                    },
                    pattern: Some(held.clone()),
                    prefix_len: held.literal_prefix().len(),
                };
                assert_eq!(
                    row.overlaps(&pattern),
                    paths::overlaps(&pattern, &held),
                    "{requested} vs {stored}"
                );
            }
        }
    }
}
