//! API errors as ArangoDB reports them: an HTTP status, an `errorNum` and a message, rendered
//! as `{"error":true,"errorNum":N,"errorMessage":"...","code":S}`. Every handler error ends up
//! here, so the mapping from failures to numbers lives in one place.

use axum::http::StatusCode;
use tickship_storage::Error as StorageError;

/// ArangoDB error numbers this server uses (lib/Basics/voc-errors.h).
pub mod num {
    pub const INTERNAL: u32 = 4;
    pub const NOT_IMPLEMENTED: u32 = 9;
    pub const BAD_PARAMETER: u32 = 10;
    pub const UNAUTHORIZED: u32 = 11;
    pub const HTTP_BAD_PARAMETER: u32 = 400;
    pub const HTTP_FORBIDDEN: u32 = 403;
    pub const HTTP_NOT_FOUND: u32 = 404;
    pub const HTTP_METHOD_NOT_ALLOWED: u32 = 405;
    pub const HTTP_SERVICE_UNAVAILABLE: u32 = 503;
    pub const CORRUPTED_JSON: u32 = 600;
    pub const CONFLICT: u32 = 1200;
    pub const DOCUMENT_NOT_FOUND: u32 = 1202;
    pub const DOCUMENT_HANDLE_BAD: u32 = 1205;
    pub const DATA_SOURCE_NOT_FOUND: u32 = 1203;
    pub const DUPLICATE_NAME: u32 = 1207;
    pub const ILLEGAL_NAME: u32 = 1208;
    pub const UNIQUE_CONSTRAINT_VIOLATED: u32 = 1210;
    pub const DOCUMENT_TOO_LARGE: u32 = 1216;
    pub const COLLECTION_TYPE_INVALID: u32 = 1218;
    pub const DOCUMENT_KEY_BAD: u32 = 1221;
    pub const DOCUMENT_KEY_UNEXPECTED: u32 = 1222;
    pub const DOCUMENT_TYPE_INVALID: u32 = 1227;
    pub const INVALID_EDGE_ATTRIBUTE: u32 = 1233;
    pub const DATABASE_NOT_FOUND: u32 = 1228;
    pub const DATABASE_NAME_INVALID: u32 = 1229;
    pub const USE_SYSTEM_DATABASE: u32 = 1230;
    pub const START_TICK_NOT_PRESENT: u32 = 1414;
    pub const NO_RESPONSE: u32 = 1400;
    pub const INVALID_RESPONSE: u32 = 1401;
    pub const LEADER_CHANGE: u32 = 1404;
    pub const LOOP: u32 = 1405;
    pub const INVALID_CONFIGURATION: u32 = 1410;
    pub const RUNNING: u32 = 1411;
    pub const STOPPED: u32 = 1412;
    pub const NO_START_TICK: u32 = 1413;
    pub const CURSOR_NOT_FOUND: u32 = 1600;
    pub const FILESYSTEM_FULL: u32 = 1104;
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_num: u32,
    pub message: String,
    /// The leader's endpoint, sent as `x-arango-endpoint` when a follower refuses a write.
    pub leader: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, error_num: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error_num,
            message: message.into(),
            leader: None,
        }
    }

    /// A write sent to a follower: 503, errorNum 503, and where the leader is.
    pub fn follower_write(leader: &str) -> ApiError {
        ApiError {
            leader: Some(leader.to_string()),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                num::HTTP_SERVICE_UNAVAILABLE,
                format!("this server is a follower and does not accept writes; the leader is at {leader}"),
            )
        }
    }

    pub fn bad_parameter(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, num::BAD_PARAMETER, message)
    }

    pub fn corrupted_json(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            num::CORRUPTED_JSON,
            format!("JSON parse error: {detail}"),
        )
    }

    /// 401 with ArangoDB's text, saying whether credentials were missing or wrong.
    pub fn unauthorized(refusal: crate::auth::Refusal) -> ApiError {
        let why = match refusal {
            crate::auth::Refusal::NoCredentials => {
                "no credentials were sent (HTTP Basic, or a JWT from /_open/auth)"
            }
            crate::auth::Refusal::WrongCredentials => {
                "wrong username or password, or an invalid or expired token"
            }
        };
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            num::UNAUTHORIZED,
            format!("not authorized to execute this request: {why}"),
        )
    }

    pub fn not_found_path() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, num::HTTP_NOT_FOUND, "unknown path")
    }

    /// An ArangoDB route this server does not serve: 501 with errorNum 9, as ArangoDB answers for
    /// a feature it lacks.
    pub fn not_implemented(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            num::NOT_IMPLEMENTED,
            format!("{what} is not implemented by tickship"),
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            num::HTTP_METHOD_NOT_ALLOWED,
            "method not supported",
        )
    }

    pub fn collection_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            num::DATA_SOURCE_NOT_FOUND,
            "collection or view not found",
        )
    }

    pub fn database_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            num::DATABASE_NOT_FOUND,
            "database not found",
        )
    }

    pub fn document_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            num::DOCUMENT_NOT_FOUND,
            "document not found",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            num::HTTP_SERVICE_UNAVAILABLE,
            message,
        )
    }

    /// A disk of the server is full (ArangoDB's 1104): 507, which says the server cannot store
    /// what it was asked to until space is freed.
    pub fn filesystem_full(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            num::FILESYSTEM_FULL,
            format!("filesystem full: {detail}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, num::INTERNAL, message)
    }

    /// The error body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": true,
            "errorNum": self.error_num,
            "errorMessage": self.message,
            "code": self.status.as_u16(),
        })
    }
}

impl From<StorageError> for ApiError {
    /// Storage failures a client can do nothing about are 503 (the server cannot take writes)
    /// or 500; the ones caused by the request are 4xx.
    fn from(error: StorageError) -> ApiError {
        if error.is_no_space() {
            return ApiError::filesystem_full(error.chain());
        }
        match error {
            StorageError::BlockTooLarge { bytes, bytes_max } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                num::DOCUMENT_TOO_LARGE,
                format!(
                    "request of {bytes} bytes exceeds the log's block limit of {bytes_max} bytes"
                ),
            ),
            StorageError::InvalidRecord(reason) => ApiError::bad_parameter(reason),
            StorageError::TickCompacted(tick) => ApiError::new(
                StatusCode::BAD_REQUEST,
                num::START_TICK_NOT_PRESENT,
                format!("required tick value '{tick}' is not present (anymore?) on leader"),
            ),
            StorageError::WriterFailed(_) | StorageError::Closed => ApiError::unavailable(format!(
                "the write-ahead log does not accept writes: {error}"
            )),
            other => ApiError::internal(other.chain()),
        }
    }
}
