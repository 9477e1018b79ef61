//! Listings as aligned text tables, or as one JSON document (`--json`).
//!
//! It owns the layout only (column widths, alignment, the JSON writer); the commands choose
//! the columns and the JSON keys. It must not talk to the daemon.

use std::io::{self, Write};

/// A table: a header row, then rows of the same length; columns two spaces apart, each as wide
/// as its widest cell (in terminal columns: East Asian wide characters count two), the last
/// one not padded.
pub(super) struct Table {
    header: Vec<&'static str>,
    /// Right-aligned columns (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers; a header starting with '>' is a right-aligned
    /// column (the '>' is not printed).
    pub(super) fn new(header: &[&'static str]) -> Self {
        Self {
            right: header.iter().map(|h| h.starts_with('>')).collect(),
            header: header.iter().map(|h| h.trim_start_matches('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub(super) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let mut widths = vec![0; self.header.len()];
        for row in std::iter::once(&header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = " ".repeat(widths[i] - width(cell));
                let last = i + 1 == row.len();
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&pad);
                    }
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Terminal columns `s` takes: East Asian wide and fullwidth characters (CJK ideographs,
/// Hangul, kana, fullwidth forms) count two, everything else one.
pub(super) fn width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let c = u32::from(c);
            let wide = matches!(c,
                0x1100..=0x115F
                | 0x2E80..=0x303E
                | 0x3041..=0x33FF
                | 0x3400..=0x4DBF
                | 0x4E00..=0x9FFF
                | 0xA000..=0xA4CF
                | 0xAC00..=0xD7A3
                | 0xF900..=0xFAFF
                | 0xFE30..=0xFE4F
                | 0xFF00..=0xFF60
                | 0xFFE0..=0xFFE6
                | 0x20000..=0x3FFFD);
            if wide { 2 } else { 1 }
        })
        .sum()
}

/// `value` as one pretty-printed JSON document and a newline.
pub(super) fn write_json(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// `list` joined with commas, or "-" when empty.
pub(super) fn list<T: ToString>(list: &[T]) -> String {
    if list.is_empty() {
        "-".to_owned()
    } else {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `list` as runs ("1-64", "1,2" stays "1,2", "8000,16000"), or "-" when empty: a run of three
/// or more consecutive numbers is written FIRST-LAST.
pub(super) fn runs(list: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let mut j = i;
        while j + 1 < list.len() && list[j + 1] == list[j] + 1 {
            j += 1;
        }
        if j >= i + 2 {
            parts.push(format!("{}-{}", list[i], list[j]));
        } else {
            parts.extend(list[i..=j].iter().map(u32::to_string));
        }
        i = j + 1;
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(",")
    }
}

/// `s`, or "-" when empty.
pub(super) fn or_dash(s: &str) -> String {
    if s.is_empty() { "-" } else { s }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_their_widest_cell() {
        let mut t = Table::new(&["VOICE", ">RATE", "NAME"]);
        t.row(vec!["en".into(), "22050".into(), "English".into()]);
        t.row(vec!["longxiaochun".into(), "24000".into(), "龙小淳".into()]);
        t.row(vec!["x".into(), "800".into(), String::new()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "VOICE          RATE  NAME\n\
             en            22050  English\n\
             longxiaochun  24000  龙小淳\n\
             x               800\n"
        );
    }

    #[test]
    fn consecutive_numbers_become_runs() {
        assert_eq!(runs(&[]), "-");
        assert_eq!(runs(&[1, 2]), "1,2");
        assert_eq!(runs(&(1..=64).collect::<Vec<_>>()), "1-64");
        assert_eq!(runs(&[1, 2, 3, 6, 8, 9]), "1-3,6,8,9");
        assert_eq!(runs(&[8000, 16000]), "8000,16000");
    }

    #[test]
    fn wide_characters_take_two_columns() {
        assert_eq!(width("abc"), 3);
        assert_eq!(width("龙小淳"), 6);
        assert_eq!(width("é"), 1);
    }
}
