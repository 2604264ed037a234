//! `names = "lookalike"`: a record's value that Dropbox cannot take as a name (it holds a `/`,
//! a `\`, a control character, ends with a space, or is `.` or `..`) is written with look-alike
//! characters instead, and read back as it was. The characters and their look-alikes are those
//! of rclone's Dropbox backend (`/` as `／`, `\` as `＼`, a trailing space as `␠`, control
//! characters as `␀`…`␟` and `␡`, `.` and `..` as `．` and `．．`), so folders look the same in
//! both tools. A look-alike that is already in a value is kept by a `‛` before it, so every
//! value comes back exactly: `decode(encode(v)) == v` for every `v`.

/// The escape that marks a look-alike (or the escape itself) meant literally.
const QUOTE: char = '\u{201B}';
const SLASH: char = '\u{FF0F}';
const BACKSLASH: char = '\u{FF3C}';
const DOT: char = '\u{FF0E}';
const SPACE: char = '\u{2420}';
const DEL: char = '\u{2421}';

/// The look-alike of a character Dropbox refuses, where one is needed.
fn lookalike(c: char) -> Option<char> {
    match c {
        '/' => Some(SLASH),
        '\\' => Some(BACKSLASH),
        '\u{7F}' => Some(DEL),
        c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32),
        _ => None,
    }
}

/// The character a look-alike stands for.
fn original(c: char) -> Option<char> {
    match c {
        SLASH => Some('/'),
        BACKSLASH => Some('\\'),
        DOT => Some('.'),
        SPACE => Some(' '),
        DEL => Some('\u{7F}'),
        c if ('\u{2400}'..='\u{241F}').contains(&c) => char::from_u32(c as u32 - 0x2400),
        _ => None,
    }
}

/// `v` as a name Dropbox takes.
pub fn encode(v: &str) -> String {
    if v == "." || v == ".." {
        return v.chars().map(|_| DOT).collect();
    }
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        if let Some(l) = lookalike(c) {
            out.push(l);
        } else if c == ' ' && i == last {
            out.push(SPACE);
        } else {
            if c == QUOTE || original(c).is_some() {
                out.push(QUOTE);
            }
            out.push(c);
        }
    }
    out
}

/// The value a name written by [`encode`] stands for. A name made by hand is read the same
/// way: its look-alikes are taken for the characters they stand for.
pub fn decode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == QUOTE {
            match chars.next() {
                Some(next) => out.push(next),
                None => out.push(QUOTE),
            }
        } else {
            out.push(original(c).unwrap_or(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_characters_are_written_as_lookalikes() {
        assert_eq!(encode("ACME / Sons"), "ACME ／ Sons");
        assert_eq!(encode(r"a\b"), "a＼b");
        assert_eq!(encode("trailing "), "trailing␠");
        assert_eq!(encode(" lead"), " lead");
        assert_eq!(encode("."), "．");
        assert_eq!(encode(".."), "．．");
        assert_eq!(encode("a.b"), "a.b");
        assert_eq!(encode("tab\there"), "tab␉here");
        assert_eq!(encode("plain name"), "plain name");
        for v in [
            "ACME / Sons",
            "a\\b/c",
            "x ",
            ".",
            "..",
            "\u{7F}",
            "line\nbreak",
        ] {
            let e = encode(v);
            assert!(
                !e.contains('/') && !e.contains('\\') && !e.ends_with(' ') && e != "." && e != "..",
                "{v:?} -> {e:?}"
            );
        }
    }

    #[test]
    fn every_value_comes_back_exactly() {
        let values = [
            "ACME / Sons",
            "already ／ there",
            "quote ‛ alone",
            "quote before lookalike ‛／",
            "‛",
            "ends with quote‛",
            "．",
            "．．",
            "␠",
            "x ␠",
            " ",
            "  ",
            "",
            ".",
            "..",
            "...",
            "a\u{0}b\u{1F}c\u{7F}",
            "␀␟␡",
            "mixed/‛／\\ ",
        ];
        for v in values {
            assert_eq!(decode(&encode(v)), v, "{v:?} via {:?}", encode(v));
        }
        // Names made by hand in Dropbox: their look-alikes are read as what they stand for.
        assert_eq!(decode("ACME ／ Sons"), "ACME / Sons");
        assert_eq!(decode("plain"), "plain");
    }

    #[test]
    fn every_char_round_trips_alone_and_in_company() {
        for cp in (0u32..0x3000).chain(0xFF00..0xFF20) {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            for v in [
                c.to_string(),
                format!("a{c}"),
                format!("{c}b"),
                format!("{c}{c}"),
            ] {
                assert_eq!(decode(&encode(&v)), v, "{v:?}");
            }
        }
    }
}
