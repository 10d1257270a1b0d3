//! Small JSON helpers: a correct string escaper (same output as serde_json), an output
//! abstraction used to size server messages exactly before writing them, and a raw scanner that
//! finds the byte spans of top-level object members (used to relay client data verbatim).

use std::ops::Range;

/// Escape sequences for the control characters U+0000..U+001F (serde_json's choice of short forms).
const CONTROL: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
    "\\u0008", "\\u0009", "\\u000a", "\\u000b", "\\u000c", "\\u000d", "\\u000e", "\\u000f",
    "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017",
    "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// The JSON escape for byte `c`, or `None` if it is written as is.
#[inline]
fn escape_of(c: u8) -> Option<&'static str> {
    match c {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        b'\n' => Some("\\n"),
        b'\r' => Some("\\r"),
        b'\t' => Some("\\t"),
        0x08 => Some("\\b"),
        0x0c => Some("\\f"),
        0..=0x1f => Some(CONTROL[usize::from(c)]),
        _ => None,
    }
}

/// Extra bytes the escaped form of each byte needs (0: written as is). Non-zero exactly where
/// [`escape_of`] returns `Some`.
static EXTRA: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = 5; // \u00XX
        c += 1;
    }
    t[b'\n' as usize] = 1;
    t[b'\r' as usize] = 1;
    t[b'\t' as usize] = 1;
    t[0x08] = 1;
    t[0x0c] = 1;
    t[b'"' as usize] = 1;
    t[b'\\' as usize] = 1;
    t
};

/// Calls `f` with consecutive pieces of the JSON-escaped form of `s` (without quotes).
#[inline]
pub(crate) fn for_each_escaped(s: &str, mut f: impl FnMut(&str)) {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if EXTRA[usize::from(c)] == 0 {
            continue;
        }
        if let Some(esc) = escape_of(c) {
            // `i` is at an ASCII byte, hence a char boundary.
            if start < i {
                f(&s[start..i]);
            }
            f(esc);
            start = i + 1;
        }
    }
    if start < b.len() {
        f(&s[start..]);
    }
}

/// Length of the JSON-escaped form of `s` (without quotes).
#[inline]
pub(crate) fn escaped_len(s: &str) -> usize {
    s.len()
        + s.bytes()
            .map(|c| usize::from(EXTRA[usize::from(c)]))
            .sum::<usize>()
}

/// A JSON text sink. Implemented by a byte counter, by `Vec<u8>`, and by [`Nested`] (which
/// writes its input as the content of a JSON string of the outer sink).
pub(crate) trait Out {
    /// Appends JSON text as is.
    fn raw(&mut self, s: &str);
    /// Appends `s` escaped as JSON string content (no quotes).
    fn esc(&mut self, s: &str);
    /// Appends `s` as a JSON string literal.
    fn lit(&mut self, s: &str) {
        self.raw("\"");
        self.esc(s);
        self.raw("\"");
    }
    /// Appends an unsigned integer.
    fn num(&mut self, n: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = n;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        self.raw(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
    }
}

/// Counts the bytes that would be written.
pub(crate) struct Count(pub usize);

impl Out for Count {
    #[inline]
    fn raw(&mut self, s: &str) {
        self.0 += s.len();
    }
    #[inline]
    fn esc(&mut self, s: &str) {
        self.0 += escaped_len(s);
    }
}

impl Out for Vec<u8> {
    #[inline]
    fn raw(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    #[inline]
    fn esc(&mut self, s: &str) {
        for_each_escaped(s, |p| self.extend_from_slice(p.as_bytes()));
    }
}

/// Writes JSON text as the content of a JSON string in the wrapped sink ("double encoding").
pub(crate) struct Nested<'a, O: Out>(pub &'a mut O);

impl<O: Out> Out for Nested<'_, O> {
    fn raw(&mut self, s: &str) {
        self.0.esc(s);
    }
    fn esc(&mut self, s: &str) {
        for_each_escaped(s, |p| self.0.esc(p));
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `i` at an opening quote; returns the index after the closing quote.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// `i` at the first byte of a value; returns the index after it.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Calls `f(raw_key, value_span)` for each member of the top-level JSON object in `b`. `raw_key`
/// is the key's bytes between the quotes, unescaped only if it had no escapes. Returns `None` if
/// `b` is not structurally an object (full validation is left to the real parser).
pub(crate) fn top_level_members(b: &[u8], mut f: impl FnMut(&[u8], Range<usize>)) -> Option<()> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(());
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = skip_value(b, i)?;
        f(key, i..end);
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(()),
            _ => return None,
        }
    }
}

