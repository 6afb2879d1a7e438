//! One way for the domain modules to speak SQL, whichever engine holds the data.
//!
//! The store's rules (`store/*.rs`) are written once against [`Db`]: `execute`, `query_row`,
//! `query_map`, `query_first` and `insert`, with parameters given as [`Value`]s (the
//! [`params!`] macro) and rows read through [`Row::get`]. `Db` is either the SQLite connection
//! (rusqlite, statements cached per connection as before) or a PostgreSQL connection (the
//! synchronous `postgres` client, statements cached per connection too). SQL is written in the
//! SQLite dialect with numbered placeholders (`?1`); for PostgreSQL, [`translate`] rewrites the
//! few constructs that differ (placeholders, `INSERT OR IGNORE`, `INDEXED BY`, two-argument
//! `max`/`min`). What cannot be rewritten mechanically (full-text search, `json_each`, the event
//! sequence) is written per engine at its call site, branching on [`Db::is_postgres`].
//!
//! Values keep SQLite's storage classes on both engines: integers (booleans as 0/1, times as
//! milliseconds), reals and text. PostgreSQL decides each parameter's type from the statement,
//! and [`Value`] converts itself to that type when it is bound, so `?2 OR ...` binds a boolean
//! and `LIMIT ?3` a bigint from the same `Value::Int`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;

use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::error::{CoreError, Result};

/// A parameter or column value, in SQLite's storage classes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// Makes a [`Value`] of a parameter (by reference, as rusqlite's `params!` did).
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($ty:ty),*) => {$(
        impl ToValue for $ty {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, i16, u16, u8, bool);

impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for u64 {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(value) => value.to_value(),
            None => Value::Null,
        }
    }
}

/// Parameters of a statement, numbered from 1 in the order given.
macro_rules! params {
    () => {
        &[] as &[$crate::store::db::Value]
    };
    ($($param:expr),+ $(,)?) => {
        &[$($crate::store::db::ToValue::to_value(&$param)),+] as &[$crate::store::db::Value]
    };
}
pub(crate) use params;

/// Reads a column value as a Rust type.
pub trait FromValue: Sized {
    fn from_value(value: Value) -> Result<Self>;
}

fn wrong_type(wanted: &str, value: &Value) -> CoreError {
    CoreError::Database(format!("expected {wanted}, the column holds {value:?}"))
}

impl FromValue for Value {
    fn from_value(value: Value) -> Result<Self> {
        Ok(value)
    }
}

impl FromValue for i64 {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Int(int) => Ok(int),
            other => Err(wrong_type("an integer", &other)),
        }
    }
}

macro_rules! narrow_int_from_value {
    ($($ty:ty),*) => {$(
        impl FromValue for $ty {
            fn from_value(value: Value) -> Result<Self> {
                let wide = i64::from_value(value)?;
                <$ty>::try_from(wide).map_err(|_| {
                    CoreError::Database(format!("{wide} does not fit a {}", stringify!($ty)))
                })
            }
        }
    )*};
}
narrow_int_from_value!(i32, u32, u64, usize);

impl FromValue for bool {
    fn from_value(value: Value) -> Result<Self> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Real(real) => Ok(real),
            Value::Int(int) => Ok(int as f64),
            other => Err(wrong_type("a number", &other)),
        }
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Text(text) => Ok(text),
            other => Err(wrong_type("text", &other)),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result, from either engine.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// The value of column `index` (from 0).
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T> {
        let value = match self {
            Row::Sqlite(row) => match row.get_ref(index)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(int) => Value::Int(int),
                ValueRef::Real(real) => Value::Real(real),
                ValueRef::Text(bytes) => Value::Text(
                    std::str::from_utf8(bytes)
                        .map_err(|error| CoreError::Database(error.to_string()))?
                        .to_string(),
                ),
                ValueRef::Blob(_) => {
                    return Err(CoreError::Database(format!("column {index} holds a blob")));
                }
            },
            Row::Pg(row) => row.try_get::<_, Value>(index)?,
        };
        T::from_value(value)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(int) => ValueRef::Integer(*int),
            Value::Real(real) => ValueRef::Real(*real),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for Value {
    /// Binds the value as the type PostgreSQL inferred for the parameter.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(int) => match *ty {
                Type::INT8 => int.to_sql(ty, out),
                Type::INT4 => i32::try_from(*int)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*int)?.to_sql(ty, out),
                Type::FLOAT8 => (*int as f64).to_sql(ty, out),
                Type::FLOAT4 => (*int as f32).to_sql(ty, out),
                Type::BOOL => (*int != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    int.to_string().as_str().to_sql(ty, out)
                }
                _ => Err(format!("cannot bind an integer as {ty}").into()),
            },
            Value::Real(real) => match *ty {
                Type::FLOAT8 => real.to_sql(ty, out),
                Type::FLOAT4 => (*real as f32).to_sql(ty, out),
                _ => Err(format!("cannot bind a real as {ty}").into()),
            },
            Value::Text(text) => match *ty {
                Type::JSONB => {
                    // jsonb's binary form: a version byte, then the text.
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(text.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSON => {
                    out.extend_from_slice(text.as_bytes());
                    Ok(IsNull::No)
                }
                _ => text.as_str().to_sql(ty, out),
            },
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_ty: &Type) -> std::result::Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL | Type::FLOAT8 | Type::FLOAT4
        ) || <String as FromSql>::accepts(ty)
    }
}

