//! Which column of a behaviour table plays which role (user, time, amount, category, event
//! type): taken from the caller when named, otherwise detected from common names.

use super::error::{ErrorKind, Result, SegError};

/// The type family of a column, as far as segmentation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Text,
    Uuid,
    Number,
    Time,
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The type as PostgreSQL names it (for messages and for typing the assignments table).
    pub type_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Time,
    Amount,
    Category,
    EventType,
}

impl Role {
    /// The SQL argument (or `events` option field) that names this role's column.
    pub fn argument(self) -> &'static str {
        match self {
            Role::User => "user_column",
            Role::Time => "time_column",
            Role::Amount => "amount_column",
            Role::Category => "category_column",
            Role::EventType => "type_column",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Time => "time",
            Role::Amount => "amount",
            Role::Category => "category",
            Role::EventType => "event type",
        }
    }

    /// Common names, lowercase. Any of them present counts as a match.
    fn candidates(self) -> &'static [&'static str] {
        match self {
            Role::User => &[
                "user_id", "customer_id", "client_id", "account_id", "member_id", "buyer_id",
                "shopper_id", "visitor_id", "uid", "userid", "customerid", "user", "customer",
            ],
            Role::Time => &[
                "created_at", "ordered_at", "order_date", "order_time", "purchased_at",
                "purchase_date", "occurred_at", "event_time", "event_at", "timestamp", "ts",
                "time", "date", "created",
            ],
            Role::Amount => &[
                "amount", "total", "total_amount", "order_total", "order_amount", "revenue",
                "price", "value", "order_value", "sales", "spend", "gmv",
            ],
            Role::Category => &[
                "category", "product_category", "category_name", "category_id", "department",
                "cat",
            ],
            Role::EventType => &["event_type", "event", "type", "action", "event_name", "kind"],
        }
    }

    fn accepts(self, ty: ColumnType) -> bool {
        match self {
            Role::User => matches!(ty, ColumnType::Integer | ColumnType::Text | ColumnType::Uuid),
            Role::Time => ty == ColumnType::Time,
            Role::Amount => matches!(ty, ColumnType::Integer | ColumnType::Number),
            Role::Category | Role::EventType => {
                matches!(ty, ColumnType::Integer | ColumnType::Text)
            }
        }
    }

    fn type_words(self) -> &'static str {
        match self {
            Role::User => "an integer, text or uuid column",
            Role::Time => "a timestamptz, timestamp or date column",
            Role::Amount => "a numeric, real, double precision or integer column",
            Role::Category | Role::EventType => "a text or integer column",
        }
    }
}

/// Resolves the column for `role`. `explicit` is what the caller passed (exact name, as
/// PostgreSQL stores it). With `required == false`, finding nothing yields `Ok(None)`.
pub fn resolve(
    columns: &[Column],
    role: Role,
    explicit: Option<&str>,
    required: bool,
    table: &str,
) -> Result<Option<Column>> {
    if let Some(name) = explicit {
        let col = columns.iter().find(|c| c.name == name).ok_or_else(|| {
            SegError::new(
                ErrorKind::UndefinedColumn,
                format!("column \"{name}\" does not exist in {table}"),
            )
            .detail(format!("columns are: {}", names(columns.iter())))
            .hint(format!("pass the {} column as {} => '...'", role.label(), role.argument()))
        })?;
        if !role.accepts(col.ty) {
            return Err(SegError::new(
                ErrorKind::DatatypeMismatch,
                format!(
                    "column \"{}\" of {table} has type {}, but the {} column must be {}",
                    col.name,
                    col.type_name,
                    role.label(),
                    role.type_words()
                ),
            )
            .hint(format!("pass another column as {} => '...'", role.argument())));
        }
        return Ok(Some(col.clone()));
    }

    let matches: Vec<&Column> = columns
        .iter()
        .filter(|c| role.candidates().contains(&c.name.to_lowercase().as_str()))
        .filter(|c| role.accepts(c.ty))
        .collect();
    match matches.len() {
        1 => Ok(Some(matches[0].clone())),
        0 if !required => Ok(None),
        0 => {
            let typed: Vec<&Column> = columns.iter().filter(|c| role.accepts(c.ty)).collect();
            let detail = if typed.is_empty() {
                format!("{table} has no {}", role.type_words())
            } else {
                format!("candidates of a suitable type: {}", names(typed.into_iter()))
            };
            Err(SegError::new(
                ErrorKind::UndefinedColumn,
                format!("could not detect the {} column of {table}", role.label()),
            )
            .detail(detail)
            .hint(format!("pass it as {} => 'column_name'", role.argument())))
        }
        _ => Err(SegError::new(
            ErrorKind::AmbiguousColumn,
            format!("the {} column of {table} is ambiguous", role.label()),
        )
        .detail(format!("candidates: {}", names(matches.into_iter())))
        .hint(format!("pass one of them as {} => 'column_name'", role.argument()))),
    }
}

fn names<'a>(cols: impl Iterator<Item = &'a Column>) -> String {
    cols.map(|c| format!("{} ({})", c.name, c.type_name)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column { name: name.into(), ty, type_name: format!("{ty:?}").to_lowercase() }
    }

    fn orders() -> Vec<Column> {
        vec![
            col("order_id", ColumnType::Integer),
            col("customer_id", ColumnType::Integer),
            col("ordered_at", ColumnType::Time),
            col("total", ColumnType::Number),
            col("category", ColumnType::Text),
        ]
    }

    #[test]
    fn detects_common_names() {
        let c = orders();
        let get = |r| resolve(&c, r, None, true, "orders").unwrap().unwrap().name;
        assert_eq!(get(Role::User), "customer_id");
        assert_eq!(get(Role::Time), "ordered_at");
        assert_eq!(get(Role::Amount), "total");
        assert_eq!(get(Role::Category), "category");
    }

    #[test]
    fn ambiguous_lists_candidates_and_argument() {
        let mut c = orders();
        c.push(col("user_id", ColumnType::Integer));
        let e = resolve(&c, Role::User, None, true, "orders").unwrap_err();
        assert_eq!(e.kind, ErrorKind::AmbiguousColumn);
        let d = e.detail.unwrap();
        assert!(d.contains("customer_id") && d.contains("user_id"), "{d}");
        assert!(e.hint.unwrap().contains("user_column"));
    }

    #[test]
    fn missing_required_column_names_argument() {
        let c = vec![col("who", ColumnType::Integer), col("when_", ColumnType::Time)];
        let e = resolve(&c, Role::Amount, None, true, "t").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UndefinedColumn);
        assert!(e.hint.unwrap().contains("amount_column"));
        assert_eq!(resolve(&c, Role::Category, None, false, "t").unwrap(), None);
    }

    #[test]
    fn explicit_column_is_checked() {
        let c = orders();
        let e = resolve(&c, Role::Amount, Some("nope"), true, "orders").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UndefinedColumn);
        let e = resolve(&c, Role::Time, Some("total"), true, "orders").unwrap_err();
        assert_eq!(e.kind, ErrorKind::DatatypeMismatch);
        assert_eq!(
            resolve(&c, Role::User, Some("order_id"), true, "orders").unwrap().unwrap().name,
            "order_id"
        );
    }

    #[test]
    fn wrong_typed_candidate_is_not_detected() {
        let c = vec![col("user_id", ColumnType::Time), col("customer_id", ColumnType::Text)];
        assert_eq!(
            resolve(&c, Role::User, None, true, "t").unwrap().unwrap().name,
            "customer_id"
        );
    }
}
