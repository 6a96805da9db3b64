//! Numbers as people read them: sizes in binary units, counts with their noun.

/// A size in bytes with a binary unit and about three significant digits: `512 B`, `1.1 MiB`,
/// `23.4 GiB`, `118 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1000 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    for (i, unit) in UNITS.iter().enumerate() {
        if v < 99.95 {
            return format!("{v:.1} {unit}");
        }
        // 999.5 and up would print as "1000": the next unit reads better
        if v < 999.5 || i + 1 == UNITS.len() {
            return format!("{v:.0} {unit}");
        }
        v /= 1024.0;
    }
    unreachable!("the last unit returns")
}

/// `1 document`, `2 documents`: `noun` is the singular, made plural with an `s`.
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        let cases = [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (1_115_394, "1.1 MiB"),
            (100 << 20, "100 MiB"),
            (1023 << 20, "1.0 GiB"),
            (5 << 40, "5.0 TiB"),
        ];
        for (b, want) in cases {
            assert_eq!(human_bytes(b), want, "{b} bytes");
        }
        assert_eq!(count(1, "document"), "1 document");
        assert_eq!(count(0, "document"), "0 documents");
        assert_eq!(count(2, "iteration"), "2 iterations");
    }
}