/// The first page [`Db::query_first`] reads on PostgreSQL, and the largest.
const FIRST_PAGE: usize = 8;
const MAX_PAGE: usize = 512;

/// Statements one PostgreSQL connection keeps prepared; past this the cache starts afresh.
const PG_STATEMENT_CACHE: usize = 512;

/// A PostgreSQL connection and the statements prepared on it (keyed by their SQLite text).
pub struct PgConn {
    pub(super) client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    pub(super) fn new(client: postgres::Client) -> Self {
        PgConn {
            client,
            statements: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let translated = translate(sql);
        // `?1 IS NULL OR x = ?1`: PostgreSQL types a parameter where it first meets it, and
        // `IS NULL` says nothing, so it refuses the statement (and a refused statement would
        // abort the transaction). Such a statement is first shown without its null tests, to
        // learn the types its other uses imply, then prepared with those types.
        let probe = null_tests_hidden(&translated);
        let prepared = if probe == translated {
            self.client.prepare(&translated)
        } else {
            self.client
                .prepare(&probe)
                .and_then(|probe| self.client.prepare_typed(&translated, probe.params()))
        };
        let statement = prepared.map_err(|error| {
            let CoreError::Database(message) = CoreError::from(error) else {
                return CoreError::Database(format!("cannot prepare {translated}"));
            };
            CoreError::Database(format!("{message} in: {translated}"))
        })?;
        if self.statements.len() >= PG_STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<postgres::Row>> {
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(self.client.query(&statement, &refs)?)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize> {
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let changed = self.client.execute(&statement, &refs)?;
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }
}

/// The connection a transaction or a read runs on.
#[derive(Clone, Copy)]
pub enum Db<'c> {
    Sqlite(&'c rusqlite::Connection),
    Pg(&'c RefCell<PgConn>),
}

/// What a query that must find a row answers when it finds none (rusqlite's own error, so that
/// [`OptionalExtension::optional`] recognizes it on either engine).
fn no_rows() -> CoreError {
    CoreError::Storage(rusqlite::Error::QueryReturnedNoRows)
}

impl Db<'_> {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Pg(_))
    }

    /// Runs a statement; answers how many rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        match self {
            Db::Sqlite(conn) => Ok(conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?),
            Db::Pg(conn) => conn.borrow_mut().execute(sql, params),
        }
    }

    /// Inserts one row and answers its generated `id_column` (SQLite's rowid).
    pub fn insert(&self, sql: &str, params: &[Value], id_column: &str) -> Result<i64> {
        match self {
            Db::Sqlite(conn) => {
                conn.prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(params))?;
                Ok(conn.last_insert_rowid())
            }
            Db::Pg(conn) => {
                let sql = format!("{sql} RETURNING {id_column}");
                let rows = conn.borrow_mut().query(&sql, params)?;
                let row = rows.first().ok_or_else(no_rows)?;
                Row::Pg(row).get(0)
            }
        }
    }

    /// The first row's `read`, or the "no rows" error (see [`OptionalExtension`]).
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[Value],
        read: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                match rows.next()? {
                    Some(row) => read(&Row::Sqlite(row)),
                    None => Err(no_rows()),
                }
            }
            Db::Pg(conn) => {
                let rows = conn.borrow_mut().query(sql, params)?;
                let row = rows.first().ok_or_else(no_rows)?;
                read(&Row::Pg(row))
            }
        }
    }

    /// Every row, each read by `read`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[Value],
        mut read: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(read(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Db::Pg(conn) => {
                // The rows are all fetched before any is read, so `read` may query again.
                let rows = conn.borrow_mut().query(sql, params)?;
                rows.iter().map(|row| read(&Row::Pg(row))).collect()
            }
        }
    }

    /// Walks the rows in order and stops at the first for which `pick` answers something. The
    /// statement must not end in `LIMIT` (PostgreSQL reads it page by page).
    pub fn query_first<T>(
        &self,
        sql: &str,
        params: &[Value],
        mut pick: impl FnMut(&Row<'_>) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                while let Some(row) = rows.next()? {
                    if let Some(found) = pick(&Row::Sqlite(row))? {
                        return Ok(Some(found));
                    }
                }
                Ok(None)
            }
            Db::Pg(conn) => {
                // PostgreSQL sends every row of a result at once: walk it in growing pages
                // instead, so that a fit found early costs a few rows, not the whole queue.
                let mut offset = 0;
                let mut page = FIRST_PAGE;
                loop {
                    let paged = format!("{sql} LIMIT {page} OFFSET {offset}");
                    let rows = conn.borrow_mut().query(&paged, params)?;
                    for row in &rows {
                        if let Some(found) = pick(&Row::Pg(row))? {
                            return Ok(Some(found));
                        }
                    }
                    if rows.len() < page {
                        return Ok(None);
                    }
                    offset += page;
                    page = (page * 4).min(MAX_PAGE);
                }
            }
        }
    }
}

