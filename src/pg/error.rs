//! Core errors → PostgreSQL errors with their SQLSTATE, DETAIL and HINT.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::error::{ErrorKind, SegError};

fn sqlstate(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidParameter => Code::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::UndefinedColumn => Code::ERRCODE_UNDEFINED_COLUMN,
        ErrorKind::AmbiguousColumn => Code::ERRCODE_AMBIGUOUS_COLUMN,
        ErrorKind::DatatypeMismatch => Code::ERRCODE_DATATYPE_MISMATCH,
        ErrorKind::WrongObjectType => Code::ERRCODE_WRONG_OBJECT_TYPE,
        ErrorKind::UndefinedObject => Code::ERRCODE_UNDEFINED_OBJECT,
        ErrorKind::InvalidName => Code::ERRCODE_INVALID_NAME,
        ErrorKind::DuplicateObject => Code::ERRCODE_DUPLICATE_OBJECT,
        ErrorKind::NoData => Code::ERRCODE_NO_DATA_FOUND,
        ErrorKind::LimitExceeded => Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        ErrorKind::UndefinedTable => Code::ERRCODE_UNDEFINED_TABLE,
        ErrorKind::TrainingFailed => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        ErrorKind::Internal => Code::ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises `e` as an ERROR; never returns.
pub fn raise(e: SegError) -> ! {
    let mut report = ErrorReport::new(sqlstate(e.kind), e.message, "pg_segment");
    if let Some(d) = e.detail {
        report = report.set_detail(d);
    }
    if let Some(h) = e.hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// A Rust-side SPI failure (a type mismatch reading a result, say) is our bug.
pub fn from_spi(e: pgrx::spi::Error) -> SegError {
    SegError::new(ErrorKind::Internal, "internal error in pg_segment").detail(e.to_string())
}

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, SegError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::Error> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(from_spi(e)))
    }
}
