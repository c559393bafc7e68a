//! Errors that stop the gateway from starting (after the config itself was found valid).

/// Why the gateway cannot start with a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A configuration file problem.
    #[error(transparent)]
    Config(#[from] streamgate_config::ConfigError),
    /// An upstream could not be prepared (name resolution, TLS files).
    #[error("upstream {id:?}: {what}: {why}")]
    Upstream {
        /// The upstream id.
        id: String,
        /// Which part failed.
        what: String,
        /// What happened.
        why: String,
    },
    /// A consumer's credentials could not be prepared.
    #[error("consumer {username:?}: {why}")]
    Consumer {
        /// The consumer.
        username: String,
        /// What happened.
        why: String,
    },
    /// An identity provider's keys could not be fetched at start-up.
    #[error(
        "identity provider {id:?}: no keys: {why} (set start_without_keys = true to start anyway)"
    )]
    Provider {
        /// The provider id.
        id: String,
        /// The last fetch's failure.
        why: String,
    },
    /// A listener could not be prepared or bound.
    #[error("listener {address}: {why}")]
    Listener {
        /// The address.
        address: String,
        /// What happened.
        why: String,
    },
}