/// Turns the "no rows" answer of [`Db::query_row`] into `None`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(CoreError::Storage(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Rewrites a statement in the store's SQLite dialect for PostgreSQL: `?N` placeholders become
/// `$N`; `INSERT OR IGNORE` becomes `INSERT ... ON CONFLICT DO NOTHING`; `INDEXED BY name` (a
/// SQLite planner hint) goes; `max(a, b)` and `min(a, b)` (SQLite's scalar forms, as opposed to
/// the one-argument aggregates) become `GREATEST` and `LEAST`. Quoted text is left alone.
pub fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let chars: Vec<char> = sql.chars().collect();
    let mut ignore_conflicts = false;
    let mut i = 0;
    let mut bare_placeholders = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            // Copy the quoted text verbatim (a doubled quote stays inside it).
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == c {
                    if chars.get(i + 1) == Some(&c) {
                        out.push(c);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            continue;
        }
        if c == '?' {
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && chars[end].is_ascii_digit() {
                end += 1;
            }
            out.push('$');
            if end == start {
                bare_placeholders += 1;
                out.push_str(&bare_placeholders.to_string());
            } else {
                out.extend(&chars[start..end]);
            }
            i = end;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let upper = word.to_ascii_uppercase();
            let rest: String = chars[i..].iter().take(40).collect();
            let rest_upper = rest.to_ascii_uppercase();
            if upper == "INSERT" && rest_upper.trim_start().starts_with("OR IGNORE") {
                let skip = rest.len() - rest.trim_start().len() + "OR IGNORE".len();
                out.push_str("INSERT");
                i += skip;
                ignore_conflicts = true;
                continue;
            }
            if upper == "INDEXED" && rest_upper.trim_start().starts_with("BY ") {
                // Skip "BY" and the index name.
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                j += 2;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                i = j;
                continue;
            }
            if (upper == "MAX" || upper == "MIN")
                && chars.get(i) == Some(&'(')
                && has_several_arguments(&chars[i..])
            {
                out.push_str(if upper == "MAX" { "GREATEST" } else { "LEAST" });
                continue;
            }
            out.push_str(&word);
            continue;
        }
        out.push(c);
        i += 1;
    }
    if ignore_conflicts {
        let trimmed = out.trim_end().trim_end_matches(';').to_string();
        out = format!("{trimmed} ON CONFLICT DO NOTHING");
    }
    out
}

/// `sql` (already translated) with each `$N IS NULL` / `$N IS NOT NULL` replaced by `TRUE` when
/// `$N` is used elsewhere too (so that PostgreSQL infers its type from those uses), or by a
/// text-typed test when it is not. Only for asking PostgreSQL for parameter types: the result
/// means something else.
fn null_tests_hidden(sql: &str) -> String {
    let mut out = sql.to_string();
    let highest = sql
        .split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0);
    for n in 1..=highest {
        let placeholder = format!("${n}");
        for test in [" IS NULL", " IS NOT NULL"] {
            let null_test = format!("{placeholder}{test}");
            let elsewhere = out.replace(&null_test, "");
            let used_elsewhere = elsewhere.match_indices(&placeholder).any(|(at, _)| {
                !elsewhere[at + placeholder.len()..].starts_with(|c: char| c.is_ascii_digit())
            });
            let replacement = if used_elsewhere {
                "TRUE".to_string()
            } else {
                format!("{placeholder}::text{test}")
            };
            out = out.replace(&null_test, &replacement);
        }
    }
    out
}

/// Whether the parenthesized list that `chars` starts with holds a top-level comma.
fn has_several_arguments(chars: &[char]) -> bool {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for &c in chars {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return false;
                }
            }
            ',' if depth == 1 => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn null_tests_are_hidden_only_where_other_uses_type_the_parameter() {
        assert_eq!(
            super::null_tests_hidden("($1 IS NULL OR seq > $1) AND ($12 IS NOT NULL)"),
            "(TRUE OR seq > $1) AND ($12::text IS NOT NULL)"
        );
    }

    #[test]
    fn placeholders_and_sqlite_only_constructs_are_rewritten() {
        assert_eq!(
            translate("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?3'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?3'"
        );
        assert_eq!(
            translate("INSERT OR IGNORE INTO task_deps (a, b) VALUES (?1, ?2)"),
            "INSERT INTO task_deps (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            translate("SELECT x FROM tasks INDEXED BY tasks_finished_by_update WHERE y"),
            "SELECT x FROM tasks  WHERE y"
        );
        assert_eq!(
            translate("UPDATE t SET a = max(COALESCE(a, 0), ?2), b = (SELECT max(c) FROM u)"),
            "UPDATE t SET a = GREATEST(COALESCE(a, 0), $2), b = (SELECT max(c) FROM u)"
        );
        assert_eq!(
            translate("SELECT MIN(a, 'x,y'), min(b)"),
            "SELECT LEAST(a, 'x,y'), min(b)"
        );
    }
}
