//! Cutting a task's stretch of the input volume into records.
//!
//! A record is a line: it starts at the volume's first byte or just after a `\n` or a NUL, and
//! ends before the next of either (NUL too, since a volume holding a text file reads as zeros
//! past its end). A record belongs to the task whose range holds the byte before it (the
//! line end it follows; the volume's first record is the first task's), so a task decides
//! from its own bytes alone which records are its: those starting after its first byte, up
//! to and including one starting just past its end. It reads them whole even where they run
//! on into the next extent (up to [`RECORD_BYTES_MAX`]: a longer one is cut there, and its
//! length says so). So every record of the volume is read by exactly one task. Lines that
//! are empty or only white space are no records; for `jsonl:FIELD`, a line that is not a
//! JSON object with a string `FIELD` is skipped and counted.

use crate::meta::infer::model::RecordFormat;

/// Longest record read, in bytes: also how far past its range a task may read.
pub const RECORD_BYTES_MAX: u64 = 1 << 20;

/// One record: where it lies in the input, and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub len: u32,
    pub text: String,
}

/// The records of a task, and how many lines it had to skip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    pub records: Vec<Record>,
    pub skipped: u64,
}

fn ends_line(b: u8) -> bool {
    b == b'\n' || b == 0
}

/// Input bytes `start..start + buf.len()` as read for the task `start..end`: its range,
/// and as much after it as its last record needed.
pub struct Window<'a> {
    pub buf: &'a [u8],
    pub start: u64,
    pub end: u64,
    /// `buf` reaches the end of the volume.
    pub at_volume_end: bool,
}

impl Window<'_> {
    /// Where in `buf` the task's first record starts: at 0 for the volume's first task, else
    /// after the first line end in its range.
    fn first_line(&self) -> usize {
        if self.start == 0 {
            return 0;
        }
        let range = ((self.end - self.start) as usize).min(self.buf.len());
        match self.buf[..range].iter().position(|&b| ends_line(b)) {
            Some(i) => i + 1,
            None => usize::MAX,
        }
    }

    /// Where in `buf` the task's last record starts: after the last line end in its range.
    fn last_line(&self) -> Option<usize> {
        let first = self.first_line();
        let range = ((self.end - self.start) as usize).min(self.buf.len());
        if first == usize::MAX {
            return None;
        }
        Some(
            match self.buf[..range].iter().rposition(|&b| ends_line(b)) {
                Some(i) => (i + 1).max(first),
                None => first,
            },
        )
    }

    /// Whether the task's last record runs past `buf`: the task then reads on (at most
    /// [`RECORD_BYTES_MAX`] past its end) before it cuts its records.
    pub fn needs_more(&self) -> bool {
        if self.at_volume_end {
            return false;
        }
        let range = (self.end - self.start) as usize;
        let read_past = (self.buf.len() as u64).saturating_sub(range as u64);
        if self.buf.len() < range || read_past >= RECORD_BYTES_MAX {
            return false;
        }
        match self.last_line() {
            Some(last) => !self.buf[last..].iter().any(|&b| ends_line(b)),
            None => false,
        }
    }

    /// The task's records.
    pub fn cut(&self, format: &RecordFormat) -> Cut {
        let mut out = Cut::default();
        let Some(last) = self.last_line() else {
            return out;
        };
        let limit = RECORD_BYTES_MAX as usize;
        let mut p = self.first_line();
        while p <= last && p < self.buf.len() {
            let line_end = self.buf[p..]
                .iter()
                .position(|&b| ends_line(b))
                .map_or(self.buf.len(), |i| p + i);
            let q = line_end.min(p + limit);
            let mut line = &self.buf[p..q];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                match text_of(line, format) {
                    Some(text) => out.records.push(Record {
                        offset: self.start + p as u64,
                        len: (q - p) as u32,
                        text,
                    }),
                    None => out.skipped += 1,
                }
            }
            p = line_end + 1;
        }
        out
    }
}

