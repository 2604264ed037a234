//! Connectors to external systems. `rest` speaks the send protocol and real-time endpoints;
//! `dropbox` reaches Dropbox through `dropbox-sdk`.

pub mod dropbox;
pub mod rest;

use std::time::Duration;

/// Why a delivery failed, as the retry logic needs to know it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later (5xx, timeout, `failed` answer, 429), perhaps after a delay.
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Trying again would not help (a 4xx other than 408/429, a configuration gap).
    #[error("{0}")]
    Permanent(String),
}
