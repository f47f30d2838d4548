//! The enforcer's error types: one for rendering (pure), one for applying.

use palisade_policy::model::Direction;
use serde::Serialize;
use thiserror::Error;

/// A compiled rule set the enforcer refuses as a whole (nothing of it is applied;
/// the rules in force stay).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RenderError {
    #[error("compiled rule set has format {found}, this enforcer reads format {expected}")]
    Format { found: u32, expected: u32 },
    #[error("{object}: field {field}: {reason}")]
    Invalid {
        object: String,
        field: String,
        reason: String,
    },
    #[error("name collision: {name} stands for both {first} and {second}")]
    Collision {
        name: String,
        first: String,
        second: String,
    },
}

impl RenderError {
    pub(crate) fn invalid(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        RenderError::Invalid {
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One rule the enforcer could not enforce as written. It is enforced fail-closed
/// instead (an Accept rule matches nothing, a Deny or Pass rule denies everything in
/// its direction), exactly as the engine treats unenforceable peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleIssue {
    /// `Kind ns/name` of the policy.
    pub policy: String,
    pub direction: Direction,
    pub rule_index: usize,
    pub reason: String,
}

/// A failure to program the kernel. The kernel may hold a partial update of our own
/// objects; the next apply re-reads what is installed and converges.
#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A command failed. For `*-restore` commands, `line` is the failing input line
    /// (1-based) and `line_text` its text, when the tool said which one.
    #[error("`{command}` failed ({status}){}: {stderr}", line_suffix(.line, .line_text))]
    Command {
        command: String,
        status: String,
        stderr: String,
        line: Option<usize>,
        line_text: Option<String>,
    },
    #[error("cannot understand the output of `{command}`: {reason}")]
    Parse { command: String, reason: String },
}

fn line_suffix(line: &Option<usize>, text: &Option<String>) -> String {
    match (line, text) {
        (Some(n), Some(t)) => format!(" at input line {n} `{t}`"),
        (Some(n), None) => format!(" at input line {n}"),
        _ => String::new(),
    }
}
