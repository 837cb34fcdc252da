//! Kafka Connect's REST API on the worker: the same paths, JSON shapes,
//! status codes and error bodies (`{"error_code":404,"message":...}`), so
//! that existing tools and UIs work. Request bodies are bounded by
//! `REST_BODY_BYTES_MAX`.

use std::future::Future;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::error::ConnectError;
use crate::limits::REST_BODY_BYTES_MAX;
use crate::props::Props;
use crate::worker::{self, Worker};

/// An error answered in Kafka's shape.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    message: String,
}

impl RestError {
    fn new(status: StatusCode, message: impl Into<String>) -> RestError {
        RestError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> RestError {
        RestError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ConnectError> for RestError {
    fn from(error: ConnectError) -> RestError {
        let status = match &error {
            ConnectError::Config(_) | ConnectError::PipelineFile { .. } | ConnectError::Data(_) => {
                StatusCode::BAD_REQUEST
            }
            ConnectError::NotFound(_) => StatusCode::NOT_FOUND,
            ConnectError::AlreadyExists(_) => StatusCode::CONFLICT,
            ConnectError::Io { .. }
            | ConnectError::Client(_)
            | ConnectError::Task(_)
            | ConnectError::HttpRejected { .. }
            | ConnectError::HttpUnavailable { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        RestError::new(status, error.to_string())
    }
}

impl From<BytesRejection> for RestError {
    fn from(rejection: BytesRejection) -> RestError {
        RestError::new(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        json_response(self.status, &json!({"error_code": self.status.as_u16(), "message": self.message}))
    }
}

type Answer = Result<Response, RestError>;

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], Body::from(bytes)).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

fn ok<T: Serialize>(body: &T) -> Answer {
    Ok(json_response(StatusCode::OK, body))
}

fn empty(status: StatusCode) -> Answer {
    Ok(status.into_response())
}

/// Runs a blocking worker call off the async threads.
async fn blocking<T: Send + 'static>(
    worker: &Worker,
    call: impl FnOnce(Worker) -> crate::Result<T> + Send + 'static,
) -> Result<T, RestError> {
    let worker = worker.clone();
    match tokio::task::spawn_blocking(move || call(worker)).await {
        Ok(result) => result.map_err(RestError::from),
        Err(error) => Err(RestError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("worker call failed: {error}"))),
    }
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Json, RestError> {
    let body = body?;
    serde_json::from_slice(&body).map_err(|e| RestError::bad_request(format!("Request body is not valid JSON: {e}")))
}

/// A config object: string values, numbers and booleans taken as their
/// text (Jackson does the same for Kafka's `Map<String, String>`).
fn config_from(json: &Json) -> Result<Props, RestError> {
    let object = json.as_object().ok_or_else(|| RestError::bad_request("connector config must be a JSON object"))?;
    object
        .iter()
        .map(|(key, value)| {
            let text = match value {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                Json::Bool(b) => b.to_string(),
                _ => return Err(RestError::bad_request(format!("config value of {key} must be a string"))),
            };
            Ok((key.clone(), text))
        })
        .collect()
}

/// The REST API's routes over `worker`.
pub fn router(worker: Worker) -> Router {
    Router::new()
        .route("/", get(server_info))
        .route("/connectors", get(list_connectors).post(create_connector))
        .route("/connectors/{name}", get(connector_info).delete(delete_connector))
        .route("/connectors/{name}/config", get(connector_config).put(put_connector_config))
        .route("/connectors/{name}/status", get(connector_status))
        .route("/connectors/{name}/tasks", get(connector_tasks))
        .route(
            "/connectors/{name}/offsets",
            get(connector_offsets).patch(alter_connector_offsets).delete(reset_connector_offsets),
        )
        .route("/connectors/{name}/stop", put(stop_connector))
        .route("/connectors/{name}/topics", get(connector_topics))
        .route("/connectors/{name}/topics/reset", put(reset_connector_topics))
        .route("/connectors/{name}/tasks/{task}/status", get(task_status))
        .route("/connectors/{name}/tasks/{task}/restart", post(restart_task))
        .route("/connectors/{name}/pause", put(pause_connector))
        .route("/connectors/{name}/resume", put(resume_connector))
        .route("/connectors/{name}/restart", post(restart_connector))
        .route("/connector-plugins", get(connector_plugins))
        .route("/connector-plugins/{class}/config/validate", put(validate_config))
        .fallback(|| async { RestError::new(StatusCode::NOT_FOUND, "HTTP 404 Not Found") })
        .method_not_allowed_fallback(|| async {
            RestError::new(StatusCode::METHOD_NOT_ALLOWED, "HTTP 405 Method Not Allowed")
        })
        .layer(DefaultBodyLimit::max(REST_BODY_BYTES_MAX))
        .with_state(worker)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    worker: Worker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(worker)).with_graceful_shutdown(shutdown).await
}

async fn server_info() -> Answer {
    ok(&json!({"version": crate::VERSION, "commit": "", "kafka_cluster_id": ""}))
}

/// The values of every `key=` in a query string.
fn query_values(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .collect()
}

fn query_flag(query: Option<&str>, key: &str) -> bool {
    query_values(query, key).iter().any(|v| v.eq_ignore_ascii_case("true"))
}

async fn list_connectors(State(worker): State<Worker>, RawQuery(query): RawQuery) -> Answer {
    let expand = query_values(query.as_deref(), "expand");
    if expand.is_empty() {
        return ok(&worker.list());
    }
    let (status, info) = (expand.iter().any(|e| e == "status"), expand.iter().any(|e| e == "info"));
    let expanded = blocking(&worker, move |worker| {
        let mut out = serde_json::Map::new();
        for name in worker.list() {
            let mut entry = serde_json::Map::new();
            // A connector deleted meanwhile is left out, as Kafka does.
            if status && let Ok(s) = worker.status(&name) {
                entry.insert("status".into(), serde_json::to_value(s).unwrap_or(Json::Null));
            }
            if info && let Ok(i) = worker.info(&name) {
                entry.insert("info".into(), serde_json::to_value(i).unwrap_or(Json::Null));
            }
            out.insert(name, Json::Object(entry));
        }
        Ok(Json::Object(out))
    })
    .await?;
    ok(&expanded)
}

async fn create_connector(State(worker): State<Worker>, body: Result<Bytes, BytesRejection>) -> Answer {
    let body = parse_body(body)?;
    let name = body.get("name").and_then(Json::as_str).map(str::to_string);
    let config = config_from(body.get("config").unwrap_or(&Json::Null))?;
    let name = name
        .or_else(|| config.get("name").cloned())
        .ok_or_else(|| RestError::bad_request("connector name is required (\"name\")"))?;
    if name.contains('/') {
        return Err(RestError::bad_request("Invalid connector name, cannot contain '/'"));
    }
    let (info, _) = blocking(&worker, move |worker| worker.put_connector(&name, config, false)).await?;
    let mut response = json_response(StatusCode::CREATED, &info);
    if let Ok(location) = format!("/connectors/{}", info.name).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn connector_info(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    ok(&worker.info(&name)?)
}

async fn connector_config(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    ok(&worker.connector_config(&name)?)
}

async fn put_connector_config(
    State(worker): State<Worker>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let config = config_from(&parse_body(body)?)?;
    let (info, created) = blocking(&worker, move |worker| worker.put_connector(&name, config, true)).await?;
    Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &info))
}

async fn connector_status(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    ok(&worker.status(&name)?)
}

async fn connector_tasks(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    ok(&worker.tasks(&name)?)
}

async fn connector_offsets(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    ok(&worker.offsets(&name).await?)
}

/// KIP-558's shape: `{"NAME": {"topics": [...]}}`.
async fn connector_topics(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    let topics = worker.active_topics(&name)?;
    ok(&json!({ name: {"topics": topics} }))
}

async fn reset_connector_topics(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    worker.reset_active_topics(&name)?;
    empty(StatusCode::ACCEPTED)
}

fn task_id(name: &str, task: &str) -> Result<usize, RestError> {
    task.parse().map_err(|_| RestError::new(StatusCode::NOT_FOUND, format!("Task {name}-{task} not found")))
}

async fn task_status(State(worker): State<Worker>, Path((name, task)): Path<(String, String)>) -> Answer {
    let id = task_id(&name, &task)?;
    ok(&worker.task_status(&name, id)?)
}

async fn restart_task(State(worker): State<Worker>, Path((name, task)): Path<(String, String)>) -> Answer {
    let id = task_id(&name, &task)?;
    blocking(&worker, move |worker| worker.restart_task(&name, id)).await?;
    empty(StatusCode::NO_CONTENT)
}

async fn pause_connector(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    blocking(&worker, move |worker| worker.pause(&name)).await?;
    empty(StatusCode::ACCEPTED)
}

async fn resume_connector(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    blocking(&worker, move |worker| worker.resume(&name)).await?;
    empty(StatusCode::ACCEPTED)
}

async fn stop_connector(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    blocking(&worker, move |worker| worker.stop(&name)).await?;
    empty(StatusCode::NO_CONTENT)
}

/// KIP-875's body: `{"offsets":[{"partition":{...},"offset":{...}|null}]}`.
async fn alter_connector_offsets(
    State(worker): State<Worker>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = parse_body(body)?;
    let entries = body
        .get("offsets")
        .and_then(Json::as_array)
        .ok_or_else(|| RestError::bad_request("the body must be {\"offsets\": [...]}"))?;
    let offsets = entries
        .iter()
        .map(|entry| {
            let partition = entry.get("partition").cloned().unwrap_or(Json::Null);
            let offset = entry.get("offset").cloned().unwrap_or(Json::Null);
            worker::PartitionOffset { partition, offset }
        })
        .collect::<Vec<_>>();
    worker.alter_offsets(&name, &offsets).await?;
    ok(&json!({"message": "The offsets for this connector have been altered successfully"}))
}

async fn reset_connector_offsets(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    worker.reset_offsets(&name).await?;
    ok(&json!({"message": "The offsets for this connector have been reset successfully"}))
}

/// Kafka's restart: the connector alone answers 204; with `includeTasks`
/// or `onlyFailed` it answers 202 with the status.
async fn restart_connector(
    State(worker): State<Worker>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Answer {
    let include_tasks = query_flag(query.as_deref(), "includeTasks");
    let only_failed = query_flag(query.as_deref(), "onlyFailed");
    let status_name = name.clone();
    blocking(&worker, move |worker| worker.restart(&name, include_tasks, only_failed)).await?;
    if include_tasks || only_failed {
        Ok(json_response(StatusCode::ACCEPTED, &worker.status(&status_name)?))
    } else {
        empty(StatusCode::NO_CONTENT)
    }
}

async fn delete_connector(State(worker): State<Worker>, Path(name): Path<String>) -> Answer {
    blocking(&worker, move |worker| worker.delete(&name)).await?;
    empty(StatusCode::NO_CONTENT)
}

async fn connector_plugins(State(worker): State<Worker>) -> Answer {
    ok(&worker.plugins())
}

async fn validate_config(Path(class): Path<String>, body: Result<Bytes, BytesRejection>) -> Answer {
    let mut config = config_from(&parse_body(body)?)?;
    let Some(plugin) = crate::plugins::find(&class) else {
        return Err(RestError::bad_request(format!(
            "Failed to find any class that implements Connector and which name matches {class}"
        )));
    };
    match config.get("connector.class").map(|c| crate::plugins::find(c).map(|p| p.class)) {
        None => {
            config.insert("connector.class".into(), plugin.class.to_string());
        }
        Some(Some(named)) if named == plugin.class => {}
        Some(_) => {
            return Err(RestError::bad_request(format!(
                "Included connector type {} does not match request type {class}",
                config.get("connector.class").map_or("", String::as_str)
            )));
        }
    }
    ok(&worker::validate(&config))
}
