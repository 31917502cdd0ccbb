//! How listing commands (`ps`, `images`, `stats`, `volume ls`) print: left-aligned columns,
//! sizes and ages the way Docker's listings write them.

use std::io::Write;

/// Rows (the first one the header, if any) as left-aligned columns, three spaces apart.
pub fn print_table(out: &mut impl Write, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// A header and rows, on stdout.
pub fn print_with_header(header: &[&str], rows: Vec<Vec<String>>) {
    let mut all = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    all.extend(rows);
    print_table(&mut std::io::stdout().lock(), &all);
}

/// `1.5 MB` (decimal units, as `docker images`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How long ago `then` (seconds since the epoch) was, in words.
pub fn ago(then: u64) -> String {
    let seconds = crate::sandbox::spec::now().saturating_sub(then);
    match seconds {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} minutes ago", seconds / 60),
        3600..=86_399 => format!("{} hours ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ages_and_columns_read_like_docker() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(human_size(2_000_000_000), "2.0 GB");
        let now = crate::sandbox::spec::now();
        assert_eq!(ago(now - 5), "just now");
        assert_eq!(ago(now - 7200), "2 hours ago");
        let mut out = Vec::new();
        print_table(
            &mut out,
            &[
                vec!["NAME".into(), "SIZE".into()],
                vec!["a-long-name".into(), "1 B".into()],
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME          SIZE\na-long-name   1 B\n"
        );
    }
}
