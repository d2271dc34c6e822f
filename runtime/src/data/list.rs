//! A CSV list of images, `path[,label]` per row, for sets that are not laid
//! out as class-per-subfolder trees (a labelling tool's export, a sample of a
//! larger store).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{DataError, ImageFolder};

/// Reads a CSV image list: one image per row, its path (relative paths are
/// relative to the list's own folder) and, optionally, its label in a second
/// column. A first row `path,label` (any case) is a header. Class names are
/// the distinct labels, sorted, so two lists with the same classes number them
/// alike. Either every row has a label or none does; a missing file is an
/// error naming its row, not a skipped image.
pub fn read_image_list(csv_path: &Path) -> Result<ImageFolder, DataError> {
    let list_err = |line: u64, message: String| DataError::List {
        path: csv_path.to_path_buf(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(csv_path)
        .map_err(|e| list_err(0, e.to_string()))?;
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut rows: Vec<(PathBuf, Option<String>)> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            list_err(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        if rows.is_empty()
            && record
                .get(0)
                .is_some_and(|c| c.eq_ignore_ascii_case("path"))
            && record
                .get(1)
                .is_none_or(|c| c.eq_ignore_ascii_case("label"))
        {
            continue;
        }
        if record.len() > 2 {
            return Err(list_err(
                line,
                format!("{} columns; a row is path[,label]", record.len()),
            ));
        }
        let file = base.join(&record[0]);
        if !file.is_file() {
            return Err(list_err(line, format!("{} is not a file", file.display())));
        }
        let label = record.get(1).filter(|l| !l.is_empty()).map(str::to_owned);
        if let Some((_, first)) = rows.first() {
            if first.is_some() != label.is_some() {
                return Err(list_err(
                    line,
                    "every row needs a label, or none may have one".into(),
                ));
            }
        }
        rows.push((file, label));
    }
    if rows.is_empty() {
        return Err(DataError::Empty(csv_path.to_path_buf()));
    }
    if rows[0].1.is_none() {
        return Ok(ImageFolder::from_files(
            rows.into_iter().map(|(f, _)| f).collect(),
            None,
            None,
        ));
    }
    let classes: Vec<String> = rows
        .iter()
        .filter_map(|(_, l)| l.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels = rows
        .iter()
        .map(|(_, l)| {
            let l = l.as_deref().unwrap_or_default();
            classes.binary_search_by(|c| c.as_str().cmp(l)).unwrap_or(0)
        })
        .collect();
    Ok(ImageFolder::from_files(
        rows.into_iter().map(|(f, _)| f).collect(),
        Some(labels),
        Some(classes),
    ))
}
