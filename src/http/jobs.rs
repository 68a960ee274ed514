//! ArangoDB's async jobs: a request sent with `x-arango-async: store` is answered `202` with an
//! `x-arango-async-id` at once and runs on; `PUT /_api/job/{id}` then returns its stored answer
//! once it is done (`204` while it runs), as arangosh's `setupReplication` polls for the answer of
//! `make-follower`. With `x-arango-async: true` the answer is not kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use serde_json::json;

use super::{empty, error_response, json, AppState, Req};
use crate::api::{num, ApiError, ApiResult};

/// Answers kept at most; past it the oldest done ones are forgotten (a client that never
/// fetches its answers cannot grow the server).
const KEPT_MAX: usize = 1024;
/// Bytes of one kept answer at most: a longer answer is replaced by an error saying so.
const ANSWER_BYTES_MAX: usize = 64 << 20;

enum Job {
    Pending,
    Done {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<(HashMap<u64, Job>, BTreeMap<u64, ()>)>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<u64, Job>, BTreeMap<u64, ()>)> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut jobs = self.lock();
        jobs.0.insert(id, Job::Pending);
        jobs.1.insert(id, ());
        // Forget the oldest done answers past the limit (pending ones stay: they are running).
        while jobs.0.len() > KEPT_MAX {
            let done = jobs
                .1
                .keys()
                .copied()
                .find(|id| matches!(jobs.0.get(id), Some(Job::Done { .. })));
            let Some(oldest) = done else { break };
            jobs.0.remove(&oldest);
            jobs.1.remove(&oldest);
        }
        id
    }

    fn finish(&self, id: u64, job: Job) {
        let mut jobs = self.lock();
        if jobs.0.contains_key(&id) {
            jobs.0.insert(id, job);
        }
    }
}

/// Starts `req` as a job; the answer is `202`, with the job's id when `store`.
pub fn start(state: &Arc<AppState>, req: Req, store: bool) -> Response<Body> {
    let id = store.then(|| state.jobs.insert());
    let task_state = state.clone();
    tokio::spawn(async move {
        let response = match super::run_request(&task_state, &req).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        };
        let Some(id) = id else { return };
        let (parts, body) = response.into_parts();
        let job = match axum::body::to_bytes(body, ANSWER_BYTES_MAX).await {
            Ok(body) => Job::Done {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            Err(e) => {
                let error = error_response(&ApiError::internal(format!(
                    "the job's answer could not be kept: {e}"
                )));
                let (parts, _) = error.into_parts();
                Job::Done {
                    status: parts.status,
                    headers: parts.headers,
                    body: Bytes::from(
                        json!({"error": true, "code": 500, "errorNum": num::INTERNAL,
                               "errorMessage": format!("the job's answer could not be kept: {e}")})
                        .to_string(),
                    ),
                }
            }
        };
        task_state.jobs.finish(id, job);
    });
    let mut response = empty(StatusCode::ACCEPTED);
    if let Some(id) = id.and_then(|id| HeaderValue::from_str(&id.to_string()).ok()) {
        response.headers_mut().insert("x-arango-async-id", id);
    }
    response
}

fn job_id(id: &str) -> ApiResult<u64> {
    id.parse().map_err(|_| not_found())
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, num::HTTP_NOT_FOUND, "not found")
}

/// `PUT /_api/job/{id}`: the stored answer (and the job forgotten), `204` while it runs.
pub fn fetch(state: &AppState, id: &str) -> ApiResult<Response<Body>> {
    let number = job_id(id)?;
    let mut jobs = state.jobs.lock();
    match jobs.0.get(&number) {
        None => Err(not_found()),
        Some(Job::Pending) => Ok(empty(StatusCode::NO_CONTENT)),
        Some(Job::Done { .. }) => {
            let Some(Job::Done {
                status,
                headers,
                body,
            }) = jobs.0.remove(&number)
            else {
                return Err(not_found());
            };
            jobs.1.remove(&number);
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            if let Ok(value) = HeaderValue::from_str(id) {
                response.headers_mut().insert("x-arango-async-id", value);
            }
            Ok(response)
        }
    }
}

/// `GET /_api/job/{id}`: `200` done, `204` running, `404` unknown.
pub fn status(state: &AppState, id: &str) -> ApiResult<Response<Body>> {
    let number = job_id(id)?;
    match state.jobs.lock().0.get(&number) {
        None => Err(not_found()),
        Some(Job::Pending) => Ok(empty(StatusCode::NO_CONTENT)),
        Some(Job::Done { .. }) => Ok(empty(StatusCode::OK)),
    }
}

/// `DELETE /_api/job/{id}` or `/_api/job/all`: forgets stored answers.
pub fn delete(state: &AppState, id: &str) -> ApiResult<Response<Body>> {
    let mut jobs = state.jobs.lock();
    if id == "all" {
        let done: Vec<u64> = jobs
            .0
            .iter()
            .filter(|(_, job)| matches!(job, Job::Done { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            jobs.0.remove(&id);
            jobs.1.remove(&id);
        }
    } else {
        let number = job_id(id)?;
        if jobs.0.remove(&number).is_none() {
            return Err(not_found());
        }
        jobs.1.remove(&number);
    }
    Ok(json(StatusCode::OK, &json!({"result": true})))
}
