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

/// A duration as `estimate` gives it, one format per scale: `6.1s`, `4m05s`, `1h02m` (no seconds
/// past an hour), `1d19h58m` from a day up.
pub fn duration(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let t = s.round() as u64;
    let m = (t + 30) / 60; // to the nearest minute past an hour
    match t {
        ..3600 => format!("{}m{:02}s", t / 60, t % 60),
        _ if m < 24 * 60 => format!("{}h{:02}m", m / 60, m % 60),
        _ => format!("{}d{}h{:02}m", m / (24 * 60), m / 60 % 24, m % 60),
    }
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
    }

    #[test]
    fn durations_keep_one_format_per_scale() {
        let cases = [
            (6.14, "6.1s"),
            (245.0, "4m05s"),
            (3599.0, "59m59s"),
            (3723.0, "1h02m"),
            (86_369.0, "23h59m"),
            (86_390.0, "1d0h00m"),
            // the walkthrough's 43h57m51s beside 2d10h37m
            (158_271.0, "1d19h58m"),
            (210_620.0, "2d10h30m"),
        ];
        for (s, want) in cases {
            assert_eq!(duration(s), want, "{s} s");
        }
        assert_eq!(duration(f64::INFINITY), "?");
        assert_eq!(count(0, "document"), "0 documents");
        assert_eq!(count(2, "iteration"), "2 iterations");
    }
}
