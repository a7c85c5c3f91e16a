//! The controller's one error type. Its [`Error::category`] is the `error` label of
//! `spotkube_controller_actions_total`, so a dashboard tells an RBAC gap (kube) from a
//! race (conflict), an AWS outage (aws) or a bad event or flag (invalid).

use std::fmt::Display;

/// Why something the controller tried did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (other than a 409).
    #[error("kubernetes {verb} {object}: {source}")]
    Kube {
        verb: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// The object changed under us (HTTP 409, or retries of one exhausted).
    #[error("{object} changed concurrently: {message}")]
    Conflict { object: String, message: String },
    /// An AWS call failed or answered something unreadable.
    #[error("AWS {operation}: {message}")]
    Aws {
        operation: &'static str,
        message: String,
    },
    /// A file could not be read; `what` names it ("price snapshot /x.json").
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed (the Lease could not be read or written).
    #[error("leader election: {0}")]
    Leadership(String),
    /// A loop of the leader's term ended while leading.
    #[error("leader task {0} ended while leading")]
    TaskEnded(String),
    /// Input the controller cannot use: a malformed file, flag or value.
    #[error("{0}")]
    Invalid(String),
    /// Several of a batch of actions failed (each was attempted); the first says why.
    #[error("{failed} of {attempted} actions failed; first: {first}")]
    Actions {
        failed: usize,
        attempted: usize,
        first: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The metric label of this error's kind.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Conflict { .. } => "conflict",
            Error::Aws { .. } => "aws",
            Error::Io { .. } => "io",
            Error::Leadership(_) => "leadership",
            Error::TaskEnded(_) => "internal",
            Error::Invalid(_) => "invalid",
            Error::Actions { first, .. } => first.category(),
        }
    }

    /// `Ok` when nothing failed, the one failure as it is, or several as
    /// [`Error::Actions`].
    pub fn collect(mut failures: Vec<Error>, attempted: usize) -> Result<()> {
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            failed => Err(Error::Actions {
                failed,
                attempted,
                first: Box::new(failures.remove(0)),
            }),
        }
    }

    /// Wraps a kube error of `verb` on `object`; a 409 becomes [`Error::Conflict`].
    pub fn kube(verb: &'static str, object: impl Display, source: kube::Error) -> Error {
        match source {
            kube::Error::Api(status) if status.code == 409 => Error::Conflict {
                object: object.to_string(),
                message: status.message,
            },
            source => Error::Kube {
                verb,
                object: object.to_string(),
                source,
            },
        }
    }

    /// An AWS SDK error of `operation`, with the SDK's full error context.
    pub fn aws<E: std::error::Error + 'static>(operation: &'static str, error: &E) -> Error {
        Error::Aws {
            operation,
            message: aws_smithy_types::error::display::DisplayErrorContext(error).to_string(),
        }
    }
}

/// `api.get(name).await.kube("get", "node/x")?`: names the call in the error.
pub trait KubeResultExt<T> {
    fn kube(self, verb: &'static str, object: impl Display) -> Result<T>;
}

impl<T> KubeResultExt<T> for std::result::Result<T, kube::Error> {
    fn kube(self, verb: &'static str, object: impl Display) -> Result<T> {
        self.map_err(|source| Error::kube(verb, object, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("boom", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_409_is_a_conflict_and_the_rest_keep_their_call() {
        let conflict = Err::<(), _>(api_error(409))
            .kube("patch", "node/a")
            .unwrap_err();
        assert_eq!(conflict.category(), "conflict");
        assert!(conflict.to_string().contains("node/a"), "{conflict}");
        let forbidden = Err::<(), _>(api_error(403)).kube("get", "replicaset/shop/web-1");
        let forbidden = forbidden.unwrap_err();
        assert_eq!(forbidden.category(), "kube");
        assert!(
            forbidden
                .to_string()
                .starts_with("kubernetes get replicaset/shop/web-1"),
            "{forbidden}"
        );
    }
}