/// The text of a line, or `None` if the format cannot read it.
fn text_of(line: &[u8], format: &RecordFormat) -> Option<String> {
    match format {
        RecordFormat::Lines => match std::str::from_utf8(line) {
            Ok(s) => Some(s.to_owned()),
            // A line cut at the length limit may end inside a character.
            Err(e) if e.error_len().is_none() => {
                Some(String::from_utf8_lossy(&line[..e.valid_up_to()]).into_owned())
            }
            Err(_) => None,
        },
        RecordFormat::Jsonl { field } => {
            let value: serde_json::Value = serde_json::from_slice(line).ok()?;
            value.get(field)?.as_str().map(str::to_owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts `volume` into tasks of `extent` bytes as the workers do (reading on while a
    /// record runs on) and returns every record.
    fn all_records(volume: &[u8], extent: u64, format: &RecordFormat) -> (Vec<Record>, u64) {
        let size = volume.len() as u64;
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut start = 0;
        while start < size {
            let end = (start + extent).min(size);
            let mut read_to = end;
            loop {
                let w = Window {
                    buf: &volume[start as usize..read_to as usize],
                    start,
                    end,
                    at_volume_end: read_to == size,
                };
                if w.needs_more() {
                    read_to = (read_to + extent).min(size);
                    continue;
                }
                let cut = w.cut(format);
                out.extend(cut.records);
                skipped += cut.skipped;
                break;
            }
            start = end;
        }
        (out, skipped)
    }

    fn lines_of(volume: &[u8]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        for piece in volume.split(|&b| ends_line(b)) {
            let text = String::from_utf8_lossy(piece)
                .trim_end_matches('\r')
                .to_owned();
            if !text.trim().is_empty() {
                out.push((offset, text));
            }
            offset += piece.len() as u64 + 1;
        }
        out
    }

    #[test]
    fn every_record_is_read_once_whatever_the_task_size() {
        let mut volume = Vec::new();
        for i in 0..500 {
            let line = format!("record {i} {}\n", "word ".repeat(i % 37));
            volume.extend_from_slice(line.as_bytes());
            if i % 50 == 0 {
                volume.extend_from_slice(b"\n  \n\r\n");
            }
        }
        volume.extend_from_slice(b"last line without an end");
        volume.resize(volume.len() + 3000, 0);
        let want = lines_of(&volume);
        for extent in [1, 7, 64, 100, 4096, 1 << 20] {
            let (got, skipped) = all_records(&volume, extent, &RecordFormat::Lines);
            let got: Vec<(u64, String)> = got.into_iter().map(|r| (r.offset, r.text)).collect();
            assert_eq!(got, want, "extent {extent}");
            assert_eq!(skipped, 0);
        }
    }

    #[test]
    fn jsonl_takes_the_field_and_counts_what_it_cannot_read() {
        let volume = b"{\"text\":\"a b\",\"n\":1}\nnot json\n{\"other\":1}\n{\"text\":7}\n{\"text\":\"c\"}\n";
        let format = RecordFormat::Jsonl {
            field: "text".into(),
        };
        for extent in [3, 16, 4096] {
            let (got, skipped) = all_records(volume, extent, &format);
            let texts: Vec<&str> = got.iter().map(|r| r.text.as_str()).collect();
            assert_eq!(texts, ["a b", "c"], "extent {extent}");
            assert_eq!(got[1].offset, 53);
            assert_eq!(skipped, 3);
        }
    }

    #[test]
    fn a_record_longer_than_the_limit_is_cut_and_the_next_one_still_found() {
        let mut volume = vec![b'x'; RECORD_BYTES_MAX as usize + 100];
        volume.extend_from_slice(b"\nnext\n");
        let (got, _) = all_records(&volume, 4096, &RecordFormat::Lines);
        assert_eq!(got.len(), 2);
        assert_eq!(u64::from(got[0].len), RECORD_BYTES_MAX);
        assert_eq!(got[1].text, "next");
        assert_eq!(got[1].offset, RECORD_BYTES_MAX + 101);
    }

    #[test]
    fn zeros_and_bad_utf8_are_no_records() {
        let mut volume = vec![0u8; 100];
        volume.extend_from_slice(b"\xff\xfe bad\nok\n");
        volume.extend(std::iter::repeat_n(0u8, 100));
        let (got, skipped) = all_records(&volume, 64, &RecordFormat::Lines);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "ok");
        assert_eq!(skipped, 1);
    }
}
