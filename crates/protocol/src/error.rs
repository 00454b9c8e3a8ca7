use thiserror::Error;

/// Why a frame could not be decoded.
///
/// Upstream logs such frames as `MalformedWebSocketMessage` and drops them; the connection
/// stays open. The variants say what was wrong so that the log line is useful.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The text frame was not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The JSON was valid but not a message of the negotiated serializer.
    #[error("malformed message: {0}")]
    Shape(&'static str),
    /// A binary frame was shorter than its header says.
    #[error("binary frame truncated")]
    Truncated,
    /// A binary frame started with a kind byte this direction does not use.
    #[error("unknown binary frame kind {0}")]
    UnknownKind(u8),
    /// A string field of a binary frame was not UTF-8.
    #[error("binary frame field is not UTF-8")]
    Utf8,
    /// Binary frames exist only in serializer 2.0.0.
    #[error("binary frames are not part of serializer 1.0.0")]
    BinaryOnV1,
}
