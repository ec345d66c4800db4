//! JSONL corpora: one JSON object a line, its text under a named top-level key. Lines are read
//! one at a time and only that key's value is kept; blank lines are skipped.

use super::document::{Document, Origin, Position};
use anyhow::{Context, Result, anyhow, bail};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

pub struct Reader {
    file: Arc<Path>,
    lines: std::io::BufReader<std::fs::File>,
    field: String,
    line: u64,
    buf: Vec<u8>,
}

impl Reader {
    pub fn open(path: &Path, field: &str) -> Result<Self> {
        let f = std::fs::File::open(path).with_context(|| format!("opening corpus file {}", path.display()))?;
        Ok(Self { file: path.into(), lines: std::io::BufReader::with_capacity(1 << 20, f), field: field.into(), line: 0, buf: Vec::new() })
    }

    fn read(&mut self) -> Result<Option<Document>> {
        loop {
            self.buf.clear();
            let n =
                self.lines.read_until(b'\n', &mut self.buf).with_context(|| format!("reading {} after line {}", self.file.display(), self.line))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let origin = Origin { file: self.file.clone(), at: Position::Line(self.line) };
            let text = text_of(&self.buf, &self.field).map_err(|e| anyhow!("corpus {origin}: {e}"))?;
            return Ok(Some(Document { text: text.into_bytes(), origin }));
        }
    }
}

impl Iterator for Reader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read().transpose()
    }
}

/// The string under `field` in the JSON object `line`, or what is wrong and how to fix it.
fn text_of(line: &[u8], field: &str) -> Result<String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let found = Field { name: field }.deserialize(&mut de).and_then(|f| de.end().map(|()| f));
    match found {
        Ok(Found::Text(t)) => Ok(t),
        Ok(Found::Other(kind)) => {
            bail!(
                "field {field:?} is {kind}, not a string: the field holding each document's text must be a string; name another with data.source.text.field"
            )
        }
        Ok(Found::Missing) => bail!("the object has no field {field:?}: name the field holding each document's text with data.source.text.field"),
        Ok(Found::NotAnObject(kind)) => {
            bail!("the line is {kind}, not a JSON object: each line of a JSONL corpus is one object such as {{\"{field}\": \"...\"}}")
        }
        Err(e) => {
            // serde_json places the error in the one line it was given: only the column means anything
            let message = e.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
            bail!(
                "the line is not JSON ({message} at column {}): each line of a JSONL corpus is one UTF-8 object such as {{\"{field}\": \"...\"}}",
                e.column()
            )
        }
    }
}

enum Found {
    Text(String),
    /// The field holds something else: its kind.
    Other(&'static str),
    Missing,
    NotAnObject(&'static str),
}

/// Reads a JSON object keeping only the value of one key (the last, as JSON readers do when a
/// key repeats); every other value is skipped without being built.
struct Field<'a> {
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = Found;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::Missing;
        while let Some(is_field) = map.next_key_seed(KeyIs(self.name))? {
            if is_field {
                found = map.next_value_seed(Value)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::NotAnObject("an array"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Found, E> {
        Ok(Found::NotAnObject("a string"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
        Ok(Found::NotAnObject("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Found, E> {
        Ok(Found::NotAnObject("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Found, E> {
        Ok(Found::NotAnObject("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Found, E> {
        Ok(Found::NotAnObject("a number"))
    }
    fn visit_unit<E>(self) -> Result<Found, E> {
        Ok(Found::NotAnObject("null"))
    }
}

/// Whether a key is the one wanted, compared without building it.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// A value: the string it holds, or its kind.
struct Value;

impl<'de> DeserializeSeed<'de> for Value {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value {
    type Value = Found;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, s: &str) -> Result<Found, E> {
        Ok(Found::Text(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Found, E> {
        Ok(Found::Text(s))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Found::Other("an object"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::Other("an array"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
        Ok(Found::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Found, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Found, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Found, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_unit<E>(self) -> Result<Found, E> {
        Ok(Found::Other("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_field_is_kept_and_bad_lines_say_what_to_fix() {
        let line = br#"{"id": 3, "meta": {"text": "not this"}, "text": "caf\u00e9 \"quoted\"\n", "n": [1, {"a": 2}]}"#;
        assert_eq!(text_of(line, "text").unwrap(), "café \"quoted\"\n");
        assert_eq!(text_of(br#"{"body": "b", "text": 1}"#, "body").unwrap(), "b");
        assert_eq!(text_of(br#"{"text": "first", "text": "last"}"#, "text").unwrap(), "last");
        let e = text_of(br#"{"content": "x"}"#, "text").unwrap_err().to_string();
        assert!(e.contains("no field \"text\"") && e.contains("data.source.text.field"), "{e}");
        let e = text_of(br#"{"text": null}"#, "text").unwrap_err().to_string();
        assert!(e.contains("field \"text\" is null, not a string"), "{e}");
        let e = text_of(br#"{"text": ["a"]}"#, "text").unwrap_err().to_string();
        assert!(e.contains("is an array, not a string"), "{e}");
        let e = text_of(br#"["text"]"#, "text").unwrap_err().to_string();
        assert!(e.contains("the line is an array, not a JSON object"), "{e}");
        let e = text_of(br#"{"text": "unterminated"#, "text").unwrap_err().to_string();
        assert!(e.contains("not JSON (EOF while parsing a string at column 22)") && e.contains("one UTF-8 object such as"), "{e}");
        let e = text_of(br#"{"text": "a"} {"text": "b"}"#, "text").unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
    }
}
