//! `GET /runtime` and `POST /runtime_modify`, answered as Envoy's `RuntimeHandler` answers
//! them: the layers and every key's value in each, and the admin layer's changes (query
//! parameters, else an `application/x-www-form-urlencoded` body; an empty value removes a
//! key). A change is applied by reloading the config with the new admin values (vigil resolves
//! runtime values at load, see [`crate::runtime_layers`]): if that reload fails, the change is
//! undone and the answer says why (Envoy, whose change cannot fail, answers `OK`).

use super::query::form_pairs;
use super::reply::{json_response, post_required, text};
use super::{AdminState, Body};
use http::{Method, Response, StatusCode};
use tokio::sync::oneshot;

/// `GET /runtime`.
pub(super) fn runtime(state: &AdminState) -> Response<Body> {
    json_response(state.runtime.layers().snapshot.admin_json())
}

const USAGE: &str = "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n       or send \
                     the parameters as form values\nuse an empty value to remove a previously \
                     added override";

/// `POST /runtime_modify`: `query` is the URL's query string, `form` the body when it is a
/// form.
pub(super) async fn runtime_modify(
    state: &AdminState,
    method: &Method,
    query: &str,
    form: Option<&str>,
) -> Response<Body> {
    if method != Method::POST {
        return post_required(method);
    }
    let mut params = form_pairs(query);
    if params.is_empty()
        && let Some(body) = form
    {
        params = form_pairs(body);
    }
    if params.is_empty() {
        return text(StatusCode::BAD_REQUEST, USAGE.into());
    }
    if state.runtime.layers().admin.is_none() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "No admin layer specified".into(),
        );
    }
    let Some(requests) = &state.reload else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "runtime_modify is not available\n".into(),
        );
    };
    // Envoy's parameters are a map: a key given twice keeps its first value.
    let mut changes: Vec<(String, String)> = Vec::new();
    for (key, value) in params {
        if !changes.iter().any(|(k, _)| *k == key) {
            changes.push((key, value));
        }
    }
    let _one_at_a_time = state.runtime.modifying.lock().await;
    let mut values = state.runtime.admin_values();
    vigil_core::runtime_layers::admin_merge(&mut values, &changes);
    let previous = state.runtime.set_admin_values(values);
    let (reply, answer) = oneshot::channel();
    if requests.send(reply).await.is_err() {
        state.runtime.set_admin_values(previous);
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match answer.await {
        Ok(Ok(_)) => text(StatusCode::OK, "OK\n".into()),
        Ok(Err(reason)) => {
            state.runtime.set_admin_values(previous);
            text(
                StatusCode::BAD_REQUEST,
                format!(
                    "runtime_modify rejected: the config does not load with these values, the \
                     previous ones stay:\n{reason}\n"
                ),
            )
        }
        Err(_) => {
            state.runtime.set_admin_values(previous);
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
        }
    }
}
