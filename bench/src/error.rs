use thiserror::Error;

/// Errors that stop a `shardgate-bench` command.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Bad command-line value (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A certificate, key or TLS configuration could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// Glommio could not start or run an executor.
    #[error("runtime: {0}")]
    Runtime(String),
}

impl BenchError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn runtime(e: impl std::fmt::Display) -> Self {
        BenchError::Runtime(e.to_string())
    }
}
