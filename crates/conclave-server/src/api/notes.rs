//! `/api/notes` and `/api/search`: shared knowledge and full-text search.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::model::{Actor, NewNote, NoteKind, NoteList, SearchResults};
use serde::Deserialize;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::ops::{self, IdempotencyKey};

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteQuery {
    #[schemars(with = "Option<NoteKind>")]
    pub kind: Option<String>,
    /// Include superseded notes.
    #[serde(default)]
    pub all: bool,
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Searched for its words (letters, digits and `_`); at least one is required.
    #[schemars(regex(pattern = r"\w"))]
    pub q: String,
    /// `note`, `message` or `task` (comma-separated); all when absent.
    #[schemars(regex(
        pattern = "^[ \t]*(note|message|task)?[ \t]*(,[ \t]*(note|message|task)?[ \t]*)*$"
    ))]
    pub kind: Option<String>,
    pub limit: Option<i64>,
}

pub async fn add(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(new): ApiJson<NewNote>,
) -> ApiResult<Response> {
    let key = key.with_body(&new);
    Ok(ops::add_note(&app, &actor, &key, new).await?.created())
}

pub async fn list(
    State(app): State<App>,
    ApiQuery(query): ApiQuery<NoteQuery>,
) -> ApiResult<Json<NoteList>> {
    let kind = query
        .kind
        .as_deref()
        .map(str::parse::<NoteKind>)
        .transpose()?;
    let notes = app
        .read(move |r| r.notes(kind, query.all, query.limit.unwrap_or(200)))
        .await?;
    Ok(Json(NoteList { notes }))
}

pub async fn search(
    State(app): State<App>,
    actor: Actor,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> ApiResult<Json<SearchResults>> {
    let kinds: Vec<String> = query
        .kind
        .as_deref()
        .map(|k| {
            k.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(bad) = kinds
        .iter()
        .find(|k| !matches!(k.as_str(), "note" | "message" | "task"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown search kind {bad:?} (expected note, message or task)"
        )));
    }
    let hits = ops::search(&app, &actor, query.q, kinds, query.limit.unwrap_or(20)).await?;
    Ok(Json(SearchResults { hits }))
}
