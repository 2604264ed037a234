//! Why a run's pull or push ends early, shared by runs and the reconciliation guard.

/// Why a run's pull or push ended before it was done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RunStop {
    /// The server is shutting down: the run ends after the page in hand.
    #[error(
        "stopped after the current page because the server is shutting down; the next run goes on"
    )]
    ShuttingDown,
    /// The run failed: the service, the store or the configuration, with the reason.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for RunStop {
    fn from(reason: String) -> Self {
        RunStop::Failed(reason)
    }
}

impl From<&str> for RunStop {
    fn from(reason: &str) -> Self {
        RunStop::Failed(reason.to_string())
    }
}
