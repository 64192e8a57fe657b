//! The one seam between the store's SQL and the database engine: statements take `Value`s
//! and give back `Row`s of `Value`s, through the `Db` trait. The store's functions speak only
//! this, so a second engine (PostgreSQL, DESIGN section 7) implements `Db` once instead of
//! every query twice. Besides this file, only `mod.rs` (opening, migrating, the transaction
//! runners and the error type) names rusqlite.

use super::StoreError;
use rusqlite::types::{ToSqlOutput, ValueRef};

/// A value bound to a statement or read from a row. Integers are 64-bit on both sides (a
/// `u32` would map to PostgreSQL's `oid`), booleans are their own kind (SQLite stores 0/1).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer column.
    Int(i64),
    /// Text.
    Text(String),
    /// A blob (`BYTEA`).
    Bytes(Vec<u8>),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Text(s.clone())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(b.to_vec())
    }
}

impl From<&Vec<u8>> for Value {
    fn from(b: &Vec<u8>) -> Self {
        Value::Bytes(b.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

/// Statement arguments: `args![a, b]` is `&[Value::from(a), Value::from(b)]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($x)),*][..]
    };
}
pub(super) use args;

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        })
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

fn unreadable(i: usize, what: &str) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
        i,
        rusqlite::types::Type::Null,
        format!("column {i} is not {what}").into(),
    ))
}

impl Row {
    pub(super) fn new(values: Vec<Value>) -> Self {
        Row(values)
    }

    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or(StoreError::Sqlite(rusqlite::Error::InvalidColumnIndex(i)))
    }

    /// Column `i` as an integer.
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            _ => Err(unreadable(i, "an integer")),
        }
    }

    /// Column `i` as an integer or NULL.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            _ => Err(unreadable(i, "an integer")),
        }
    }

    /// Column `i` as a 32-bit count.
    pub fn u32(&self, i: usize) -> Result<u32, StoreError> {
        u32::try_from(self.int(i)?).map_err(|_| unreadable(i, "a 32-bit count"))
    }

    /// Column `i` as a boolean (0/1 in SQLite).
    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(v) => Ok(*v != 0),
            _ => Err(unreadable(i, "a boolean")),
        }
    }

    /// Column `i` as text or NULL.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            _ => Err(unreadable(i, "text")),
        }
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| unreadable(i, "text"))
    }

    /// Column `i` as bytes or NULL.
    pub fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Bytes(b) => Ok(Some(b.clone())),
            _ => Err(unreadable(i, "bytes")),
        }
    }

    /// Column `i` as bytes.
    pub fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.opt_bytes(i)?.ok_or_else(|| unreadable(i, "bytes"))
    }

    /// A text column parsed into a model type (names, ids).
    pub fn parse<T: std::str::FromStr>(&self, i: usize) -> Result<T, StoreError> {
        self.text(i)?
            .parse()
            .map_err(|_| unreadable(i, "a valid value"))
    }

    /// Column `i` parsed, or NULL.
    pub fn opt_parse<T: std::str::FromStr>(&self, i: usize) -> Result<Option<T>, StoreError> {
        match self.opt_text(i)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| unreadable(i, "a valid value")),
        }
    }
}

/// Where statements run: a connection or a transaction.
pub(super) trait Db {
    /// Runs a statement; the number of rows it changed.
    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64, StoreError>;
    /// Every row of a query.
    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// The first row of a query, if any.
    fn row(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }
    /// Whether a query gives any row.
    fn exists(&self, sql: &str, args: &[Value]) -> Result<bool, StoreError> {
        Ok(self.row(sql, args)?.is_some())
    }
    /// The integer in the first column of the first row (`COUNT(*)` and the like).
    fn int(&self, sql: &str, args: &[Value]) -> Result<i64, StoreError> {
        self.row(sql, args)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))?
            .int(0)
    }
}

fn column(v: ValueRef<'_>, i: usize) -> Result<Value, StoreError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|_| unreadable(i, "UTF-8 text"))?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        ValueRef::Real(_) => return Err(unreadable(i, "an integer, text or bytes")),
    })
}

impl Db for rusqlite::Connection {
    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let n = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args.iter()))?;
        Ok(n as u64)
    }

    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut st = self.prepare_cached(sql)?;
        let width = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(width);
            for i in 0..width {
                row.push(column(r.get_ref(i)?, i)?);
            }
            out.push(Row(row));
        }
        Ok(out)
    }
}

impl Db for rusqlite::Transaction<'_> {
    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        (**self).exec(sql, args)
    }

    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        (**self).rows(sql, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_sqlite() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.exec(
            "CREATE TABLE t (i INTEGER, s TEXT, b BLOB, f INTEGER, n TEXT)",
            &[],
        )
        .unwrap();
        let n = c
            .exec(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                args![7i64, "x", &b"\x00\x01"[..], true, None::<&str>],
            )
            .unwrap();
        assert_eq!(n, 1);
        let r = c.row("SELECT i, s, b, f, n FROM t", &[]).unwrap().unwrap();
        assert_eq!(r.int(0).unwrap(), 7);
        assert_eq!(r.text(1).unwrap(), "x");
        assert_eq!(r.bytes(2).unwrap(), vec![0, 1]);
        assert!(r.bool(3).unwrap());
        assert_eq!(r.opt_text(4).unwrap(), None);
        assert!(r.text(4).is_err(), "NULL is not text");
        assert!(r.int(1).is_err(), "text is not an integer");
        assert!(r.int(9).is_err(), "no such column");
        assert_eq!(c.int("SELECT COUNT(*) FROM t", &[]).unwrap(), 1);
        assert!(!c
            .exists("SELECT 1 FROM t WHERE i = ?1", args![8i64])
            .unwrap());
    }
}
