//! Typed access to the JSON rows the Arrow reader returns, with messages that name the field,
//! so that task files stay one-liners per field.

use serde_json::Value;

use lmq_calibration::arrow_dataset::Row;

/// A string field.
pub fn str_field<'a>(row: &'a Row, field: &str) -> Result<&'a str, String> {
    match row.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("field `{field}` is {other}, expected a string")),
        None => Err(missing(row, field)),
    }
}

/// A list-of-strings field (HellaSwag's `endings`, ARC's `choices.text`).
pub fn str_list(row: &Row, field: &str) -> Result<Vec<String>, String> {
    match row.get(field) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("field `{field}` holds {other}, expected strings")),
            })
            .collect(),
        Some(other) => Err(format!(
            "field `{field}` is {other}, expected a list of strings"
        )),
        None => Err(missing(row, field)),
    }
}

/// A struct field (ARC's and OpenBookQA's `choices`), as a row of its own.
pub fn struct_field<'a>(row: &'a Row, field: &str) -> Result<&'a Row, String> {
    match row.get(field) {
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(format!("field `{field}` is {other}, expected a struct")),
        None => Err(missing(row, field)),
    }
}

/// An integer label, given either as a number or as a decimal string (HellaSwag stores
/// `label` as a string, PIQA as an integer).
pub fn index_field(row: &Row, field: &str) -> Result<usize, String> {
    match row.get(field) {
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| format!("field `{field}` is {n}, expected a non-negative integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("field `{field}` is {s:?}, expected an integer")),
        Some(other) => Err(format!("field `{field}` is {other}, expected an integer")),
        None => Err(missing(row, field)),
    }
}

/// A boolean field (BoolQ's `answer`).
pub fn bool_field(row: &Row, field: &str) -> Result<bool, String> {
    match row.get(field) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("field `{field}` is {other}, expected a boolean")),
        None => Err(missing(row, field)),
    }
}

/// Checks that `gold` indexes `n` choices.
pub fn check_gold(gold: usize, n: usize) -> Result<usize, String> {
    if gold < n {
        Ok(gold)
    } else {
        Err(format!("gold index {gold} out of range for {n} choices"))
    }
}

fn missing(row: &Row, field: &str) -> String {
    let keys: Vec<&str> = row.keys().map(String::as_str).collect();
    format!("no field `{field}` (fields: {})", keys.join(", "))
}
