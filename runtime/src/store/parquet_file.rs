//! Embeddings as a Parquet table, for the tools that read one directly
//! (DuckDB, pandas, Spark, pyarrow): a row per image with its dataset index,
//! its path, its label and class name (when known) and the embedding as a
//! list of `float` (every row the same length). The model, its sha256 and the
//! rest of [`EmbeddingMeta`](super::EmbeddingMeta) go into the file's
//! key-value metadata, so a table found later still says what made it.

use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::{EmbeddingSet, Rows, StoreError};

/// Rows per row group: a reader can skip or split the file in pieces of
/// this size; the writer holds one group's columns at a time.
const ROW_GROUP: usize = 4096;

/// The schema, with the label columns only when the set is labelled.
fn schema(labelled: bool) -> String {
    format!(
        "message embeddings {{
            REQUIRED INT64 index;
            REQUIRED BYTE_ARRAY path (UTF8);
            {}
            REQUIRED group embedding (LIST) {{
                REPEATED group list {{
                    REQUIRED FLOAT element;
                }}
            }}
        }}",
        if labelled {
            "REQUIRED INT64 label; REQUIRED BYTE_ARRAY class (UTF8);"
        } else {
            ""
        }
    )
}

/// Writes `set` with its per-row provenance as one Parquet file, atomically.
pub(super) fn write(
    path: &std::path::Path,
    set: &EmbeddingSet,
    rows: &Rows,
    metadata: Vec<(String, String)>,
) -> Result<(), StoreError> {
    let fail = |message: String| StoreError::Meta {
        path: path.to_path_buf(),
        message,
    };
    let schema = Arc::new(
        parse_message_type(&schema(set.labels.is_some()))
            .map_err(|e| fail(format!("parquet schema: {e}")))?,
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_key_value_metadata(Some(
                metadata
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect(),
            ))
            .set_created_by(format!("edgeclr {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let classes = set.meta.class_names.clone().unwrap_or_default();
    let (n, dim) = set.embeddings.dim();
    super::write_atomic(path, |file| {
        let io = std::io::Error::other;
        let mut writer =
            SerializedFileWriter::new(file, schema.clone(), props.clone()).map_err(io)?;
        for start in (0..n).step_by(ROW_GROUP) {
            let end = (start + ROW_GROUP).min(n);
            let mut group = writer.next_row_group().map_err(io)?;
            let mut column = 0;
            while let Some(mut col) = group.next_column().map_err(io)? {
                let name = col_name(set.labels.is_some(), column);
                match name {
                    "index" => {
                        let v: Vec<i64> =
                            rows.indices[start..end].iter().map(|&i| i as i64).collect();
                        col.typed::<Int64Type>().write_batch(&v, None, None)
                    }
                    "path" => {
                        let v: Vec<ByteArray> = rows.paths[start..end]
                            .iter()
                            .map(|p| ByteArray::from(p.as_str()))
                            .collect();
                        col.typed::<ByteArrayType>().write_batch(&v, None, None)
                    }
                    "label" => {
                        let labels = set.labels.as_deref().unwrap_or_default();
                        let v: Vec<i64> = labels[start..end].iter().map(|&l| l as i64).collect();
                        col.typed::<Int64Type>().write_batch(&v, None, None)
                    }
                    "class" => {
                        let labels = set.labels.as_deref().unwrap_or_default();
                        let v: Vec<ByteArray> = labels[start..end]
                            .iter()
                            .map(|&l| ByteArray::from(classes.get(l).map_or("", String::as_str)))
                            .collect();
                        col.typed::<ByteArrayType>().write_batch(&v, None, None)
                    }
                    _ => {
                        // A list per row: repetition level 0 starts a row, 1
                        // continues it; every element is defined (level 1).
                        let block = set.embeddings.slice(ndarray::s![start..end, ..]);
                        let values: Vec<f32> = block.iter().copied().collect();
                        let def = vec![1i16; values.len()];
                        let rep: Vec<i16> =
                            (0..values.len()).map(|i| i16::from(i % dim != 0)).collect();
                        col.typed::<FloatType>()
                            .write_batch(&values, Some(&def), Some(&rep))
                    }
                }
                .map_err(io)?;
                col.close().map_err(io)?;
                column += 1;
            }
            group.close().map_err(io)?;
        }
        writer.close().map_err(io)?;
        Ok(())
    })
}

/// The leaf column at `position` in [`schema`]'s order.
fn col_name(labelled: bool, position: usize) -> &'static str {
    let names: &[&str] = if labelled {
        &["index", "path", "label", "class", "embedding"]
    } else {
        &["index", "path", "embedding"]
    };
    names.get(position).copied().unwrap_or("embedding")
}
