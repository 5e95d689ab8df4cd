//! The error type of the pure pipeline. It knows nothing of PostgreSQL: the glue layer maps each
//! [`ErrorKind`] to its SQLSTATE (see `pg::error`).

use std::fmt;

/// What went wrong, in terms a caller can act on. Each kind has exactly one SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A parameter or option value is out of range or malformed (22023).
    InvalidParameter,
    /// A named column does not exist, or none could be detected (42703).
    UndefinedColumn,
    /// More than one column matches a role (42702).
    AmbiguousColumn,
    /// A column exists but has the wrong type for its role (42804).
    DatatypeMismatch,
    /// A relation of the wrong kind, such as a sequence as a source (42809).
    WrongObjectType,
    /// A model, table or other object does not exist (42704).
    UndefinedObject,
    /// A name is already taken, such as a segment name within a model version (42710).
    DuplicateObject,
    /// A model name cannot be used as one (42602).
    InvalidName,
    /// The source has no usable rows (P0002 no_data_found).
    NoData,
    /// A size limit was exceeded (54000).
    LimitExceeded,
    /// A table named in an option does not exist (42P01).
    UndefinedTable,
    /// Training could not produce a model from this data (55000 object_not_in_prerequisite_state).
    TrainingFailed,
    /// A bug in pg_segment, never the caller's fault (XX000).
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegError {
    pub kind: ErrorKind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl SegError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SegError { kind, message: message.into(), detail: None, hint: None }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameter, message)
    }
}

impl fmt::Display for SegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SegError {}

pub type Result<T> = std::result::Result<T, SegError>;