/// Raw JSON text of the top-level member `key` of the object `s` (last occurrence wins).
pub(crate) fn raw_member<'s>(s: &'s str, key: &str) -> Option<&'s str> {
    let mut found = None;
    top_level_members(s.as_bytes(), |k, span| {
        if k == key.as_bytes() {
            found = Some(span);
        }
    })?;
    // Spans start and end at ASCII structural bytes, hence at char boundaries.
    found.and_then(|r| s.get(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> String {
        let mut v = Vec::new();
        v.lit(s);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn escaping_matches_serde_json() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€🎉\u{2028}\u{2029}\u{fffd}");
        for s in [
            all.as_str(),
            "",
            "plain",
            "\"",
            "\\",
            "a\"b\\c\nd",
            "\u{0}\u{1f}\u{7f}",
        ] {
            assert_eq!(lit(s), serde_json::to_string(s).unwrap(), "{s:?}");
            let mut c = Count(0);
            c.lit(s);
            assert_eq!(c.0, lit(s).len());
            assert_eq!(escaped_len(s) + 2, lit(s).len());
        }
    }

    #[test]
    fn nested_is_double_encoding() {
        let inner_value = "x\"y\\z\n€";
        let mut v = Vec::new();
        v.raw("\"");
        {
            let mut n = Nested(&mut v);
            n.raw("{\"k\":");
            n.lit(inner_value);
            n.raw(",\"n\":");
            n.num(12345);
            n.raw("}");
        }
        v.raw("\"");
        let inner = serde_json::json!({"k": inner_value, "n": 12345}).to_string();
        assert_eq!(
            String::from_utf8(v.clone()).unwrap(),
            serde_json::to_string(&inner).unwrap()
        );
        let mut c = Count(0);
        c.raw("\"");
        {
            let mut n = Nested(&mut c);
            n.raw("{\"k\":");
            n.lit(inner_value);
            n.raw(",\"n\":");
            n.num(12345);
            n.raw("}");
        }
        c.raw("\"");
        assert_eq!(c.0, v.len());
    }

    #[test]
    fn extra_table_matches_escapes() {
        for c in 0..=255u8 {
            let extra = escape_of(c).map_or(0, |e| e.len() - 1);
            assert_eq!(usize::from(EXTRA[usize::from(c)]), extra, "{c}");
        }
    }

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 120, 4301, u64::MAX] {
            let mut v = Vec::new();
            v.num(n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }

    #[test]
    fn top_level_member_spans() {
        let s = r#" { "a" : [1, {"b": "]}"}], "k\"q": "v\\", "n":-1.5e3 ,"o":{}, "t":true} "#;
        let mut got = Vec::new();
        assert!(top_level_members(s.as_bytes(), |k, r| {
            got.push((String::from_utf8(k.to_vec()).unwrap(), s[r].to_owned()))
        })
        .is_some());
        let expected = [
            ("a", r#"[1, {"b": "]}"}]"#),
            ("k\\\"q", r#""v\\""#),
            ("n", "-1.5e3"),
            ("o", "{}"),
            ("t", "true"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(raw_member(s, "n"), Some("-1.5e3"));
        assert_eq!(raw_member(s, "missing"), None);
        assert_eq!(raw_member("{}", "a"), None);
        assert_eq!(raw_member(r#"{"a":1,"a":2}"#, "a"), Some("2"));
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1"#,
            r#"{"a":"x}"#,
            r#"{"a":[1}"#,
            "{a:1}",
        ] {
            assert_eq!(top_level_members(bad.as_bytes(), |_, _| {}), None, "{bad}");
        }
    }
}
