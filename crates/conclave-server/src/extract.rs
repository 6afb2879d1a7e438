//! The HTTP side shared by the JSON API and the hooks: extractors whose rejections are API errors
//! (`Idempotency-Key`, the authenticated [`Actor`], JSON bodies, queries and paths) and the
//! responses of writes.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use conclave_core::model::Actor;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::app::{App, IdempotencyKey, Written};
use crate::error::ApiError;

const MAX_IDEMPOTENCY_KEY: usize = 200;

impl<T: serde::Serialize> Written<T> {
    pub fn created(self) -> Response {
        self.respond(StatusCode::CREATED)
    }

    pub fn ok(self) -> Response {
        self.respond(StatusCode::OK)
    }

    fn respond(self, status: StatusCode) -> Response {
        let replayed = self.replayed;
        let mut response = (status, Json(self)).into_response();
        if replayed {
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

/// A JSON request body whose rejections are API errors with a JSON body. Stricter and kinder than
/// `axum::Json` in the two ways the OpenAPI document promises:
/// - the body must be a JSON object: serde would also read a struct from an array of its fields
///   in order (`["title"]`), which bypasses field names and the unknown-field check;
/// - an integer may be written as an integral float (`2.0`), as JSON Schema counts it an integer.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(mut value) = Json::<Value>::from_request(request, state).await?;
        if !value.is_object() {
            return Err(ApiError::bad_request(format!(
                "the request body must be a JSON object, not {}",
                json_type_name(&value)
            )));
        }
        normalize_integral_floats(&mut value);
        T::deserialize(value).map(ApiJson).map_err(|error| {
            ApiError::bad_request(format!(
                "Failed to deserialize the JSON body into the target type: {error}"
            ))
        })
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Rewrites every float with no fractional part that fits an `i64` (`2.0`, `-3e2`) as that
/// integer, so that integer fields accept it; float fields read it back unchanged.
fn normalize_integral_floats(value: &mut Value) {
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            if let Some(float) = number.as_f64()
                && float.fract() == 0.0
                // Strictly above: `-9223372036854775809` rounds to `i64::MIN as f64` and must not
                // be read as `i64::MIN`.
                && float > i64::MIN as f64
                && float < i64::MAX as f64
            {
                // In range and integral: the conversion is exact.
                *value = Value::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_integral_floats),
        Value::Object(fields) => fields.values_mut().for_each(normalize_integral_floats),
        _ => {}
    }
}

/// `Query` whose rejections are API errors with a JSON body.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections are API errors with a JSON body.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut value = json!({ "a": 2.0, "b": [-3e2, 1.5], "c": { "d": 7 }, "e": 1e300 });
        normalize_integral_floats(&mut value);
        assert_eq!(value["a"], json!(2));
        assert!(value["a"].is_i64());
        assert_eq!(value["b"], json!([-300, 1.5]));
        assert_eq!(value["c"]["d"], json!(7));
        assert!(value["e"].is_f64());
    }

    #[test]
    fn a_float_below_the_smallest_integer_is_not_read_as_it() {
        // `-9223372036854775809` parses as a float that rounds to exactly `i64::MIN`.
        let mut value: Value = serde_json::from_str("[-9223372036854775809, -4e18]").expect("json");
        normalize_integral_floats(&mut value);
        assert!(value[0].is_f64(), "{value}");
        assert_eq!(value[1], json!(-4_000_000_000_000_000_000_i64));
    }
}
