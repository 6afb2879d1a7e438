//! The HTTP side shared by the JSON API and the hooks: extractors whose rejections are API errors
//! (`Idempotency-Key`, the authenticated [`Actor`], JSON bodies, queries and paths) and the
//! responses of writes.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use conclave_core::model::Actor;

use crate::app::{App, IdempotencyKey, Written};
use crate::error::ApiError;

const MAX_IDEMPOTENCY_KEY: usize = 200;

impl Written {
    pub fn created(self) -> Response {
        self.respond(StatusCode::CREATED)
    }

    pub fn ok(self) -> Response {
        self.respond(StatusCode::OK)
    }

    fn respond(self, status: StatusCode) -> Response {
        let mut response = (status, Json(self.value)).into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(value) => {
                let text = value
                    .to_str()
                    .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                    .trim();
                if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY {
                    return Err(ApiError::bad_request(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                    )));
                }
                Some(text.to_string())
            }
        };
        Ok(IdempotencyKey {
            key,
            fingerprint: format!("{} {}", parts.method, parts.uri.path()),
        })
    }
}

/// The authenticated actor, put into the request by the auth middleware.
impl FromRequestParts<App> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &App) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))
    }
}

/// `Json` whose rejections are API errors with a JSON body.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections are API errors with a JSON body.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections are API errors with a JSON body.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
